"""One row's types never end a job: a request Arrow could not store with the others, or a
postprocess value whose type clashes with its column, makes an error row naming what is wrong;
requests vLLM accepts in another form are put in the form every row shares."""

from __future__ import annotations

import pytest

import llmbatch.data as data
from llmbatch import SamplingParams
from llmbatch.llm import LLMProcessorConfig, build_llm_processor
from llmbatch.llm.row_checks import column_or_conflicts, rows_to_checked_table

ENGINE = {"kv_cache_memory_bytes": 16 << 20, "max_model_len": 128, "max_num_seqs": 4}
PARAMS = {"temperature": 0.0, "max_tokens": 3}
WORDS = ["apple", "river", "seven", "stone", "cloud", "tiger"]


@pytest.fixture(scope="module")
def config(smollm2_dir):
    return LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs=ENGINE, batch_size=2)


def expected_texts(reference_llm, words):
    outputs = reference_llm.chat(
        [[{"role": "user", "content": f"Say {w}."}] for w in words],
        SamplingParams(temperature=0.0, max_tokens=3),
    )
    return {w: out.text for w, out in zip(words, outputs)}


def test_a_content_of_the_wrong_type_is_an_error_row_and_the_job_goes_on(config, reference_llm):
    def request(row):
        content = 5 if row["word"] == "seven" else f"Say {row['word']}."
        if row["word"] == "river":  # parts vLLM accepts: the text of a text-only model
            content = [{"type": "text", "text": "Say"}, {"type": "text", "text": "river."}]
        return {"messages": [{"role": "user", "content": content}], "sampling_params": PARAMS}

    with build_llm_processor(config, preprocess=request) as processor:
        rows = processor(data.from_items([{"word": w} for w in WORDS])).take_all()
    assert [row["word"] for row in rows] == WORDS
    bad = rows[2]
    assert bad["error"].startswith("messages: RequestError: messages[0]['content'] is int (5)")
    assert bad["generated_text"] is None
    good = [w for w in WORDS if w not in ("seven", "river")]
    expected = expected_texts(reference_llm, good)
    for row in rows:
        if row["word"] in expected:
            assert row["error"] is None
            assert row["generated_text"] == expected[row["word"]]
    river = reference_llm.chat(
        [[{"role": "user", "content": "Say\nriver."}]], SamplingParams(**PARAMS)
    )[0]
    assert rows[1]["error"] is None and rows[1]["generated_text"] == river.text


def test_sampling_params_in_forms_vllm_accepts_share_a_column(config):
    def request(row):
        params = dict(PARAMS)
        params["stop"] = "\n" if row["id"] % 2 else ["\n", "."]
        if row["id"] == 3:
            params["max_tokens"] = "three"
        return {"prompt": f"Count to {row['id']}:", "sampling_params": params}

    with build_llm_processor(config, preprocess=request) as processor:
        rows = processor(data.range(5)).take_all()
    assert [row["error"] is None for row in rows] == [True, True, True, False, True]
    assert rows[3]["error"].startswith("sampling_params: ")
    assert "max_tokens" in rows[3]["error"]
    assert rows[1]["sampling_params"]["stop"] == ["\n"]


def test_a_postprocess_value_of_another_type_makes_an_error_row(config):
    def request(row):
        return {"prompt": f"Number {row['id']}:", "sampling_params": PARAMS}

    def postprocess(row):
        score = "high" if row["id"] == 2 else row["id"] * 10
        label = row["id"] if row["id"] >= 4 else f"row {row['id']}"  # the whole last block
        return {"id": row["id"], "score": score, "label": label, "text": row["generated_text"]}

    with build_llm_processor(config, preprocess=request, postprocess=postprocess) as processor:
        rows = processor(data.range(6)).take_all()
    assert [row["id"] for row in rows] == list(range(6))
    assert [row["error"] is None for row in rows] == [True, True, False, True, False, False]
    assert rows[2]["error"] == (
        "postprocess: TypeError: column 'score' holds a str in this row and a int in the others"
    )
    assert rows[2]["score"] is None and rows[2]["label"] == "row 2" and rows[2]["text"]
    for row in rows[4:]:
        assert "column 'label' holds int64 in this row and string in earlier rows" in row["error"]
        assert row["label"] is None and row["score"] == row["id"] * 10
    assert [row["score"] for row in rows if row["error"] is None] == [0, 10, 30]


def test_conflicting_values_are_found_row_by_row():
    array, conflicts = column_or_conflicts("v", [1, "a", 2, None, 3.5, [1]])
    assert array.to_pylist() == [1.0, None, 2.0, None, 3.5, None]
    assert conflicts == {
        1: "column 'v' holds a str in this row and a int in the others",
        5: "column 'v' holds a list in this row and a int in the others",
    }
    nested, conflicts = column_or_conflicts("p", [{"stop": ["x"]}, {"stop": "y"}, {"stop": ["z"]}])
    assert list(conflicts) == [1] and "dict of Arrow type struct<stop: string>" in conflicts[1]
    table = rows_to_checked_table([{"a": 1}, {"a": "x", "error": None}], "postprocess")
    assert table.column("error").to_pylist()[1].startswith("postprocess: TypeError: column 'a'")
