"""Engine behaviour on the real SmolLM2: stopping, sampling options, prefix cache, rejection."""

from __future__ import annotations

import pytest
import torch
from engine_testing import ENGINE_KWARGS, LONG_SYSTEM_PROMPT

from llmbatch import LLM, SamplingParams
from llmbatch.engine.outputs import RequestRejected

MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
def llm(smollm2_dir):
    with LLM(smollm2_dir, **ENGINE_KWARGS, max_model_len=MAX_MODEL_LEN) as llm:
        yield llm


def chat_ids(tokenizer, user: str, system: str | None = None) -> list[int]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def greedy(max_tokens: int = 24, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kwargs)


@pytest.fixture(scope="module")
def story(llm):
    """A prompt, and its greedy output when nothing stops it early."""
    prompt = chat_ids(llm.get_tokenizer(), "Tell me a story about a lighthouse keeper.")
    return prompt, llm.generate(prompt, greedy(40, ignore_eos=True))[0]


def test_stop_string_cuts_the_text_before_it_or_keeps_it_when_asked(llm, story):
    prompt, full = story
    words = full.text.split()
    stop = words[len(words) // 2]
    index = full.text.index(stop)
    cut = llm.generate(prompt, greedy(40, ignore_eos=True, stop=[stop, "never-seen-text"]))[0]
    assert cut.text == full.text[:index]
    assert (cut.finish_reason, cut.stop_reason) == ("stop", stop)
    kept = llm.generate(
        prompt, greedy(40, ignore_eos=True, stop=stop, include_stop_str_in_output=True)
    )[0]
    assert kept.text == full.text[: index + len(stop)]
    assert full.token_ids[: len(kept.token_ids)] == kept.token_ids


def test_stop_token_ids_end_the_output_at_that_token(llm, story):
    prompt, full = story
    stop_token = full.token_ids[6]
    first = full.token_ids.index(stop_token)
    out = llm.generate(prompt, greedy(40, ignore_eos=True, stop_token_ids=[stop_token]))[0]
    assert out.token_ids == full.token_ids[: first + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop_token)
    tokenizer = llm.get_tokenizer()
    assert out.text == tokenizer.decode(full.token_ids[:first], skip_special_tokens=True)


def test_eos_min_tokens_and_ignore_eos(llm):
    tokenizer = llm.get_tokenizer()
    prompt = chat_ids(tokenizer, "What is the capital of France?")
    eos = set(llm.llm_engine.eos_token_ids)
    short = llm.generate(prompt, greedy(40))[0]
    assert short.finish_reason == "stop" and short.stop_reason is None
    assert short.token_ids[-1] in eos and len(short.token_ids) < 40
    assert short.text == tokenizer.decode(short.token_ids, skip_special_tokens=True)

    min_tokens = len(short.token_ids) + 5
    longer = llm.generate(prompt, greedy(40, min_tokens=min_tokens))[0]
    assert len(longer.token_ids) >= min_tokens
    assert not eos & set(longer.token_ids[:min_tokens])

    ignoring = llm.generate(prompt, greedy(30, ignore_eos=True))[0]
    assert len(ignoring.token_ids) == 30 and ignoring.finish_reason == "length"
    assert ignoring.token_ids[: len(short.token_ids)] == short.token_ids


def test_max_tokens_and_max_model_len_finish_with_length(llm):
    tokenizer = llm.get_tokenizer()
    out = llm.generate(chat_ids(tokenizer, "Count to one hundred."), greedy(7))[0]
    assert len(out.token_ids) == 7 and out.finish_reason == "length"
    long_prompt = [tokenizer.encode(" word", add_special_tokens=False)[0]] * (MAX_MODEL_LEN - 5)
    capped = llm.generate(long_prompt, greedy(None, ignore_eos=True))[0]
    assert len(long_prompt) + len(capped.token_ids) == MAX_MODEL_LEN
    assert capped.finish_reason == "length"


def test_prefix_cache_serves_a_shared_prefix_without_changing_output(llm):
    tokenizer = llm.get_tokenizer()
    # a first block no other test's prompt starts with
    system = "Pelican rules apply. " + LONG_SYSTEM_PROMPT
    first = chat_ids(tokenizer, "Do you sell maps?", system=system)
    second = chat_ids(tokenizer, "Do you sell maps of Scotland?", system=system)
    cold = llm.generate(second, greedy(8))[0]
    assert cold.num_cached_tokens == 0
    llm.generate(first, greedy(1))
    warm = llm.generate(second, greedy(8))[0]
    assert warm.token_ids == cold.token_ids
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    block = llm.llm_engine.config.block_size
    # its own earlier run left all its full blocks but the one holding the last prompt token
    assert warm.num_cached_tokens == (len(second) - 1) // block * block
    assert warm.num_cached_tokens >= shared // block * block > 0


def test_seeded_row_is_the_same_alone_and_among_fifty_others(llm):
    tokenizer = llm.get_tokenizer()
    target = chat_ids(tokenizer, "Invent a name for a cat.")
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=12)
    alone = llm.generate(target, params)[0]
    others = [chat_ids(tokenizer, f"Invent a name for pet number {i}.") for i in range(50)]
    # shorter and longer neighbours: the batch around the row changes while it runs
    other_params = [
        SamplingParams(temperature=0.9, seed=i, max_tokens=4 + i % 12) for i in range(25)
    ]
    other_params += [SamplingParams(temperature=1.2, max_tokens=3 + i % 8) for i in range(25)]
    batch = llm.generate(
        others[:20] + [target] + others[20:], [*other_params[:20], params, *other_params[20:]]
    )
    assert batch[20].token_ids == alone.token_ids
    reseeded = [SamplingParams(temperature=1.0, top_p=0.95, seed=s, max_tokens=12) for s in (1, 2)]
    outputs = llm.generate([target, target], reseeded)
    assert outputs[0].token_ids != outputs[1].token_ids
    assert alone.token_ids not in [o.token_ids for o in outputs]


