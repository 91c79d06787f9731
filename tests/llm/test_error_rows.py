"""Rows are independent requests: a bad row becomes an error row that says what went wrong while
the job and the good rows go on, and a row's own options (a raw prompt, logprobs) hold for it."""

from __future__ import annotations

import re

import pytest

import llmbatch.data as data
from llmbatch import SamplingParams
from llmbatch.llm import LLMProcessorConfig, build_llm_processor

MAX_TOKENS = 4
TOO_LONG = "word " * 5000  # more tokens than max_model_len=4096


def request_of(row: dict) -> dict:
    """Each row's `case` says how its request goes wrong, if it does."""
    case = row["case"]
    if case == "preprocess raises":
        raise KeyError("Subscription Date")
    params = {"temperature": 0.0, "max_tokens": MAX_TOKENS}
    if case == "invalid sampling params":
        params["temperature"] = -1.0
    if case == "unknown sampling param":
        params["max_new_tokens"] = 5
    if case == "logprobs":
        params["logprobs"] = 2
    content = TOO_LONG if case == "prompt too long" else f"Say {row['word']}."
    if case == "raw prompt":
        return {"prompt": f"The word is {row['word']}", "sampling_params": params}
    if case == "messages without content":
        return {"messages": [{"role": "user"}], "sampling_params": params}
    return {"messages": [{"role": "user", "content": content}], "sampling_params": params}


def postprocess(row: dict) -> dict:
    if row["case"] == "postprocess raises":
        raise ValueError(f"cannot use {row['generated_text']!r}")
    return {"answer": row["generated_text"], **row}


CASES = [  # (case, what its error must match: a regex, or None for a good row)
    ("good", None),
    ("preprocess raises", r"preprocess: KeyError: .*no column 'Subscription Date'"),
    ("invalid sampling params", r"sampling_params: ValueError: temperature must be >= 0"),
    ("good", None),
    (
        "prompt too long",
        r"engine: RequestRejected: the prompt has \d+ tokens, more than max_model_len",
    ),
    ("unknown sampling param", r"sampling_params: ValueError: unknown sampling parameter\(s\)"),
    ("messages without content", r"chat_template: ValueError: messages\[0\] needs a str 'role'"),
    ("postprocess raises", r"postprocess: ValueError: cannot use"),
    ("raw prompt", None),
    ("logprobs", None),
    ("good", None),
]


@pytest.fixture(scope="module")
def result(smollm2_dir: str, engine_kwargs):
    config = LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs=engine_kwargs, batch_size=4)
    items = [{"id": i, "case": case, "word": f"w{i}"} for i, (case, _) in enumerate(CASES)]
    with build_llm_processor(config, preprocess=request_of, postprocess=postprocess) as processor:
        rows = processor(data.from_items(items)).take_all()
        yield items, rows, processor.summary()


def test_every_row_leaves_once_in_input_order(result):
    items, rows, _ = result
    assert [row["id"] for row in rows] == [item["id"] for item in items]


def test_each_error_row_names_its_stage_the_exception_and_the_cause(result):
    _, rows, _ = result
    for row, (case, expected) in zip(rows, CASES):
        if expected is None:
            assert row["error"] is None, case
        else:
            assert re.match(expected, row["error"]), (case, row["error"])


def test_error_rows_keep_their_original_columns(result):
    items, rows, _ = result
    for row, item in zip(rows, items):
        assert {k: row[k] for k in item} == item
    by_case = {row["case"]: row for row in rows}
    assert by_case["preprocess raises"]["messages"] is None
    assert by_case["postprocess raises"]["generated_text"]  # the engine's result is kept too


def test_good_rows_are_the_engines_answers(result, reference_llm):
    _, rows, _ = result
    good = [row for row in rows if row["error"] is None]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    chat_rows = [row for row in good if row["case"] in ("good", "logprobs")]
    expected = reference_llm.chat([row["messages"] for row in chat_rows], params)
    for row, output in zip(chat_rows, expected):
        assert row["answer"] == row["generated_text"] == output.text
        assert row["generated_tokens"] == output.token_ids
    [raw] = [row for row in good if row["case"] == "raw prompt"]
    [output] = reference_llm.generate(raw["prompt"], params)
    assert raw["prompt"] == "The word is w8"
    assert raw["generated_tokens"] == output.token_ids


def test_the_summary_counts_error_rows_by_stage(result):
    _, _, summary = result
    assert summary.rows == len(CASES)
    assert summary.errors_by_kind == {
        "preprocess": 1,
        "sampling_params": 2,
        "engine": 1,
        "chat_template": 1,
        "postprocess": 1,
    }
    assert summary.error_rows == 6
    assert summary.rows - summary.error_rows == 5


def test_logprobs_asked_for_by_a_row_come_in_its_logprobs_column(result, reference_llm):
    _, rows, _ = result
    [row] = [row for row in rows if row["case"] == "logprobs"]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=2)
    [output] = reference_llm.chat(row["messages"], params)
    assert len(row["logprobs"]) == row["num_generated_tokens"]
    for step, expected, sampled in zip(row["logprobs"], output.logprobs, row["generated_tokens"]):
        assert {entry["token_id"] for entry in step} == set(expected) >= {sampled}
        # Same numbers up to float rounding: the rows shared a batch with different neighbours.
        expected_values = {token: entry.logprob for token, entry in expected.items()}
        assert {e["token_id"]: e["logprob"] for e in step} == pytest.approx(
            expected_values, abs=1e-4
        )
        assert {e["token_id"]: e["rank"] for e in step} == {t: e.rank for t, e in expected.items()}
        assert all(e["decoded_token"] is not None for e in step)
    assert all(row.get("logprobs") is None for row in rows if row["case"] != "logprobs")
