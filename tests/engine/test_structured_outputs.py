"""Structured outputs on the real SmolLM2 (float32): every answer follows its constraint, rows of
different constraints share a batch without changing each other's tokens, and a bad constraint is a
clear error for its request alone."""

from __future__ import annotations

import json
import re

import pytest
from engine_testing import ENGINE_KWARGS

from llmbatch import LLM, SamplingParams, StructuredOutputsParams
from llmbatch.engine.outputs import RequestRejected

jsonschema = pytest.importorskip("jsonschema")
DATE = r"\d{2}-\d{2}-\d{4}"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "editor", "viewer"]},
    },
    "required": ["name", "age", "role"],
}
QUESTIONS = [
    "Convert this date:\n2020-11-16\n\n as the format:MM-DD-YYYY",
    "Describe a user of a website as JSON with a name, an age and a role.",
    "Is the sky green? Answer yes or no.",
    "Write a poem about the sea.",
    "Convert this date:\n2019-03-05\n\n as the format:MM-DD-YYYY",
    "Give me a JSON record of a person called Ana.",
]


@pytest.fixture(scope="module")
def llm(smollm2_dir):
    with LLM(smollm2_dir, **ENGINE_KWARGS, max_model_len=512) as llm:
        yield llm


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def constraint(i: int) -> dict | None:
    """A mix: a regex, a JSON schema, a choice, and free text."""
    return [
        {"regex": DATE},
        {"json": PERSON, "disable_any_whitespace": True},
        {"choice": ["yes", "no"]},
        None,
    ][i % 4]


def params(i: int, max_tokens: int = 40, **kwargs) -> SamplingParams:
    return SamplingParams(
        temperature=0.0, max_tokens=max_tokens, structured_outputs=constraint(i), **kwargs
    )


def check(output, spec: dict | None) -> None:
    if spec is None:
        return
    if "regex" in spec:
        assert re.fullmatch(spec["regex"], output.text), output.text
    elif "choice" in spec:
        assert output.text in spec["choice"]
    elif output.finish_reason == "stop":
        jsonschema.validate(json.loads(output.text), spec["json"])


def test_every_answer_follows_its_constraint(llm):
    outputs = llm.chat([chat(q) for q in QUESTIONS], [params(i) for i in range(len(QUESTIONS))])
    for i, output in enumerate(outputs):
        check(output, constraint(i))
    # the constrained answers end where their grammar does: stop, not the length limit
    assert [o.finish_reason for o in outputs[:3]] == ["stop"] * 3


def test_a_mixed_batch_equals_each_request_alone(llm):
    together = llm.chat([chat(q) for q in QUESTIONS], [params(i) for i in range(len(QUESTIONS))])
    for i, question in enumerate(QUESTIONS):
        alone = llm.chat(chat(question), params(i))[0]
        assert alone.token_ids == together[i].token_ids, question


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_preemption_chunked_prefill_and_async_scheduling_change_nothing(
    smollm2_dir, llm, async_scheduling
):
    conversations = [chat(q) for q in QUESTIONS] * 2
    expected = llm.chat(conversations, [params(i) for i in range(len(conversations))])
    # few KV blocks and a small token budget: prompts are chunked and requests preempted
    tight = dict(
        max_model_len=128,
        num_gpu_blocks_override=12,
        max_num_batched_tokens=64,
        max_num_seqs=8,
        reserve_output_kv=False,
    )
    with LLM(smollm2_dir, dtype="float32", async_scheduling=async_scheduling, **tight) as small:
        outputs = small.chat(conversations, [params(i) for i in range(len(conversations))])
        assert small.llm_engine.stats.num_preemptions > 0
    assert [o.token_ids for o in outputs] == [o.token_ids for o in expected]


def test_a_seeded_constrained_request_is_the_same_alone_and_in_a_batch(llm):
    sampled = [
        SamplingParams(temperature=0.9, seed=7 + i, max_tokens=40, structured_outputs=constraint(i))
        for i in range(len(QUESTIONS))
    ]
    together = llm.chat([chat(q) for q in QUESTIONS], sampled)
    for i, question in enumerate(QUESTIONS):
        check(together[i], constraint(i))
        assert llm.chat(chat(question), sampled[i])[0].token_ids == together[i].token_ids


