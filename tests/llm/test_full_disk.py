"""A disk that fills up while a job writes: the job stops with a clear error, the files already
committed stay whole, and once there is room the same write finishes the other rows. Run on a
real size-limited filesystem (a tmpfs mounted for the test; skipped where mounting is not
allowed)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import llmbatch.data as data
from llmbatch.data.checkpoint import Manifest
from llmbatch.data.files import DiskFullError, OutputFolder
from llmbatch.llm import LLMProcessorConfig, build_llm_processor

ENGINE = {"kv_cache_memory_bytes": 16 << 20, "max_model_len": 128, "max_num_seqs": 4}
NUM_ROWS = 16
ROOM_BYTES = 16 << 10


@pytest.fixture
def small_disk(tmp_path_factory) -> Path:
    """A 1 MiB tmpfs, mounted here for this test and unmounted after it."""
    mount_point = tmp_path_factory.mktemp("small-disk")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited filesystem here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def fill_leaving(disk: Path, room: int) -> Path:
    """A file taking all of the disk but ``room`` bytes."""
    stats = os.statvfs(disk)
    filler = disk / f"filler-{uuid.uuid4().hex}"
    filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - room))
    return filler


def request(row: dict) -> dict:
    return {
        "prompt": f"Count from {row['id']}:",
        "sampling_params": {"temperature": 0, "max_tokens": 3},
    }


def test_a_full_disk_stops_the_job_cleanly_and_the_rerun_finishes_it(smollm2_dir, small_disk):
    config = LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs=ENGINE, batch_size=2)
    out = small_disk / "out"
    with build_llm_processor(config, preprocess=request) as processor:
        expected = processor(data.range(NUM_ROWS)).take_all()
        filler = fill_leaving(small_disk, ROOM_BYTES)
        with pytest.raises(DiskFullError, match=r"the disk holding .* is full \(No space left"):
            processor(data.range(NUM_ROWS)).write_parquet(out)

        manifest = Manifest.load(OutputFolder.create(out))
        committed = manifest.committed_rows()
        assert 0 < committed < NUM_ROWS
        assert manifest.drop_damaged(OutputFolder.create(out)) == []
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
        assert [r["id"] for r in pq.read_table(out).to_pylist()] == list(range(committed))

        filler.unlink()
        processor(data.range(NUM_ROWS)).write_parquet(out)
        assert processor.summary().rows == NUM_ROWS - committed
    rows = pq.read_table(out).to_pylist()
    assert [row["id"] for row in rows] == list(range(NUM_ROWS))
    for row, reference in zip(rows, expected):
        assert row["generated_text"] == reference["generated_text"]


def test_a_plain_write_that_fills_the_disk_leaves_no_partial_file(small_disk):
    fill_leaving(small_disk, ROOM_BYTES)
    rows = data.range(200_000, override_num_blocks=4).map_batches(
        lambda batch: {"text": [f"row {i}" for i in batch["id"]]}
    )
    with pytest.raises(DiskFullError, match=r"file\(s\) were written whole"):
        rows.write_parquet(small_disk / "plain")
    leftovers = [p.name for p in (small_disk / "plain").iterdir() if p.name.startswith(".")]
    assert leftovers == []
