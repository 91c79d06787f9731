"""The tutorial's code, imports changed, on the real SmolLM2: every row is the engine's own
answer for its prompt, in input order, with the original columns kept."""

from __future__ import annotations

from pathlib import Path

import pyarrow.csv as pacsv
import pytest

import llmbatch.data as data
from llmbatch import SamplingParams
from llmbatch.llm import build_llm_processor, vLLMEngineProcessorConfig

NUM_ROWS = 5
MAX_TOKENS = 6
GENERATION_COLUMNS = [
    "prompt",
    "generated_text",
    "generated_tokens",
    "num_input_tokens",
    "num_generated_tokens",
    "finish_reason",
    "time_taken_llm",
]


@pytest.fixture(scope="module")
def processor(smollm2_dir: str, engine_kwargs, tutorial_messages):
    config = vLLMEngineProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs=engine_kwargs,
        batch_size=256,
        accelerator_type="L4",
        concurrency=4,
    )

    # The tutorial's functions; a per-row seed makes temperature 0.3 reproducible.
    def preprocess(row):
        return dict(
            messages=tutorial_messages(row),
            sampling_params=dict(
                temperature=0.3, max_tokens=MAX_TOKENS, detokenize=False, seed=row["Index"]
            ),
        )

    def postprocess(row):
        return {"resp": row["generated_text"], **row}

    with build_llm_processor(config, preprocess=preprocess, postprocess=postprocess) as processor:
        yield processor


def run_tutorial(processor, source: str):
    ds = data.read_csv(source)
    ds = ds.limit(100000).repartition(num_blocks=128)
    return processor(ds.limit(NUM_ROWS)).materialize()


def source_rows(path: Path) -> list[dict]:
    return pacsv.read_csv(path).slice(0, NUM_ROWS).to_pylist()


def assert_rows_are_the_engines(rows, originals, reference_llm, tutorial_messages) -> None:
    expected = reference_llm.chat(
        [tutorial_messages(row) for row in originals],
        [
            SamplingParams(temperature=0.3, max_tokens=MAX_TOKENS, seed=r["Index"])
            for r in originals
        ],
    )
    assert len(rows) == len(originals)
    for row, original, output in zip(rows, originals, expected):
        assert {k: row[k] for k in original} == original
        assert row["error"] is None
        assert row["prompt"] == output.prompt
        assert row["generated_tokens"] == output.token_ids
        assert row["generated_text"] == row["resp"] == output.text
        assert row["num_input_tokens"] == output.num_prompt_tokens
        assert row["num_generated_tokens"] == len(output.token_ids)
        assert row["finish_reason"] == output.finish_reason
        assert row["time_taken_llm"] > 0
        assert row["messages"] == tutorial_messages(original)
        assert row["sampling_params"]["seed"] == original["Index"]


def test_the_tutorial_on_a_csv_file(processor, customers_csv, reference_llm, tutorial_messages):
    processed = run_tutorial(processor, str(customers_csv))
    rows = processed.take_all()
    assert_rows_are_the_engines(rows, source_rows(customers_csv), reference_llm, tutorial_messages)
    assert processed.take(3) == rows[:3]
    assert set(GENERATION_COLUMNS) <= set(processed.columns())


def test_the_tutorial_on_a_csv_served_over_http(
    processor, customers_csv, http_folder_url, reference_llm, tutorial_messages
):
    processed = run_tutorial(processor, f"{http_folder_url}/{customers_csv.name}")
    rows = processed.take_all()
    assert_rows_are_the_engines(rows, source_rows(customers_csv), reference_llm, tutorial_messages)


def test_the_summary_adds_up_the_run(processor, customers_csv):
    rows = run_tutorial(processor, str(customers_csv)).take_all()
    summary = processor.summary()
    assert summary.finished
    assert (summary.rows, summary.error_rows, summary.errors_by_kind) == (NUM_ROWS, 0, {})
    assert summary.input_tokens == sum(r["num_input_tokens"] for r in rows)
    assert summary.output_tokens == sum(r["num_generated_tokens"] for r in rows)
    assert 0 <= summary.cached_input_tokens < summary.input_tokens
    assert summary.rows_per_s > 0 and summary.output_tokens_per_s > 0
    assert f"rows             {NUM_ROWS}" in summary.format()
