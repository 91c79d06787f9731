"""Resumable writes whose rows come back in any order, each carrying its input row number:
shards of consecutive rows, the manifest of a local write, and a rerun asked only for the
rows not committed."""

from __future__ import annotations

import pyarrow as pa
import pytest

from llmbatch import data
from llmbatch.data.checkpoint import Manifest
from llmbatch.data.files import OutputFolder
from llmbatch.data.numbered_writes import ROW_NUMBER, write_numbered

TOTAL = 20


def numbered(start: int, stop: int) -> pa.Table:
    rows = range(start, stop)
    return pa.table({"value": [f"row {i}" for i in rows], ROW_NUMBER: list(rows)})


def shuffled_blocks(runs, fail_after: int | None = None):
    """The rows of ``runs`` in blocks of three, last block first."""
    blocks = [
        numbered(start, min(start + 3, stop))
        for run_start, stop in runs
        for start in range(run_start, stop, 3)
    ]
    for count, block in enumerate(reversed(blocks)):
        if fail_after is not None and count == fail_after:
            raise RuntimeError("the job died")
        yield block.take(list(reversed(range(block.num_rows))))


def test_rows_in_any_order_are_committed_in_input_order_and_resume(tmp_path):
    asked: list[list[tuple[int, int]]] = []

    def failing(runs):
        asked.append(runs)
        return shuffled_blocks(runs, fail_after=3)

    with pytest.raises(RuntimeError, match="the job died"):
        write_numbered(TOTAL, "job-1", failing, tmp_path, "parquet", max_rows_per_file=2)
    manifest = Manifest.load(OutputFolder.create(tmp_path))
    done = sorted(row for s in manifest.shards for row in range(s.start, s.stop))
    assert done == list(range(12, TOTAL))  # the last three blocks came first
    assert all(s.stop - s.start <= 2 for s in manifest.shards)

    def finishing(runs):
        asked.append(runs)
        return shuffled_blocks(runs)

    report = write_numbered(TOTAL, "job-1", finishing, tmp_path, "parquet", max_rows_per_file=2)
    assert asked[-1] == [(0, 12)]
    assert (report.rows_already_committed, report.rows_written) == (8, 12)
    rows = data.read_parquet(tmp_path).take_all()
    assert rows == [{"value": f"row {i}"} for i in range(TOTAL)]
    assert Manifest.load(OutputFolder.create(tmp_path)).complete


def test_rows_lost_by_the_processing_are_an_error(tmp_path):
    def losing(runs):
        yield numbered(0, 5)

    with pytest.raises(RuntimeError, match="gave back 5 of 20 rows"):
        write_numbered(TOTAL, "job-2", losing, tmp_path, "json")
