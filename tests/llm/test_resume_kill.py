"""A job killed (SIGKILL) at any moment and run again ends with every row exactly once, as an
uninterrupted run writes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

NUM_ROWS = 12
# (named point, hit number): while loading, before and inside shards and manifest writes.
CRASH_POINTS = [
    ("job_start", 1),
    ("engine_loaded", 1),
    ("input_block", 1),
    ("output_block", 1),
    ("output_block", 3),
    ("shard_before_rename", 1),
    ("shard_before_rename", 4),
    ("shard_renamed", 1),
    ("shard_renamed", 5),
    ("manifest_before_write", 3),
    ("manifest_renamed", 2),
    ("manifest_renamed", 6),
]


def _run(job: Path, env_extra: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, **env_extra}
    command = [sys.executable, "-m", "llmbatch.cli", "run", str(job), "--no-progress"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(job: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    process = _run(job, env_extra or {})
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _rows(folder: Path) -> list[dict]:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".parquet")
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    for row in rows:
        row.pop("time_taken_llm")
    return rows


@pytest.fixture(scope="module")
def job_factory(tmp_path_factory, smollm2_dir):
    base = tmp_path_factory.mktemp("kill")
    csv = base / "rows.csv"
    csv.write_text("id,word\n" + "".join(f"{i},item {i}\n" for i in range(NUM_ROWS)))

    def make(name: str) -> tuple[Path, Path]:
        out = base / name
        spec = {
            "input": {"path": str(csv)},
            "processor": {
                "model_source": smollm2_dir,
                "batch_size": 2,
                "engine_kwargs": {"kv_cache_memory_bytes": 64 << 20, "max_model_len": 256},
            },
            "prompt": {"user": "Say a word about {word}."},
            "sampling_params": {"temperature": 0, "max_tokens": 4},
            "output": {"path": str(out), "format": "parquet"},
        }
        job = base / f"{name}.yaml"
        job.write_text(yaml.safe_dump(spec))
        return job, out

    return make


@pytest.fixture(scope="module")
def reference(job_factory) -> list[dict]:
    job, out = job_factory("reference")
    result = _finish(job)
    assert result.returncode == 0, result.stderr.decode()
    rows = _rows(out)
    assert [row["id"] for row in rows] == list(range(NUM_ROWS))
    return rows


def test_kill_at_named_points_then_resume(job_factory, reference):
    for point, hit in CRASH_POINTS:
        job, out = job_factory(f"{point}_{hit}")
        killed = _finish(job, {"LLMBATCH_TEST_CRASH_AT": f"{point}:{hit}"})
        assert killed.returncode == -signal.SIGKILL, (point, hit, killed.stderr.decode())
        resumed = _finish(job)
        assert resumed.returncode == 0, (point, hit, resumed.stderr.decode())
        assert _rows(out) == reference, (point, hit)
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_kill_at_timed_moments_then_resume(job_factory, reference):
    for delay in (3.0, 6.0, 9.0):
        job, out = job_factory(f"timed_{delay}")
        process = _run(job, {})
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        resumed = _finish(job)
        assert resumed.returncode == 0, resumed.stderr.decode()
        assert _rows(out) == reference


def test_rerun_of_a_finished_job_skips_every_row(job_factory, reference):
    job, out = job_factory("reference")
    result = _finish(job)
    assert result.returncode == 0
    assert b"wrote 0 rows to" in result.stdout and b"12 were already there" in result.stdout
    assert _rows(out) == reference
