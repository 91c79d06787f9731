"""Requests beyond one sampled answer, on the real SmolLM2: n samples sharing one prefill, vLLM's
output objects (Logprob, prompt logprobs, metrics), and the token filters (bad words, allowed
tokens, logits processors)."""

from __future__ import annotations

import math

import pytest
import torch
from engine_testing import ENGINE_KWARGS, LONG_SYSTEM_PROMPT

from llmbatch import LLM, Logprob, SamplingParams

QUESTION = "Name three things you can buy in a bookshop."


@pytest.fixture(scope="module")
def llm(smollm2_dir):
    with LLM(smollm2_dir, **ENGINE_KWARGS, max_model_len=512) as llm:
        yield llm


@pytest.fixture(scope="module")
def prompt(llm) -> list[int]:
    """A chat prompt of several full KV blocks (the long system prompt)."""
    messages = [
        {"role": "system", "content": LONG_SYSTEM_PROMPT},
        {"role": "user", "content": QUESTION},
    ]
    text = llm.get_tokenizer().apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    return llm.get_tokenizer().encode(text, add_special_tokens=False)


def test_n_seeded_samples_equal_separate_requests_and_share_one_prefill(llm, prompt):
    engine = llm.llm_engine
    before = engine.stats
    output = llm.generate(prompt, SamplingParams(n=4, seed=11, temperature=1.0, max_tokens=16))[0]
    after = engine.stats
    assert [c.index for c in output.outputs] == [0, 1, 2, 3]
    texts = [c.text for c in output.outputs]
    assert len(set(texts)) > 1, texts
    for i, completion in enumerate(output.outputs):
        alone = llm.generate(prompt, SamplingParams(seed=11 + i, temperature=1.0, max_tokens=16))
        assert alone[0].token_ids == completion.token_ids
    # the prompt is computed once: the other samples find its full blocks in the prefix cache
    full_blocks = (len(prompt) - 1) // 16 * 16
    assert after.num_cached_tokens - before.num_cached_tokens >= 3 * full_blocks
    assert output.num_cached_tokens >= 3 * full_blocks
    again = llm.generate(prompt, SamplingParams(n=4, seed=11, temperature=1.0, max_tokens=16))[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in output.outputs]


def test_greedy_samples_are_equal_and_abort_drops_them_all(llm, prompt):
    output = llm.generate(prompt, SamplingParams(n=2, temperature=0.0, max_tokens=10))[0]
    assert output.outputs[0].token_ids == output.outputs[1].token_ids
    engine = llm.llm_engine
    engine.add_request("many", prompt, SamplingParams(n=3, temperature=1.0, max_tokens=30))
    engine.step()
    assert engine.abort_request("many")
    assert not engine.has_unfinished() or not any(o.request_id == "many" for o in engine.step())
    assert engine.num_unfinished() == 0


def test_logprobs_are_logprob_objects_with_ranks_and_text(llm, prompt):
    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=3, prompt_logprobs=2)
    output = llm.generate(prompt, params)[0]
    completion = output.outputs[0]
    tokenizer = llm.get_tokenizer()
    total = 0.0
    for token, entry in zip(completion.token_ids, completion.logprobs):
        assert all(isinstance(v, Logprob) for v in entry.values())
        assert entry[token].rank == 1  # greedy: the most likely
        ranks = sorted(v.rank for t, v in entry.items())
        assert ranks[:3] == [1, 2, 3]
        assert entry[token].decoded_token == tokenizer.decode([token])
        total += entry[token].logprob
    assert math.isclose(completion.cumulative_logprob, total, rel_tol=1e-6)
    assert len(output.prompt_logprobs) == len(prompt) and output.prompt_logprobs[0] is None
    assert output.metrics.first_token_time >= output.metrics.first_scheduled_time
    assert output.metrics.finished_time >= output.metrics.first_token_time
    reference = _prompt_logprobs_of(llm, prompt)
    for position in (1, len(prompt) // 2, len(prompt) - 1):
        entry = output.prompt_logprobs[position]
        assert entry[prompt[position]].logprob == pytest.approx(reference[position], abs=1e-4)


def _prompt_logprobs_of(llm, prompt: list[int]) -> list[float]:
    """log P(prompt[t] | prompt[:t]) by a plain forward of transformers' model."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(llm.llm_engine.config.model, dtype=torch.float32)
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [0.0] + [logprobs[t - 1, prompt[t]].item() for t in range(1, len(prompt))]


def test_prompt_logprobs_after_preemption_and_chunking_are_the_same(smollm2_dir, llm, prompt):
    params = SamplingParams(temperature=0.0, max_tokens=4, prompt_logprobs=1)
    expected = llm.generate(prompt, params)[0].prompt_logprobs
    with LLM(smollm2_dir, max_model_len=512, max_num_batched_tokens=32, max_num_seqs=4) as small:
        chunked = small.generate(prompt, params)[0].prompt_logprobs
    assert [e and sorted(e) for e in chunked] == [e and sorted(e) for e in expected]
    for a, b in zip(chunked[1:], expected[1:]):
        for token in b:
            assert a[token].logprob == pytest.approx(b[token].logprob, abs=1e-4)


def test_bad_words_allowed_tokens_and_logits_processors(llm, prompt):
    free = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=24))[0]
    tokenizer = llm.get_tokenizer()
    word = tokenizer.decode(free.token_ids[2:3]).strip()
    banned = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=24, bad_words=[word]))
    assert word not in banned[0].text.split()
    allowed = [tokenizer.encode(w, add_special_tokens=False)[0] for w in (" pens", " maps")]
    only = llm.generate(
        prompt, SamplingParams(temperature=0.7, seed=3, max_tokens=6, allowed_token_ids=allowed)
    )[0]
    assert set(only.token_ids) <= set(allowed)

    seen = []

    def forbid_first_choice(prompt_ids, output_ids, logits):
        seen.append((len(prompt_ids), len(output_ids)))
        logits[free.token_ids[len(output_ids)]] = float("-inf")
        return logits

    steered = llm.generate(
        prompt,
        SamplingParams(temperature=0.0, max_tokens=3, logits_processors=[forbid_first_choice]),
    )[0]
    assert seen[:3] == [(len(prompt), 0), (len(prompt), 1), (len(prompt), 2)]
    assert steered.token_ids[0] != free.token_ids[0]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(temperature=float("inf")), ValueError, "temperature must be a finite number"),
        (dict(presence_penalty=float("nan")), ValueError, "presence_penalty must be a finite"),
        (dict(repetition_penalty=float("inf")), ValueError, "repetition_penalty must be a fin"),
        (dict(temperature="hot"), TypeError, "temperature='hot' has type str"),
        (dict(n=0), ValueError, "n must be at least 1"),
        (dict(bad_words="word"), TypeError, "bad_words"),
        (dict(allowed_token_ids=[]), ValueError, "allowed_token_ids must hold at least one"),
        (dict(logits_processors=[3]), TypeError, "logits_processors must hold functions"),
    ],
)
def test_invalid_sampling_params_raise_as_vllm(kwargs, error, message):
    with pytest.raises(error, match=message):
        SamplingParams(**kwargs)
