"""On CUDA (fused Triton layer ops): float32 equals transformers, bfloat16 within its tolerance."""

from __future__ import annotations

import pytest
import torch
from paged_runner import PagedRunner, assert_logits_close, run_chunked
from tiny_models import random_prompts, save_tiny_model, tiny_configs
from transformers import AutoModelForCausalLM, Qwen2Config

from llmbatch.models import load_model

pytestmark = pytest.mark.gpu
BACKENDS = ["torch", "triton"]


def cuda_reference(folder, dtype: torch.dtype, prompts: list[list[int]]) -> list[torch.Tensor]:
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    hf_model = hf_model.to("cuda").eval()
    with torch.inference_mode():
        return [hf_model(torch.tensor([p], device="cuda")).logits[0].float() for p in prompts]


@pytest.fixture(scope="module", params=list(tiny_configs()))
def tiny_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    save_tiny_model(folder, tiny_configs()[request.param])
    return str(folder)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("dtype", "rel"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_tiny_models_on_cuda(tiny_folder, backend, dtype, rel):
    loaded = load_model(tiny_folder, device="cuda", dtype=dtype, attention_backend=backend)
    prompts = random_prompts([20, 27, 13], seed=1)
    plans = [[7, 5] + [1] * 8, [1, 1, 12, 3] + [1] * 10, [13]]
    runner = PagedRunner(loaded.model, num_blocks=64, block_size=16, seed=2)
    logits = run_chunked(runner, prompts, plans)
    for ours, reference in zip(logits, cuda_reference(tiny_folder, dtype, prompts)):
        assert_logits_close(ours, reference, rel)


@pytest.mark.parametrize("backend", BACKENDS)
def test_smollm2_bfloat16_on_cuda(smollm2_dir, backend):
    loaded = load_model(smollm2_dir, device="cuda", dtype="bfloat16", attention_backend=backend)
    tokenizer = loaded.tokenizer
    texts = ["The capital of France is", "Write a poem about the sea, the wind and the night sky."]
    prompts = [tokenizer(t).input_ids for t in texts]
    plans = [[3] + [1] * (len(prompts[0]) - 3), [8, len(prompts[1]) - 8]]
    logits = run_chunked(PagedRunner(loaded.model, 32, 16), prompts, plans)
    for ours, reference in zip(logits, cuda_reference(smollm2_dir, torch.bfloat16, prompts)):
        assert_logits_close(ours, reference, 3e-2)
        assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9


def test_dummy_weights_in_a_real_shape_on_cuda(tmp_path):
    """Qwen2.5-0.5B's shape (four of its layers), with the bfloat16 dtype its checkpoint names."""
    config = Qwen2Config(
        hidden_size=896,
        intermediate_size=4864,
        num_attention_heads=14,
        num_key_value_heads=2,
        num_hidden_layers=4,
        vocab_size=151936,
        tie_word_embeddings=True,
        dtype="bfloat16",
    )
    config.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cuda", load_format="dummy")
    assert loaded.dtype == torch.bfloat16
    runner = PagedRunner(loaded.model, num_blocks=16, block_size=16)
    logits = runner.step({0: list(range(40)), 1: list(range(7))})
    assert all(torch.isfinite(x).all() for x in logits.values())
