"""Continuous feeding: the engine takes new rows while a long row runs (batch_size is no
barrier), rows come out in input order, and a slow head row holds back only a bounded window."""

from __future__ import annotations

import pytest

import llmbatch.data as data
from llmbatch.llm import LLMProcessorConfig, Superseded, build_llm_processor

HEAD_TOKENS = 12
TAIL_TOKENS = 2
NUM_ROWS = 8
MAX_PENDING = 4


def rows(head_tokens: int = HEAD_TOKENS, tail_tokens: int = TAIL_TOKENS) -> list[dict]:
    return [
        {
            "id": i,
            "prompt": f"Count from {i} to ten:",
            "sampling_params": {
                "temperature": 0.0,
                "max_tokens": head_tokens if i == 0 else tail_tokens,
                "ignore_eos": True,
            },
        }
        for i in range(NUM_ROWS)
    ]


@pytest.fixture(scope="module")
def processor(smollm2_dir: str, engine_kwargs):
    config = LLMProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs=engine_kwargs,
        batch_size=1,
        max_pending_requests=MAX_PENDING,
        max_concurrent_batches=1,
    )
    with build_llm_processor(config) as processor:
        yield processor


@pytest.fixture(scope="module")
def run(processor):
    seen: list[tuple[list[int], int]] = []

    def observe(tables):
        for table in tables:
            seen.append((table.column("id").to_pylist(), processor.engine.stats.num_requests))
            yield table

    output = processor(data.from_items(rows())).transform(observe, "observe").take_all()
    return output, seen, processor.engine.stats


def test_rows_come_out_in_input_order_in_batch_size_tables(run):
    output, seen, _ = run
    assert [row["id"] for row in output] == list(range(NUM_ROWS))
    assert [ids for ids, _ in seen] == [[i] for i in range(NUM_ROWS)]
    assert [row["num_generated_tokens"] for row in output] == [HEAD_TOKENS] + [TAIL_TOKENS] * 7


def test_the_engine_takes_more_rows_than_one_batch_while_the_head_runs(run):
    _, seen, stats = run
    _, requests_when_head_done = seen[0]
    assert requests_when_head_done > 1
    # One batch (one row) at a time would take a step per generated token: 12 + 7 * 2.
    assert stats.num_steps < HEAD_TOKENS + (NUM_ROWS - 1) * TAIL_TOKENS


def test_a_slow_head_row_holds_back_a_bounded_window(run):
    _, seen, _ = run
    _, requests_when_head_done = seen[0]
    # In the engine: max_pending_requests; waiting: max_concurrent_batches * batch_size; plus
    # the table being read.
    assert requests_when_head_done <= MAX_PENDING + 1 + 1 < NUM_ROWS


def test_without_postprocess_rows_carry_the_inputs_and_generation_columns(run):
    output, _, _ = run
    assert list(output[0]) == [
        "id",
        "prompt",
        "sampling_params",
        "generated_text",
        "generated_tokens",
        "num_input_tokens",
        "num_generated_tokens",
        "finish_reason",
        "time_taken_llm",
        "error",
    ]
    assert all(row["error"] is None and row["finish_reason"] == "length" for row in output)


def test_stopping_early_leaves_no_request_behind(processor, run):
    # A short head row: when it comes out, the longer rows behind it are still running.
    processed = processor(data.from_items(rows(head_tokens=TAIL_TOKENS, tail_tokens=HEAD_TOKENS)))
    assert [row["id"] for row in processed.take(1)] == [0]
    assert not processor.engine.has_unfinished()
    assert [row["id"] for row in processed.take_all()] == list(range(NUM_ROWS))


def test_a_new_run_takes_over_from_one_still_in_progress(processor, run):
    expected, _, _ = run
    first = processor(data.from_items(rows())).iter_rows()
    assert next(first)["id"] == 0
    second = processor(data.from_items(rows())).take_all()
    assert [row["generated_tokens"] for row in second] == [
        row["generated_tokens"] for row in expected
    ]
    with pytest.raises(Superseded, match="consume one processor output at a time"):
        list(first)
