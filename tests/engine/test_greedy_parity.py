"""Greedy output of the engine equals transformers generate(), token for token."""

from __future__ import annotations

import random

import pytest
from engine_testing import ENGINE_KWARGS, PARITY_NEW_TOKENS, TINY_CONFIGS, TINY_VOCAB
from tiny_models import hf_greedy, save_tiny_model

from llmbatch import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=PARITY_NEW_TOKENS)

SMOLLM2_SETUPS = {
    "default": {},
    "no-prefix-caching": dict(enable_prefix_caching=False),
    # 16 decodes leave 16 tokens a step for prefills: every prompt is prefilled in chunks
    "chunked-prefill": dict(max_num_batched_tokens=32, max_num_seqs=16),
    # 48 blocks of 16 tokens hold about a third of the batch at full length; admission that
    # reserves room for the outputs would avoid preempting
    "preemption": dict(num_gpu_blocks_override=48, reserve_output_kv=False),
    # step N+1 launched before step N's tokens are read back, here under preemption and chunking
    "async": dict(
        async_scheduling=True,
        num_gpu_blocks_override=48,
        reserve_output_kv=False,
        max_num_batched_tokens=32,
        max_num_seqs=16,
    ),
}


@pytest.mark.parametrize("setup", list(SMOLLM2_SETUPS))
def test_smollm2_greedy_matches_transformers(setup, smollm2_dir, smollm2_greedy_reference):
    reference = smollm2_greedy_reference
    assert len(reference.prompts) >= 16
    assert max(len(o) for o in reference.outputs) == PARITY_NEW_TOKENS
    with LLM(smollm2_dir, **(ENGINE_KWARGS | SMOLLM2_SETUPS[setup])) as llm:
        outputs = llm.generate(reference.prompts, GREEDY)
        stats = llm.llm_engine.stats
    for index, (output, expected) in enumerate(zip(outputs, reference.outputs)):
        assert output.token_ids == expected, f"prompt {index} diverged"
        assert output.finish_reason == ("length" if len(expected) == PARITY_NEW_TOKENS else "stop")
    if setup == "no-prefix-caching":
        assert stats.num_cached_tokens == 0
    else:
        # the first 8 prompts share a long system prompt
        assert stats.num_cached_tokens > 0
    setup_kwargs = SMOLLM2_SETUPS[setup]
    if "num_gpu_blocks_override" in setup_kwargs:
        assert stats.num_preemptions > 0
    else:
        assert stats.num_preemptions == 0
    if "max_num_batched_tokens" in setup_kwargs:
        assert stats.num_steps > PARITY_NEW_TOKENS + max(map(len, reference.prompts)) // 16


@pytest.mark.parametrize("family", list(TINY_CONFIGS))
def test_tiny_random_model_greedy_matches_transformers(family, tmp_path):
    hf_model = save_tiny_model(tmp_path, TINY_CONFIGS[family])
    rng = random.Random(family)
    prompts = [[rng.randrange(3, TINY_VOCAB) for _ in range(n)] for n in (1, 5, 9, 17, 30, 47)]
    expected = hf_greedy(hf_model, prompts, 24, eos_ids=[2])
    with LLM(str(tmp_path), **ENGINE_KWARGS, max_num_batched_tokens=64) as llm:
        outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=24))
    assert [o.token_ids for o in outputs] == expected
