"""Rows asking for n > 1 answers get all of them, as list columns: nothing is dropped."""

from __future__ import annotations

import llmbatch.data as data
from llmbatch import SamplingParams
from llmbatch.llm import LLMProcessorConfig, build_llm_processor


def test_each_rows_n_answers_land_in_list_columns(smollm2_dir, engine_kwargs, reference_llm):
    def request(row: dict) -> dict:
        params = {"temperature": 1.0, "seed": 7, "max_tokens": 8, "n": row["n"]}
        params["detokenize"] = row["n"] != 2  # decoded by the detokenize stage instead
        return {"messages": [{"role": "user", "content": row["q"]}], "sampling_params": params}

    rows = [{"q": "Name a colour.", "n": 3}, {"q": "Name a fruit.", "n": 1}]
    rows += [{"q": "Name a city.", "n": 2}]
    config = LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs=engine_kwargs)
    seen = []

    def postprocess(row: dict) -> dict:
        seen.append(row["generated_text"])
        return row

    processor = build_llm_processor(config, preprocess=request, postprocess=postprocess)
    out = processor(data.from_items(rows)).take_all()
    assert [len(row["generated_text"]) for row in out] == [3, 1, 2]
    assert seen == [row["generated_text"] for row in out]
    for row in out:
        assert row["error"] is None
        assert len(row["generated_tokens"]) == len(row["finish_reason"]) == row["n"]
        assert row["num_generated_tokens"] == [len(t) for t in row["generated_tokens"]]
        params = SamplingParams(temperature=1.0, seed=7, max_tokens=8, n=row["n"])
        [expected] = reference_llm.chat([{"role": "user", "content": row["q"]}], params)
        assert row["generated_tokens"] == [c.token_ids for c in expected.outputs]
        assert row["generated_text"] == [c.text for c in expected.outputs]


def test_blocks_of_single_and_of_several_answers_are_all_written(
    smollm2_dir, engine_kwargs, tmp_path
):
    """A job whose n changes between blocks writes every answer: files of n = 1 blocks hold
    text, the others lists, and the folder reads back row by row as written."""

    def request(row: dict) -> dict:
        n = 1 if row["id"] < 2 else 2
        return {"prompt": "Hi", "sampling_params": {"temperature": 0.0, "max_tokens": 3, "n": n}}

    config = LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs=engine_kwargs, batch_size=2)
    with build_llm_processor(config, preprocess=request) as processor:
        processor(data.range(4)).write_parquet(tmp_path / "out")
    rows = sorted(data.read_parquet(tmp_path / "out").take_all(), key=lambda row: row["id"])
    assert [row["error"] for row in rows] == [None] * 4
    assert [type(row["generated_text"]) for row in rows] == [str, str, list, list]
    assert rows[2]["generated_text"] == [rows[0]["generated_text"]] * 2
