"""How the engine resolves its limits from the model and the KV cache, and releases them."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
from engine_testing import TINY_CONFIGS
from tiny_models import save_tiny_model

from llmbatch import SamplingParams
from llmbatch.engine.llm_engine import LLMEngine
from llmbatch.engine.outputs import RequestRejected

MODEL_MAX_LEN = TINY_CONFIGS["qwen2"].max_position_embeddings


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    save_tiny_model(folder, TINY_CONFIGS["qwen2"])
    return str(folder)


def engine(model: str, **kwargs) -> LLMEngine:
    return LLMEngine.from_engine_args(model=model, kv_cache_memory_bytes=16 << 20, **kwargs)


def test_auto_settings_resolve_to_this_machine_and_model(tiny_dir):
    with engine(tiny_dir) as e:
        assert e.config.device == "cpu" and e.config.attention_backend == "torch"
        assert e.config.max_model_len == MODEL_MAX_LEN
        assert e.config.max_num_batched_tokens >= e.config.max_num_seqs


def test_default_max_model_len_is_capped_by_the_kv_cache(tiny_dir):
    with engine(tiny_dir, num_gpu_blocks_override=4, block_size=16) as e:
        assert e.config.max_model_len == 64
        with pytest.raises(RequestRejected, match="max_model_len=64"):
            e.add_request("long", list(range(3, 70)), SamplingParams())


def test_explicit_max_model_len_must_fit_the_kv_cache(tiny_dir):
    with pytest.raises(ValueError, match="KV cache holds 64 tokens.*max_model_len=100"):
        engine(tiny_dir, num_gpu_blocks_override=4, max_model_len=100)


def test_max_model_len_beyond_the_model_is_an_error(tiny_dir):
    with pytest.raises(ValueError, match=f"exceeds the {MODEL_MAX_LEN} positions"):
        engine(tiny_dir, max_model_len=MODEL_MAX_LEN * 2)


def test_too_small_a_kv_cache_is_an_error(tiny_dir):
    with pytest.raises(ValueError, match="no memory is left for the KV cache"):
        LLMEngine.from_engine_args(model=tiny_dir, kv_cache_memory_bytes=1024)


def test_without_chunked_prefill_a_prompt_must_fit_one_step(tiny_dir):
    with engine(tiny_dir, enable_chunked_prefill=False, max_num_batched_tokens=256) as e:
        assert e.config.max_model_len == 256
        with pytest.raises(RequestRejected, match="more than max_model_len=256"):
            e.add_request("long", [5] * 300, SamplingParams())
    with pytest.raises(ValueError, match="without chunked prefill a whole prompt must fit"):
        engine(
            tiny_dir, enable_chunked_prefill=False, max_num_batched_tokens=256, max_model_len=300
        )


def test_prompt_checks_leave_the_engine_untouched(tiny_dir):
    with engine(tiny_dir) as e:
        bad = {
            "empty": ([], "empty"),
            "out-of-vocab": ([5, 10**6], "outside the vocabulary"),
            "not-tokens": ([1.5], "prompt must be a str or a list of token ids"),
        }
        for request_id, (prompt, message) in bad.items():
            with pytest.raises(RequestRejected, match=message):
                e.add_request(request_id, prompt, SamplingParams())
        with pytest.raises(RequestRejected, match="params must be a SamplingParams"):
            e.add_request("dict-params", [5], {"temperature": 0})
        assert not e.has_unfinished() and e.num_unfinished() == 0
        e.add_request("fine", [5, 6], SamplingParams(max_tokens=3))
        assert e.num_unfinished() == 1


def test_truncate_prompt_tokens_keeps_the_last_tokens(tiny_dir):
    with engine(tiny_dir) as e:
        e.add_request(
            "r", list(range(10, 30)), SamplingParams(max_tokens=1, truncate_prompt_tokens=5)
        )
        (output,) = e.step()
        assert output.prompt_token_ids == list(range(25, 30))


def test_model_without_tokenizer_takes_token_ids_only(tiny_dir, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(json.load(open(f"{tiny_dir}/config.json"))))
    with engine(str(tmp_path), load_format="dummy") as e:
        with pytest.raises(RequestRejected, match="no tokenizer"):
            e.add_request("text", "hello", SamplingParams(detokenize=False))
        with pytest.raises(RequestRejected, match="detokenize=False"):
            e.add_request("ids", [5, 6], SamplingParams())
        e.add_request("ids", [5, 6], SamplingParams(detokenize=False, max_tokens=2))
        outputs = []
        while e.has_unfinished():
            outputs += e.step()
        assert len(outputs[0].token_ids) == 2 and outputs[0].text == ""


def test_close_releases_the_model_and_kv_cache(tiny_dir):
    e = engine(tiny_dir)
    model = weakref.ref(e._runner.model)
    cache = weakref.ref(e._runner.kv_caches[0])
    e.close()
    gc.collect()
    assert model() is None and cache() is None
