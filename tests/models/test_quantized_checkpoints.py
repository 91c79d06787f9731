"""Quantized checkpoints in each tool's on-disk layout load and generate the greedy tokens of
transformers running their dequantized weights in float32 (the CPU runs the dequantized
weights, so the tokens must match exactly)."""

from __future__ import annotations

import pytest
from quantized_checkpoints import (
    FORMATS,
    fp8_at_load_reference,
    quantization_configs,
    save_quantized_model,
)
from tiny_models import family_configs, hf_greedy, random_prompts, save_tiny_model

from llmbatch import LLM, SamplingParams
from llmbatch.layers.quantization import Fp8Linear, Fp8MoEExperts, Int4Linear

ENGINE_KWARGS = dict(kv_cache_memory_bytes=32 << 20, max_num_seqs=8, max_model_len=128)
NEW_TOKENS = 12
PROMPTS = random_prompts([3, 14, 33], seed=5)
# one format of each tool, run in every test session; their variants are marked slow
CORE_FORMATS = [
    "ct-fp8-dynamic",
    "modelopt-fp8",
    "fbgemm-fp8",
    "autofp8-static",
    "awq-g128",
    "gptq-g64-act-order",
    "ct-w4a16-zero-point",
]
# Qwen2 adds biases to q, k and v and ties its embeddings
QWEN2_FORMATS = ["ct-fp8-static", "awq-g128", "gptq-g64-act-order", "ct-w4a16-zero-point"]
CASES = [
    pytest.param(family, name, marks=() if name in CORE_FORMATS else pytest.mark.slow)
    for family, names in (("llama", FORMATS), ("qwen2", QWEN2_FORMATS))
    for name in names
]


def greedy(folder: str, **kwargs) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)
    with LLM(folder, **ENGINE_KWARGS, **kwargs) as llm:
        return [output.outputs[0].token_ids for output in llm.generate(PROMPTS, params)]


@pytest.mark.parametrize(("family", "format_name"), CASES)
def test_quantized_checkpoint_matches_its_dequantized_weights(family, format_name, tmp_path):
    reference = save_quantized_model(tmp_path, quantization_configs()[family], format_name)
    expected = hf_greedy(reference, PROMPTS, NEW_TOKENS, eos_ids=[2])
    assert greedy(str(tmp_path)) == expected


def layers_of(llm: LLM) -> list[type]:
    model = llm.llm_engine._runner.model
    return [type(module) for module in model.modules()]


def test_fp8_at_load_matches_the_weights_quantized_per_row(tmp_path):
    """quantization="fp8" on a full-precision checkpoint: every projection of the decoder
    blocks quantized per output row at load (the CPU then runs the dequantized weights)."""
    model = save_tiny_model(tmp_path, quantization_configs()["qwen2"])
    expected = hf_greedy(fp8_at_load_reference(model), PROMPTS, NEW_TOKENS, eos_ids=[2])
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)
    with LLM(str(tmp_path), quantization="fp8", **ENGINE_KWARGS) as llm:
        assert llm.llm_engine.config.quantization == "fp8"
        assert layers_of(llm).count(Fp8Linear) == 2 * 4  # qkv, o, gate_up, down per layer
        outputs = llm.generate(PROMPTS, params)
    assert [output.outputs[0].token_ids for output in outputs] == expected


@pytest.mark.parametrize("format_name", ["ct-fp8-dynamic", "ct-fp8-tensor-dynamic", "online"])
def test_fp8_experts_match_their_dequantized_weights(format_name, tmp_path):
    """Qwen3-MoE with FP8 experts (per-channel or per-tensor scales, or quantized at load), a
    full-precision router and a dense layer among the sparse ones."""
    config = family_configs()["qwen3-moe-top2"]
    if format_name == "online":
        expected_model = fp8_at_load_reference(save_tiny_model(tmp_path, config))
        kwargs = dict(quantization="fp8")
    else:
        expected_model = save_quantized_model(tmp_path, config, format_name)
        kwargs = {}
    expected = hf_greedy(expected_model, PROMPTS, NEW_TOKENS, eos_ids=[2])
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)
    with LLM(str(tmp_path), **ENGINE_KWARGS, **kwargs) as llm:
        assert layers_of(llm).count(Fp8MoEExperts) == 2
        outputs = llm.generate(PROMPTS, params)
    assert [output.outputs[0].token_ids for output in outputs] == expected


@pytest.mark.parametrize(
    "format_name",
    [
        "gptq-g64-act-order",
        pytest.param("awq-g128", marks=pytest.mark.slow),
        pytest.param("ct-fp8-static", marks=pytest.mark.slow),
        pytest.param("ct-w4a16-zero-point", marks=pytest.mark.slow),
    ],
)
def test_tensor_parallel_shards_quantized_weights_and_scales(format_name, tmp_path):
    """Two ranks: packed columns, per-part scales, zero points and act orders split by rank
    (the act order's groups, split unevenly, stay whole on both ranks)."""
    reference = save_quantized_model(tmp_path, quantization_configs()["llama"], format_name)
    expected = hf_greedy(reference, PROMPTS, NEW_TOKENS, eos_ids=[2])
    assert greedy(str(tmp_path), tensor_parallel_size=2) == expected


def test_dummy_weights_in_a_quantized_layout_run(tmp_path):
    """load_format="dummy" with only a quantized config.json (a benchmark's model shape)."""
    save_quantized_model(tmp_path, quantization_configs()["llama"], "awq-g128")
    (tmp_path / "model.safetensors").unlink()
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    with LLM(str(tmp_path), load_format="dummy", **ENGINE_KWARGS) as llm:
        assert layers_of(llm).count(Int4Linear) == 2 * 4
        outputs = llm.generate(PROMPTS, params)
    assert all(len(output.outputs[0].token_ids) == 4 for output in outputs)


def test_lora_on_quantized_weights_is_an_error_naming_the_format(tmp_path):
    save_quantized_model(tmp_path, quantization_configs()["llama"], "awq-g128")
    with pytest.raises(ValueError, match=r"enable_lora runs on full-precision weights.*\(awq\)"):
        LLM(str(tmp_path), enable_lora=True, **ENGINE_KWARGS)
