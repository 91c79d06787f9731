"""Data parallelism on one host: `concurrency` runs engine replicas in worker processes (on this
CPU-only machine, one per core) fed from one row stream; rows come back as one engine gives them,
in input order, and a replica that dies stops the run with a clear error."""

from __future__ import annotations

import logging
import os
import signal

import pytest

import llmbatch.data as data
from llmbatch import SamplingParams
from llmbatch.llm import LLMProcessorConfig, build_llm_processor
from llmbatch.runtime.replica_plan import CPU_CORES_PER_REPLICA, host_cpu_count, plan_replicas
from llmbatch.runtime.replicas import ReplicaFailed, ReplicatedEngine

MAX_TOKENS = 5
TOO_LONG = "word " * 5000  # more tokens than max_model_len=4096
WORDS = ["apple", "river", "seven", "blue", "stone", "cloud", "tiger", "lamp", "quiet"]


def request_of(row: dict) -> dict:
    content = TOO_LONG if row["word"] == "lamp" else f"Say {row['word']} twice."
    return {
        "messages": [{"role": "user", "content": content}],
        "sampling_params": {"temperature": 0.0, "max_tokens": MAX_TOKENS},
    }


@pytest.fixture(scope="module")
def two_replicas(smollm2_dir: str, engine_kwargs):
    config = LLMProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs={**engine_kwargs, "device": "cpu"},
        concurrency=(2, 2),
        batch_size=2,
    )
    with build_llm_processor(config, preprocess=request_of) as processor:
        yield processor


def test_two_replicas_give_the_rows_of_one_engine_in_input_order(two_replicas, reference_llm):
    rows = two_replicas(data.from_items([{"word": w} for w in WORDS])).take_all()

    assert isinstance(two_replicas.engine, ReplicatedEngine)
    assert two_replicas.engine.num_replicas == 2
    assert [row["word"] for row in rows] == WORDS
    good = [w for w in WORDS if w != "lamp"]
    expected = reference_llm.chat(
        [[{"role": "user", "content": f"Say {w} twice."}] for w in good],
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
    )
    by_word = dict(zip(good, expected))
    for row in rows:
        if row["word"] == "lamp":
            assert row["error"].startswith("engine: RequestRejected: the prompt has")
            assert row["generated_tokens"] is None
            continue
        assert row["error"] is None
        assert row["generated_tokens"] == by_word[row["word"]].token_ids
        assert row["generated_text"] == by_word[row["word"]].text
    summary = two_replicas.summary()
    assert (summary.rows, summary.error_rows) == (len(WORDS), 1)


def test_a_replica_that_dies_with_no_restart_allowed_is_a_clear_error(smollm2_dir, engine_kwargs):
    config = LLMProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs={**engine_kwargs, "device": "cpu"},
        concurrency=(2, 2),
        batch_size=2,
        max_engine_restarts=0,
    )
    with build_llm_processor(config, preprocess=request_of) as processor:
        os.kill(processor.engine.pids[1], signal.SIGKILL)
        with pytest.raises(
            ReplicaFailed,
            match=r"(?s)engine replica 1 \(device cpu\) died once in a row .*"
            r"max_engine_restarts=0.*exited with code -9",
        ):
            processor(data.from_items([{"word": w} for w in WORDS])).take_all()


def test_a_minimum_the_host_cannot_meet_is_an_error(smollm2_dir: str):
    cores = host_cpu_count()
    config = LLMProcessorConfig(
        model_source=smollm2_dir, engine_kwargs={"device": "cpu"}, concurrency=(cores + 1, 64)
    )
    processor = build_llm_processor(config)
    with pytest.raises(ValueError, match=rf"needs at least {cores + 1} engine replicas.*lower"):
        processor(data.from_items([{"prompt": "Hello"}])).take_all()


def test_an_int_is_an_upper_bound_said_once(caplog):
    cores = host_cpu_count()
    expected = max(1, cores // CPU_CORES_PER_REPLICA)
    with caplog.at_level(logging.WARNING, logger="llmbatch"):
        plan = plan_replicas(cores + 3, "cpu", 1)
    assert plan.devices == ("cpu",) * expected
    assert plan.num_threads == cores // expected
    [record] = caplog.records
    assert f"concurrency={cores + 3}: running {expected} engine replica(s)" in record.message


def test_a_minimum_may_ask_for_a_replica_per_core():
    cores = host_cpu_count()
    plan = plan_replicas((cores, cores), "cpu", 1)
    assert plan.num_replicas == cores and plan.num_threads == 1


def test_tensor_parallel_groups_take_their_share_of_cores():
    cores = host_cpu_count()
    plan = plan_replicas(cores, "cpu", 2)
    assert plan.num_replicas == max(1, cores // (2 * CPU_CORES_PER_REPLICA))
    plan = plan_replicas((1, cores), "cpu", 2)
    assert plan.num_replicas == max(1, cores // (2 * CPU_CORES_PER_REPLICA))


def test_one_replica_runs_in_this_process(smollm2_dir: str, engine_kwargs):
    from llmbatch.engine.llm_engine import LLMEngine
    from llmbatch.runtime.restarting import RestartingEngine

    config = LLMProcessorConfig(
        model_source=smollm2_dir, engine_kwargs={**engine_kwargs, "device": "cpu"}, concurrency=1
    )
    with build_llm_processor(config) as processor:
        assert isinstance(processor.engine, RestartingEngine)
        assert isinstance(processor.engine.engine, LLMEngine)