def test_top_k_one_equals_greedy(llm, story):
    prompt, full = story
    out = llm.generate(
        prompt, SamplingParams(temperature=0.8, top_k=1, max_tokens=40, ignore_eos=True)
    )
    assert out[0].token_ids == full.token_ids


def teacher_forced_logits(hf_model, prompt: list[int], output: list[int]) -> torch.Tensor:
    """transformers' logits at each position that produced an output token."""
    ids = torch.tensor([prompt + output])
    with torch.no_grad():
        logits = hf_model(ids).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(output)]


def test_logprobs_equal_log_softmax_of_transformers_logits(llm, story, hf_smollm2):
    prompt, _ = story
    out = llm.generate(prompt, SamplingParams(temperature=0.7, seed=3, max_tokens=12, logprobs=2))[
        0
    ]
    reference = torch.log_softmax(teacher_forced_logits(hf_smollm2, prompt, out.token_ids), dim=-1)
    assert len(out.logprobs) == len(out.token_ids)
    for step, (token, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        top2 = reference[step].topk(2).indices.tolist()
        assert set(entry) == set(top2) | {token}
        for candidate, value in entry.items():
            assert value.logprob == pytest.approx(reference[step, candidate].item(), abs=2e-4)


def test_penalties_follow_their_definitions_on_real_logits(llm, hf_smollm2):
    tokenizer = llm.get_tokenizer()
    prompt = chat_ids(tokenizer, "Repeat the word 'banana' many times.")
    params = greedy(
        16, ignore_eos=True, repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.3
    )
    out = llm.generate(prompt, params)[0]
    logits = teacher_forced_logits(hf_smollm2, prompt, out.token_ids)
    plain = llm.generate(prompt, greedy(16, ignore_eos=True))[0]
    assert plain.token_ids != out.token_ids, "the penalties should change this output"
    for step, token in enumerate(out.token_ids):
        history = prompt + out.token_ids[:step]
        produced = out.token_ids[:step]
        expected = logits[step].clone()
        for t in set(history):
            value = expected[t]
            expected[t] = value / 1.3 if value > 0 else value * 1.3
        for t in set(produced):
            expected[t] -= 0.4 * produced.count(t) + 0.3
        assert token == int(expected.argmax()), f"step {step}"


def test_detokenize_false_returns_token_ids_only(llm, story):
    prompt, full = story
    out = llm.generate(prompt, greedy(10, ignore_eos=True, detokenize=False))[0]
    assert out.text == "" and out.token_ids == full.token_ids[:10]


def test_too_long_prompt_is_rejected_alone_while_others_finish(llm):
    engine = llm.llm_engine
    tokenizer = llm.get_tokenizer()
    engine.add_request("ok-1", chat_ids(tokenizer, "Hello!"), greedy(8))
    with pytest.raises(RequestRejected, match="max_model_len"):
        engine.add_request("too-long", [100] * (MAX_MODEL_LEN + 1), greedy(8))
    engine.add_request("ok-2", "Plain text prompt", greedy(8))
    with pytest.raises(RequestRejected, match="already"):
        engine.add_request("ok-2", "again", greedy(8))
    finished = {}
    while engine.has_unfinished():
        finished.update({o.request_id: o for o in engine.step()})
    assert set(finished) == {"ok-1", "ok-2"}
    assert finished["ok-2"].prompt == "Plain text prompt"
    assert finished["ok-2"].prompt_token_ids == tokenizer.encode("Plain text prompt")


def test_llm_generate_names_the_bad_prompt_and_runs_nothing(llm):
    steps_before = llm.llm_engine.stats.num_steps
    with pytest.raises(ValueError, match="prompt 1:.*max_model_len"):
        llm.generate(["fine", [7] * (MAX_MODEL_LEN + 10), "also fine"], greedy(4))
    with pytest.raises(ValueError, match="prompt 1 must be"):
        llm.generate(["fine", 3.5], greedy(4))
    with pytest.raises(ValueError, match="2 sampling params for 3 prompts"):
        llm.generate(["a", "b", "c"], [greedy(4), greedy(4)])
    assert not llm.llm_engine.has_unfinished()
    assert llm.llm_engine.stats.num_steps == steps_before


def test_abort_drops_a_running_request(llm):
    engine = llm.llm_engine
    engine.add_request("to-abort", "Write a long essay.", greedy(50))
    engine.add_request("to-keep", "Say hi.", greedy(5))
    engine.step()
    assert engine.abort_request("to-abort")
    assert not engine.abort_request("to-abort")
    done = []
    while engine.has_unfinished():
        done += [o.request_id for o in engine.step()]
    assert done == ["to-keep"]


def test_chat_equals_generate_on_the_templated_prompt(llm):
    conversation = [{"role": "user", "content": "Name a fruit."}]
    chatted = llm.chat(conversation, greedy(12))[0]
    tokenizer = llm.get_tokenizer()
    generated = llm.generate(chat_ids(tokenizer, "Name a fruit."), greedy(12))[0]
    assert chatted.token_ids == generated.token_ids
    assert chatted.prompt.startswith("<|im_start|>")
    assert chatted.outputs[0].text == chatted.text


def test_bad_logprobs_request_is_rejected(llm):
    with pytest.raises(ValueError, match="max_logprobs"):
        llm.generate("hi", SamplingParams(logprobs=1000))


def test_admission_keeping_kv_for_the_outputs_avoids_preempting(smollm2_dir, llm):
    tokenizer = llm.get_tokenizer()
    prompts = [chat_ids(tokenizer, f"Count to {n} in words.") for n in range(3, 11)]
    # 24 blocks of 16 tokens hold the eight prompts, but only about four whole answers
    small_cache = dict(max_model_len=256, num_gpu_blocks_override=24)
    results = {}
    for reserve in (False, True):
        with LLM(smollm2_dir, **ENGINE_KWARGS, **small_cache, reserve_output_kv=reserve) as small:
            outputs = small.generate(prompts, greedy(40, ignore_eos=True))
            results[reserve] = [o.token_ids for o in outputs], small.llm_engine.stats
    assert results[False][1].num_preemptions > 0
    assert results[True][1].num_preemptions == 0
    assert results[True][0] == results[False][0]
