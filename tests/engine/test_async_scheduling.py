"""async_scheduling launches step N+1 before step N's tokens are read back: outputs must not change."""

from __future__ import annotations

import pytest
from engine_testing import ENGINE_KWARGS

from llmbatch import LLM, SamplingParams
from llmbatch.engine.llm_engine import LLMEngine

USERS = [
    "Tell me a story about a lighthouse keeper.",
    "List three fruits.",
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Explain gravity to a child.",
    "Name a color.",
]


def mixed_params() -> list[SamplingParams]:
    """One of each way a request can end or sample, several per prompt."""
    return [
        SamplingParams(temperature=0.0, max_tokens=40),
        SamplingParams(temperature=0.0, max_tokens=3),
        SamplingParams(temperature=0.0, max_tokens=40, stop=[".", "\n"]),
        SamplingParams(temperature=0.0, max_tokens=30, stop=[","], include_stop_str_in_output=True),
        SamplingParams(temperature=0.0, max_tokens=30, min_tokens=12, ignore_eos=False),
        SamplingParams(temperature=0.8, top_p=0.9, max_tokens=30, seed=7),
        SamplingParams(temperature=1.0, top_k=20, max_tokens=20, seed=11),
        SamplingParams(temperature=0.0, max_tokens=25, repetition_penalty=1.3),
        SamplingParams(temperature=0.7, max_tokens=20, seed=3, presence_penalty=0.5),
        SamplingParams(temperature=0.0, max_tokens=10, logprobs=3),
        SamplingParams(temperature=0.0, max_tokens=1),
        SamplingParams(temperature=0.0, max_tokens=35, ignore_eos=True),
    ]


def run(folder: str, prompts, params, **engine_kwargs):
    with LLM(folder, **(ENGINE_KWARGS | engine_kwargs)) as llm:
        outputs = llm.generate(prompts, params)
        return outputs, llm.llm_engine.stats


@pytest.fixture(scope="module")
def workload(smollm2_dir):
    with LLM(smollm2_dir, **ENGINE_KWARGS) as llm:
        tokenizer = llm.get_tokenizer()
    params = mixed_params()
    prompts, row_params = [], []
    for i, user in enumerate(USERS * 4):
        messages = [{"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompts.append(tokenizer.encode(text, add_special_tokens=False))
        row_params.append(params[i % len(params)])
    return prompts, row_params


@pytest.mark.parametrize(
    "limits",
    [
        {},
        # few KV blocks and a small token budget: preemption and chunked prefills under async
        dict(
            num_gpu_blocks_override=24,
            max_num_batched_tokens=48,
            max_num_seqs=12,
            reserve_output_kv=False,
        ),
    ],
    ids=["roomy", "preempting"],
)
def test_async_outputs_equal_synchronous_outputs(smollm2_dir, workload, limits):
    prompts, params = workload
    sync, _ = run(smollm2_dir, prompts, params, async_scheduling=False, **limits)
    overlapped, stats = run(smollm2_dir, prompts, params, async_scheduling=True, **limits)
    for index, (a, b) in enumerate(zip(sync, overlapped)):
        assert b.token_ids == a.token_ids, f"request {index} ({params[index]}) changed"
        assert (b.text, b.finish_reason, b.stop_reason) == (a.text, a.finish_reason, a.stop_reason)
        assert (a.logprobs is None) == (b.logprobs is None)
        for step_a, step_b in zip(a.logprobs or [], b.logprobs or []):
            assert step_b.keys() == step_a.keys()
            values_b = [entry.logprob for entry in step_b.values()]
            values_a = [entry.logprob for entry in step_a.values()]
            assert values_b == pytest.approx(values_a, abs=1e-4)
    # the engine counts only kept tokens, not those computed past a finish
    assert stats.num_generated_tokens == sum(len(o.token_ids) for o in overlapped)
    if limits:
        assert stats.num_preemptions > 0


def test_abort_while_a_step_is_in_flight(smollm2_dir, workload):
    prompts, _ = workload
    engine = LLMEngine.from_engine_args(model=smollm2_dir, **ENGINE_KWARGS, async_scheduling=True)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
        for i, prompt in enumerate(prompts[:4]):
            engine.add_request(str(i), prompt, params)
        engine.step()
        engine.step()
        assert engine.abort_request("1")
        finished = []
        while engine.has_unfinished():
            finished.extend(engine.step())
        assert sorted(o.request_id for o in finished) == ["0", "2", "3"]
        assert all(len(o.token_ids) == 20 for o in finished)
    finally:
        engine.close()
