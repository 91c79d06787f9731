"""Decoder-only causal LMs without llmbatch code run their transformers code on llmbatch's paged
KV cache and attention (model_impl="transformers", picked by "auto"): greedy output equal to
transformers generate(), and clear errors for models that cannot run that way."""

from __future__ import annotations

import json

import pytest
from tiny_models import (
    TINY_WINDOW,
    VOCAB_SIZE,
    fallback_configs,
    family_configs,
    hf_greedy,
    random_prompts,
    save_tiny_model,
    tiny_configs,
)
from transformers import BloomConfig, Lfm2Config, T5Config

import llmbatch.data as data
from llmbatch import LLM, SamplingParams
from llmbatch.engine.args import EngineArgs
from llmbatch.llm import build_llm_processor, vLLMEngineProcessorConfig
from llmbatch.models import load_model

NEW_TOKENS = 16
ENGINE_KWARGS = dict(kv_cache_memory_bytes=16 << 20, max_num_seqs=8)
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)


def as_text(token_ids: list[int]) -> str:
    """The tiny tokenizer's words for these ids (token i is "w{i}")."""
    return " ".join(f"w{token}" for token in token_ids)


def greedy_tokens(folder: str, prompts: list[list[int]], **engine_kwargs) -> list[list[int]]:
    with LLM(folder, **(ENGINE_KWARGS | engine_kwargs)) as llm:
        return [output.outputs[0].token_ids for output in llm.generate(prompts, GREEDY)]


@pytest.mark.parametrize("architecture", list(fallback_configs()))
def test_processor_greedy_matches_transformers_with_prefix_caching(architecture, tmp_path):
    hf_model = save_tiny_model(tmp_path, fallback_configs()[architecture])
    shared = random_prompts([20], seed=7)[0]  # more than one 16-token block, in every row
    prompts = [shared + tail for tail in random_prompts([1, 5, 9, 14, 3], seed=8)]
    expected = hf_greedy(hf_model, prompts, NEW_TOKENS, eos_ids=[2])
    assert max(map(len, expected)) == NEW_TOKENS
    config = vLLMEngineProcessorConfig(
        model_source=str(tmp_path),
        engine_kwargs=ENGINE_KWARGS | dict(enable_prefix_caching=True),
        apply_chat_template=False,
        batch_size=2,
    )
    processor = build_llm_processor(
        config,
        preprocess=lambda row: dict(
            prompt=row["text"], sampling_params=dict(temperature=0.0, max_tokens=NEW_TOKENS)
        ),
    )
    rows = processor(data.from_items([{"text": as_text(p)} for p in prompts])).take_all()
    assert [row["num_input_tokens"] for row in rows] == [len(p) for p in prompts]
    assert [list(row["generated_tokens"]) for row in rows] == expected
    assert processor.summary().cached_input_tokens > 0


@pytest.mark.slow
def test_chunked_prefill_and_preemption(tmp_path):
    hf_model = save_tiny_model(tmp_path, fallback_configs()["granite"])
    prompts = random_prompts([9, 17, 23, 30, 12, 26], seed=3)
    expected = hf_greedy(hf_model, prompts, NEW_TOKENS, eos_ids=[2])
    assert max(map(len, expected)) == NEW_TOKENS
    with LLM(
        str(tmp_path),
        max_num_batched_tokens=16,
        max_num_seqs=8,
        block_size=8,
        num_gpu_blocks_override=10,
        reserve_output_kv=False,
        kv_cache_memory_bytes=16 << 20,
    ) as llm:
        outputs = llm.generate(prompts, GREEDY)
        stats = llm.llm_engine.stats
    assert [output.outputs[0].token_ids for output in outputs] == expected
    assert stats.num_preemptions > 0


