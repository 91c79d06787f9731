"""Quantized checkpoints in each tool's on-disk layout load and generate the greedy tokens of
transformers running their dequantized weights in float32 (the CPU runs the dequantized
weights, so the tokens must match exactly)."""

from __future__ import annotations

import pytest
from quantized_checkpoints import FORMATS, quantization_configs, save_quantized_model
from tiny_models import hf_greedy, random_prompts

from llmbatch import LLM, SamplingParams

ENGINE_KWARGS = dict(kv_cache_memory_bytes=32 << 20, max_num_seqs=8, max_model_len=128)
NEW_TOKENS = 12
PROMPTS = random_prompts([3, 14, 33], seed=5)
# Qwen2 adds biases to q, k and v and ties its embeddings
QWEN2_FORMATS = ["ct-fp8-static", "awq-g128", "gptq-g64-act-order", "ct-w4a16-zero-point"]
CASES = [("llama", name) for name in FORMATS] + [("qwen2", name) for name in QWEN2_FORMATS]


def greedy(folder: str, **kwargs) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)
    with LLM(folder, **ENGINE_KWARGS, **kwargs) as llm:
        return [output.outputs[0].token_ids for output in llm.generate(PROMPTS, params)]


@pytest.mark.parametrize(("family", "format_name"), CASES)
def test_quantized_checkpoint_matches_its_dequantized_weights(family, format_name, tmp_path):
    reference = save_quantized_model(tmp_path, quantization_configs()[family], format_name)
    expected = hf_greedy(reference, PROMPTS, NEW_TOKENS, eos_ids=[2])
    assert greedy(str(tmp_path)) == expected
