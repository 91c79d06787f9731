"""Engine replicas in worker processes send their engines' stats with their work, so the
dashboard and /metrics show one line per replica."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import llmbatch.data as data
from llmbatch.llm import LLMProcessorConfig, build_llm_processor
from llmbatch.runtime.replicas import ReplicatedEngine

pytestmark = pytest.mark.slow

NUM_ROWS = 8
MAX_TOKENS = 6


def test_each_replica_reports_its_engine(smollm2_dir):
    config = LLMProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs={"max_model_len": 256, "kv_cache_memory_bytes": 16 << 20, "device": "cpu"},
        concurrency=(2, 2),
        batch_size=2,
        dashboard=True,
    )
    request = lambda row: {  # noqa: E731
        "messages": [{"role": "user", "content": f"Count from {row['id']}."}],
        "sampling_params": {"temperature": 0, "max_tokens": MAX_TOKENS, "ignore_eos": True},
    }
    with build_llm_processor(config, preprocess=request) as processor:
        rows = processor(data.from_items([{"id": i} for i in range(NUM_ROWS)])).take_all()
        assert isinstance(processor.engine, ReplicatedEngine)
        stats = processor.engine.replica_stats
        assert len(stats) == 2 and all(s is not None for s in stats)
        # each replica's last word came once it had nothing left to run
        assert sum(s.num_generated_tokens for s in stats) == NUM_ROWS * MAX_TOKENS
        assert all(s.num_running == 0 and s.num_finished > 0 for s in stats)
        with urllib.request.urlopen(processor.dashboard_url + "metrics", timeout=30) as response:
            text = response.read().decode()
    assert len(rows) == NUM_ROWS
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    generated = {s.labels["engine"]: s.value for s in families["vllm:generation_tokens"]}
    assert set(generated) == {"0", "1"} and sum(generated.values()) == NUM_ROWS * MAX_TOKENS