def test_soft_caps_and_sliding_windows_reach_the_paged_attention(tmp_path):
    """Gemma 2 through its transformers code: the cap and window its attention passes to the
    attention function are honoured (prompts longer than the window)."""
    hf_model = save_tiny_model(tmp_path, family_configs()["gemma2-softcap-window"])
    prompts = random_prompts([4 * TINY_WINDOW, 3 * TINY_WINDOW + 1], seed=5)
    expected = hf_greedy(hf_model, prompts, NEW_TOKENS, eos_ids=[2])
    assert greedy_tokens(str(tmp_path), prompts, model_impl="transformers") == expected


def test_own_code_and_transformers_code_agree(tmp_path):
    save_tiny_model(tmp_path, tiny_configs()["qwen2-bias-tied"])
    prompts = random_prompts([3, 11, 25], seed=6)
    ours = greedy_tokens(str(tmp_path), prompts, model_impl="llmbatch")
    assert greedy_tokens(str(tmp_path), prompts, model_impl="transformers") == ours
    assert type(load_model(str(tmp_path)).model).__name__ == "LlamaForCausalLM"
    fallback = load_model(str(tmp_path), model_impl="transformers").model
    assert type(fallback).__name__ == "TransformersCausalLM"
    assert (fallback.num_layers, fallback.num_kv_heads, fallback.head_dim) == (2, 2, 16)


# --- what cannot run, and why ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            BloomConfig(vocab_size=VOCAB_SIZE, hidden_size=32, n_layer=2, n_head=4),
            "BloomForCausalLM computes attention in its own code rather than through "
            "transformers' attention interface",
        ),
        (
            Lfm2Config(
                vocab_size=VOCAB_SIZE,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                layer_types=["conv", "full_attention", "conv"],
            ),
            "Lfm2ForCausalLM has 3 layers but only 1 attention layers: layers that keep "
            "another state",
        ),
        (
            T5Config(vocab_size=VOCAB_SIZE, d_model=32, num_layers=1, num_heads=2, d_kv=8),
            "model type 't5' is an encoder-decoder",
        ),
    ],
    ids=["no-attention-interface", "convolution-layers", "encoder-decoder"],
)
def test_models_that_cannot_run_are_named_with_the_reason(config, message, tmp_path):
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        load_model(str(tmp_path), load_format="dummy")


def test_remote_code_needs_trust_remote_code(tmp_path):
    auto_map = {
        "AutoConfig": "configuration_my.MyConfig",
        "AutoModelForCausalLM": "modeling_my.MyLM",
    }
    config = {"model_type": "my_custom_lm", "architectures": ["MyLM"], "auto_map": auto_map}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="own Python code .* only with trust_remote_code=True"):
        LLM(str(tmp_path), load_format="dummy")


def test_auto_picks_own_code_where_it_exists(tmp_path):
    from llmbatch.engine.config import resolve_config

    for name, config in [
        ("qwen2", tiny_configs()["qwen2-bias-tied"]),
        ("olmo2", fallback_configs()["olmo2"]),
    ]:
        config.save_pretrained(tmp_path / name)
    resolved = {
        name: resolve_config(EngineArgs(model=str(tmp_path / name), load_format="dummy"))
        for name in ("qwen2", "olmo2")
    }
    assert resolved["qwen2"].model_impl == "llmbatch"
    assert resolved["olmo2"].model_impl == "transformers"
    assert resolved["olmo2"].max_model_len == fallback_configs()["olmo2"].max_position_embeddings


def test_model_impl_is_checked(tmp_path):
    save_tiny_model(tmp_path, fallback_configs()["olmo2"])
    with pytest.raises(ValueError, match="model_impl='vllm' is not supported; accepted: 'auto'"):
        EngineArgs(model=str(tmp_path), model_impl="vllm")
    with pytest.raises(ValueError, match="Olmo2ForCausalLM.*has no llmbatch implementation"):
        LLM(str(tmp_path), model_impl="llmbatch", **ENGINE_KWARGS)
    with pytest.raises(ValueError, match="tensor_parallel_size=2: .* runs on one device"):
        LLM(str(tmp_path), tensor_parallel_size=2, **ENGINE_KWARGS)
