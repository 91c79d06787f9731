"""Greedy output of the engine equals transformers generate(), token for token, for each family
with its own code beyond Llama: prompts longer than the sliding window, prefilled in chunks,
with prefix caching on and sequences preempted and recomputed."""

from __future__ import annotations

import pytest
from tiny_models import TINY_WINDOW, family_configs, hf_greedy, random_prompts, save_tiny_model

from llmbatch import LLM, SamplingParams

NEW_TOKENS = 24
# 8 decodes leave 8 tokens a step for prefills; 12 blocks of 8 tokens hold about half the batch
# at full length, and admission that does not reserve room for outputs must preempt
CHUNKED_AND_PREEMPTED = dict(
    max_num_batched_tokens=16,
    max_num_seqs=8,
    block_size=8,
    num_gpu_blocks_override=12,
    reserve_output_kv=False,
    kv_cache_memory_bytes=16 << 20,
)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(family_configs()))
def test_greedy_matches_transformers_chunked_and_preempted(family, tmp_path):
    hf_model = save_tiny_model(tmp_path, family_configs()[family])
    prompts = random_prompts([9, 17, 23, 30, 12, 26], seed=3)
    # two prompts share their first 16 tokens (two blocks) with another: prefix-cache hits
    prompts[4] = prompts[3][:16] + prompts[4]
    prompts[5] = prompts[3][:16] + prompts[5][:10]
    assert min(map(len, prompts)) > TINY_WINDOW
    expected = hf_greedy(hf_model, prompts, NEW_TOKENS, eos_ids=[2])
    assert max(map(len, expected)) == NEW_TOKENS
    with LLM(str(tmp_path), **CHUNKED_AND_PREEMPTED) as llm:
        outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS))
        stats = llm.llm_engine.stats
    assert [output.outputs[0].token_ids for output in outputs] == expected
    assert stats.num_preemptions > 0
    assert stats.num_cached_tokens > 0
    assert stats.num_steps > NEW_TOKENS + max(map(len, prompts)) // 16