def test_an_answer_cut_by_max_tokens_says_length(llm):
    output = llm.chat(chat(QUESTIONS[1]), params(1, max_tokens=5))[0]
    assert output.finish_reason == "length" and len(output.token_ids) == 5
    with pytest.raises(ValueError):
        json.loads(output.text)


def test_grammars_json_objects_pydantic_models_and_the_old_spelling(llm):
    pydantic = pytest.importorskip("pydantic")

    class Person(pydantic.BaseModel):
        name: str
        age: int

    question = chat("Describe a person.")
    lark = 'start: "The answer is " ("yes" | "no") "."'
    gbnf = 'root ::= "The answer is " ("yes" | "no") "."'
    by_lark, by_gbnf, by_object, by_model = (
        llm.chat(question, SamplingParams(temperature=0, max_tokens=40, structured_outputs=s))[0]
        for s in (
            {"grammar": lark},
            {"grammar": gbnf},
            {"json_object": True, "disable_any_whitespace": True},
            StructuredOutputsParams(json=Person, disable_any_whitespace=True),
        )
    )
    assert re.fullmatch(r"The answer is (yes|no)\.", by_lark.text)
    assert by_gbnf.token_ids == by_lark.token_ids
    if by_object.finish_reason == "stop":
        assert isinstance(json.loads(by_object.text), dict)
    else:
        assert by_object.text.startswith("{")
    if by_model.finish_reason == "stop":
        Person.model_validate_json(by_model.text)
    with pytest.warns(FutureWarning, match="guided_decoding is deprecated"):
        old = SamplingParams(temperature=0, max_tokens=40, guided_decoding={"grammar": lark})
    assert llm.chat(question, old)[0].token_ids == by_lark.token_ids


def test_a_structural_tag_constrains_only_its_tagged_sections(llm):
    tag = {
        "type": "structural_tag",
        "structures": [{"begin": "<answer>", "schema": {"type": "integer"}, "end": "</answer>"}],
        "triggers": ["<answer>"],
    }
    output = llm.chat(
        chat("What is 2 + 3? Put the number in <answer></answer>."),
        SamplingParams(temperature=0, max_tokens=40, structured_outputs={"structural_tag": tag}),
    )[0]
    for section in re.findall(r"<answer>(.*?)</answer>", output.text, re.S):
        assert re.fullmatch(r"-?\d+", section)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"regex": "(ab"}, "(?s)regex is invalid: .*unclosed group"),
        ({"json": {"type": "strin"}}, "json is invalid: .*strin"),
        ({"grammar": "start: undefined_rule"}, "grammar is invalid"),
        ({"json": '{"type": '}, "not valid JSON text"),
        ({"regex": DATE, "choice": ["a"]}, "exactly one of"),
        ({"choice": []}, "at least one string"),
        ({"json": {"type": "string"}, "backend": "xgrammar"}, "unknown structured outputs key"),
    ],
)
def test_a_bad_constraint_is_rejected_naming_the_problem(llm, spec, message):
    with pytest.raises(ValueError, match=message):
        llm.generate("hi", SamplingParams(structured_outputs=spec))


def test_a_rejected_request_leaves_the_others_running(llm):
    engine = llm.llm_engine
    engine.add_request("good", "Say yes.", params(2))
    with pytest.raises(RequestRejected) as rejected:
        engine.add_request("bad", "hi", SamplingParams(structured_outputs={"regex": "(ab"}))
    assert rejected.value.request_id == "bad"
    done = []
    while engine.has_unfinished():
        done += engine.step()
    assert [o.request_id for o in done] == ["good"] and done[0].text in ("yes", "no")


def test_a_backend_other_than_llguidance_is_a_clear_error(smollm2_dir):
    with pytest.raises(ValueError, match="backend 'xgrammar' is not supported; accepted"):
        LLM(smollm2_dir, structured_outputs_config={"backend": "xgrammar"})


def test_each_constraint_compiles_once(llm):
    compiler = llm.llm_engine._builder._grammars
    llm.chat([chat(q) for q in QUESTIONS[:2]] * 4, [params(0), params(1)] * 4)
    cached = len(compiler._compiled)
    llm.chat([chat(q) for q in QUESTIONS[:2]] * 4, [params(0), params(1)] * 4)
    assert len(compiler._compiled) == cached
