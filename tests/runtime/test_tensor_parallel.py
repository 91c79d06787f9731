"""Tensor parallelism on the CPU (gloo): the same greedy tokens as one unsharded model."""

from __future__ import annotations

import multiprocessing

import pytest
from tiny_models import family_configs, random_prompts, save_tiny_model, tiny_configs

from llmbatch import LLM, SamplingParams

ENGINE_KWARGS = dict(kv_cache_memory_bytes=64 << 20, max_num_seqs=8, max_model_len=256)
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, detokenize=False)
CHATS = [
    "Hi!",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
]


def generated_tokens(folder: str, prompts, tensor_parallel_size: int) -> list[list[int]]:
    with LLM(folder, tensor_parallel_size=tensor_parallel_size, **ENGINE_KWARGS) as llm:
        outputs = llm.generate(prompts, GREEDY)
    assert not multiprocessing.active_children(), "tensor-parallel workers outlived close()"
    return [output.outputs[0].token_ids for output in outputs]


@pytest.fixture(scope="module")
def qwen2_odd_vocab(tmp_path_factory) -> str:
    """Biases and tied embeddings, and a vocabulary that two ranks cannot split evenly."""
    config = tiny_configs()["qwen2-bias-tied"]
    config.vocab_size = 125
    folder = tmp_path_factory.mktemp("qwen2-tp")
    save_tiny_model(folder, config)
    return str(folder)


def test_smollm2_tp3_matches_unsharded(smollm2_dir):
    """SmolLM2-135M has 9 query and 3 KV heads, so 3 is its smallest tensor-parallel size."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": chat}], add_generation_prompt=True, tokenize=False
        )
        for chat in CHATS
    ]
    assert generated_tokens(smollm2_dir, prompts, 3) == generated_tokens(smollm2_dir, prompts, 1)


def test_qwen2_tp2_matches_unsharded(qwen2_odd_vocab):
    prompts = [[(7 * i + 3 * j) % 122 + 3 for j in range(n)] for i, n in enumerate([5, 17, 30, 9])]
    sharded = generated_tokens(qwen2_odd_vocab, prompts, 2)
    assert sharded == generated_tokens(qwen2_odd_vocab, prompts, 1)
    assert all(0 <= t < 125 for tokens in sharded for t in tokens)


@pytest.mark.slow
@pytest.mark.parametrize(
    "family", ["gemma2-softcap-window", "phi3-longrope-partial-window", "qwen2-moe-shared-expert"]
)
def test_families_tp2_match_unsharded(family, tmp_path):
    """Soft-capping and sliding windows on sharded heads; Phi-3's fused checkpoint projections
    sliced per rank; experts and the shared expert sharded by their intermediate features."""
    save_tiny_model(tmp_path, family_configs()[family])
    prompts = random_prompts([5, 17, 30, 9], seed=2)
    assert generated_tokens(str(tmp_path), prompts, 2) == generated_tokens(
        str(tmp_path), prompts, 1
    )


def test_size_that_does_not_divide_heads_is_rejected(qwen2_odd_vocab):
    with pytest.raises(
        ValueError, match="tensor_parallel_size=3 must divide .*num_attention_heads"
    ):
        LLM(qwen2_odd_vocab, tensor_parallel_size=3, **ENGINE_KWARGS)
    assert not multiprocessing.active_children()


def test_pipeline_parallelism_is_still_rejected(qwen2_odd_vocab):
    with pytest.raises(ValueError, match="pipeline_parallel_size=2 is not supported"):
        LLM(qwen2_odd_vocab, pipeline_parallel_size=2)
