"""`retry_failed` fills in only the error rows of a finished output; a resumed run's progress
bar counts only the rows left to do."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import llmbatch.data as data
from llmbatch.cli.job import JobSpec, run_job
from llmbatch.llm import LLMProcessorConfig, build_llm_processor

ENGINE = {"kv_cache_memory_bytes": 16 << 20, "max_model_len": 96, "max_num_seqs": 4}
FAIL_ENV = "LLMBATCH_TEST_FAIL_IDS"


def _flaky_request(row):
    """Fails for the ids listed in the environment, as a flaky lookup would."""
    if str(row["id"]) in os.environ.get(FAIL_ENV, "").split(","):
        raise ConnectionError(f"lookup for {row['id']} timed out")
    return {
        "messages": [{"role": "user", "content": f"Name a {row['word']}"}],
        "sampling_params": {"temperature": 0, "max_tokens": 2},
    }


@pytest.fixture(scope="module")
def processor(smollm2_dir):
    config = LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs=ENGINE, batch_size=2)
    with build_llm_processor(config, preprocess=_flaky_request) as processor:
        yield processor


def _files(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        f.name: (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
        for f in sorted(folder.glob("*.parquet"))
    }


def _rows(folder: Path) -> list[dict]:
    rows = [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    for row in rows:
        row.pop("time_taken_llm")
    return rows


def test_retry_failed_fills_the_error_rows_and_leaves_good_files_alone(
    processor, tmp_path, monkeypatch
):
    rows = [{"id": i, "word": word} for i, word in enumerate("ab cd ef gh ij kl mn op".split())]
    processor(data.from_items(rows)).write_parquet(tmp_path / "clean")

    monkeypatch.setenv(FAIL_ENV, "1,6")
    out = tmp_path / "out"
    processor(data.from_items(rows)).write_parquet(out)
    failed = [row["id"] for row in _rows(out) if row["error"] is not None]
    assert failed == [1, 6]
    before = _files(out)

    monkeypatch.delenv(FAIL_ENV)
    processor(data.from_items(rows)).write_parquet(out, retry_failed=True)
    after = _files(out)
    assert _rows(out) == _rows(tmp_path / "clean")
    assert processor.summary().rows == 2
    rewritten = {name for name in before if after[name] != before[name]}
    assert rewritten == {"000000000000.parquet", "000000000006.parquet"}
    assert after.keys() == before.keys()


def _job(csv: Path, out: Path, model: str) -> JobSpec:
    return JobSpec.from_dict(
        {
            "input": {"path": str(csv)},
            "processor": {"model_source": model, "engine_kwargs": ENGINE, "batch_size": 2},
            "prompt": {"user": "Name a {word}"},
            "sampling_params": {"temperature": 0, "max_tokens": 2},
            "output": {"path": str(out), "format": "parquet"},
        }
    )


def test_a_resumed_runs_progress_bar_counts_only_the_rows_left(smollm2_dir, tmp_path, capsys):
    csv = tmp_path / "in.csv"
    csv.write_text("id,word\n" + "".join(f"{i},thing {i}\n" for i in range(6)))
    out = tmp_path / "out"
    first = run_job(_job(csv, out, smollm2_dir), show_progress=True)
    assert first.report.rows_written == 6
    assert "6/6" in capsys.readouterr().err
    # A file changed after it was written is redone on the next run: 2 rows of 6.
    (out / "000000000002.parquet").write_bytes(b"damaged")
    second = run_job(_job(csv, out, smollm2_dir), show_progress=True)
    assert second.report.rows_written == 2 and second.report.rows_already_committed == 4
    bar = capsys.readouterr().err
    assert "2/2" in bar and "/6" not in bar
    assert [row["id"] for row in _rows(out)] == list(range(6))
