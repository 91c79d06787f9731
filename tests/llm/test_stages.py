"""The stages one at a time, on Arrow tables, with the real SmolLM2 tokenizer and no engine."""

from __future__ import annotations

import pyarrow as pa
import pytest
from transformers import AutoTokenizer

from llmbatch.llm.columns import to_arrow
from llmbatch.llm.summary import RunStats
from llmbatch.llm.tokenizer_stages import ChatTemplateStage, DetokenizeStage
from llmbatch.llm.user_stages import OutputStage, PreprocessStage


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: str):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def run_stage(stage, *tables: pa.Table) -> list[pa.Table]:
    return list(stage(iter(tables)))


def test_preprocess_cuts_tables_to_batch_size_and_merges_its_columns():
    table = pa.table({"id": list(range(5)), "text": ["a", "b", "c", "d", "e"]})
    stage = PreprocessStage(lambda row: {"text": row["text"].upper(), "n": row["id"]}, 2)
    out = run_stage(stage, table)
    assert [t.num_rows for t in out] == [2, 2, 1]
    rows = [row for t in out for row in t.to_pylist()]
    assert rows[4] == {"id": 4, "text": "E", "n": 4, "error": None}


def test_preprocess_errors_keep_the_original_values_of_replaced_columns():
    def preprocess(row):
        if row["id"] == 1:
            raise RuntimeError("no")
        return {"text": "new"} if row["id"] == 0 else ["not", "a", "dict"]

    out = run_stage(
        PreprocessStage(preprocess, 8), pa.table({"id": [0, 1, 2], "text": list("abc")})
    )
    assert out[0].to_pylist() == [
        {"id": 0, "text": "new", "error": None},
        {"id": 1, "text": "b", "error": "preprocess: RuntimeError: no"},
        {
            "id": 2,
            "text": "c",
            "error": "preprocess: TypeError: preprocess must return a dict of columns, got list",
        },
    ]


def test_rows_that_arrive_with_an_error_pass_untouched():
    table = pa.table({"id": [0, 1], "error": [None, "engine: earlier failure"]})
    out = run_stage(PreprocessStage(lambda row: {"seen": True}, 8), table)
    assert out[0].to_pylist() == [
        {"id": 0, "error": None, "seen": True},
        {"id": 1, "error": "engine: earlier failure", "seen": None},
    ]


def test_an_error_column_of_another_type_is_refused():
    with pytest.raises(TypeError, match="rename that column first"):
        run_stage(PreprocessStage(None, 8), pa.table({"error": [1, 2]}))


def test_without_the_chat_template_rows_need_a_prompt(tokenizer):
    table = pa.table(
        {
            "prompt": ["given", None, None],
            "messages": [None, [{"role": "user", "content": "hi"}], None],
        }
    )
    [out] = run_stage(ChatTemplateStage(lambda: tokenizer, apply=False, chat_template=None), table)
    assert out.column("prompt").to_pylist() == ["given", None, None]
    errors = out.column("error").to_pylist()
    assert errors[0] is None
    assert "apply_chat_template is off, so give 'prompt'" in errors[1]
    assert "return 'messages' or 'prompt' from preprocess" in errors[2]


def test_the_chat_template_adds_the_generation_prompt(tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    [out] = run_stage(
        ChatTemplateStage(lambda: tokenizer, apply=True, chat_template=None),
        pa.table({"messages": [messages]}),
    )
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert out.column("prompt").to_pylist() == [expected]
    assert expected.endswith("<|im_start|>assistant\n")


def test_detokenize_fills_only_rows_left_undecoded(tokenizer):
    ids = tokenizer.encode("Hello there") + [tokenizer.eos_token_id]
    table = pa.table(
        {
            "generated_text": [None, "from the engine", None],
            "generated_tokens": [ids, ids, ids],
            "sampling_params": [None, None, {"skip_special_tokens": False}],
        }
    )
    [out] = run_stage(DetokenizeStage(lambda: tokenizer), table)
    assert out.column("generated_text").to_pylist() == [
        "Hello there",
        "from the engine",
        "Hello there<|im_end|>",
    ]


def test_output_stage_puts_error_last_and_counts_errors_by_stage():
    stats = RunStats()

    def postprocess(row):
        if row["id"] == 1:
            raise KeyError("resp")
        return {"id": row["id"], "answer": "ok"}

    table = pa.table({"id": [0, 1, 2], "error": [None, None, "engine: rejected"], "x": [1, 2, 3]})
    [out] = run_stage(OutputStage(postprocess, lambda: stats), table)
    assert out.column_names[-1] == "error"
    assert out.to_pylist() == [
        {"id": 0, "answer": "ok", "x": None, "error": None},
        {"id": 1, "answer": None, "x": 2, "error": "postprocess: KeyError: 'resp'"},
        {"id": 2, "answer": None, "x": 3, "error": "engine: rejected"},
    ]
    summary = stats.summary()
    assert (summary.rows, summary.errors_by_kind, summary.finished) == (
        3,
        {"postprocess": 1, "engine": 1},
        True,
    )


def test_values_arrow_cannot_store_together_name_their_column():
    with pytest.raises(TypeError, match="column 'score' holds values Arrow cannot store together"):
        to_arrow("score", [1, "high"])
