"""tensor_parallel_size=2 on two GPUs (NCCL): bf16 greedy tokens equal the unsharded model's."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_prompts, save_tiny_model
from transformers import LlamaConfig

from llmbatch import LLM, SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"),
]
GREEDY = SamplingParams(
    temperature=0.0, max_tokens=16, ignore_eos=True, detokenize=False, logprobs=5
)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> str:
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    folder = tmp_path_factory.mktemp("llama-tp-gpu")
    save_tiny_model(folder, config)
    return str(folder)


def run(folder: str, tensor_parallel_size: int):
    prompts = random_prompts([9, 33, 70, 4, 21], seed=3)
    with LLM(
        folder,
        tensor_parallel_size=tensor_parallel_size,
        dtype="bfloat16",
        gpu_memory_utilization=0.3,
        max_model_len=256,
    ) as llm:
        return [output.outputs[0] for output in llm.generate(prompts, GREEDY)]


def test_tp2_matches_unsharded_in_bf16(llama_folder):
    unsharded, sharded = run(llama_folder, 1), run(llama_folder, 2)
    assert [o.token_ids for o in sharded] == [o.token_ids for o in unsharded]
    for a, b in zip(unsharded, sharded):
        for step_a, step_b, token in zip(a.logprobs, b.logprobs, a.token_ids):
            # partial sums meet in bf16: a couple of bf16 steps of this model's logits (~16)
            assert step_b[token].logprob == pytest.approx(step_a[token].logprob, abs=0.25)
