"""A job killed (SIGKILL) at any moment and run again ends with every row exactly once, as an
uninterrupted run writes it.

Each run is a real process killed for real: a chain of runs into one folder, each dying at its
own moment, then one that finishes. The processes are forked from a server that has imported
llmbatch and torch once (multiprocessing's forkserver), so a run costs the model load and the
rows, not the imports; the server is a fresh process, so no thread pool of the test process is
forked.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from llmbatch.data.checkpoint import CRASH_ENV, MANIFEST_NAME

NUM_ROWS = 8
# Each chain runs into one folder: every step is a run killed at one moment, then a last run
# finishes. "point:N" kills at the Nth visit of a named point within that run; "timed:load"
# right after the run claims the folder, while the model loads; "timed:rows" right after the run commits a shard.
# With batch_size 2 a full run commits 4 shards and saves the manifest 6 times (once when it
# claims the folder, once per shard, once when complete).
CHAINS = {
    "before_and_between_shards": [
        "job_start:1",
        "engine_loaded:1",
        "input_block:1",
        "output_block:2",
        "shard_before_rename:1",
        "manifest_before_write:3",
        "timed:rows",
    ],
    "around_commits": [
        "timed:load",
        "shard_renamed:2",
        "manifest_renamed:3",
        "output_block:1",
        "manifest_before_write:1",
        "shard_before_rename:1",
    ],
}
# Modules the runs import, loaded once by the fork server instead of by every run.
PRELOAD = [
    "torch",
    "accelerate",
    "sympy",
    "llmbatch.cli",
    "llmbatch.cli.job",
    "llmbatch.llm.processor",
    "llmbatch.engine.llm_engine",
    "llmbatch.layers.attention.torch_backend",
]


def _run_cli(job: str, crash_at: str, log: str) -> None:
    """A child process: `llmbatch run job`, its output in `log`."""
    from llmbatch.cli import main

    if crash_at:
        os.environ[CRASH_ENV] = crash_at
    with open(log, "wb") as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
    sys.exit(main(["run", job, "--no-progress"]))


@pytest.fixture(scope="module")
def runner():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)

    def start(job: Path, crash_at: str = "") -> tuple[multiprocessing.Process, Path]:
        log = job.with_suffix(f".{time.monotonic_ns()}.log")
        process = context.Process(target=_run_cli, args=(str(job), crash_at, str(log)))
        process.start()
        return process, log

    return start


def _finish(runner, job: Path, crash_at: str = "") -> tuple[int, str]:
    process, log = runner(job, crash_at)
    process.join(timeout=300)
    return process.exitcode, log.read_text()


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
                "engine_kwargs": {
                    "kv_cache_memory_bytes": 16 << 20,
                    "max_model_len": 128,
                    "max_num_seqs": 4,
                },
            },
            "prompt": {"user": "Say a word about {word}."},
            "sampling_params": {"temperature": 0, "max_tokens": 2},
            "output": {"path": str(out), "format": "parquet"},
        }
        job = base / f"{name}.yaml"
        job.write_text(yaml.safe_dump(spec))
        return job, out

    return make


@pytest.fixture(scope="module")
def reference(runner, job_factory) -> list[dict]:
    job, out = job_factory("reference")
    code, log = _finish(runner, job)
    assert code == 0, log
    rows = _rows(out)
    assert [row["id"] for row in rows] == list(range(NUM_ROWS))
    return rows


def _listed_shards(out: Path) -> int:
    try:
        return len(json.loads((out / MANIFEST_NAME).read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def _manifest_time(out: Path) -> int:
    try:
        return (out / MANIFEST_NAME).stat().st_mtime_ns
    except OSError:
        return 0


def _kill_when(runner, job: Path, out: Path, moment: str) -> int:
    process, _ = runner(job)
    if moment == "load":
        # as soon as the run has claimed the folder (its first manifest write), while the model
        # loads: well before any row is committed, which later steps of the chain need
        claimed = _manifest_time(out)
        deadline = time.monotonic() + 120
        while process.is_alive() and _manifest_time(out) <= claimed:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    else:
        listed = _listed_shards(out)
        deadline = time.monotonic() + 120
        while process.is_alive() and _listed_shards(out) <= listed:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    process.kill()
    process.join()
    return process.exitcode


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_kills_at_many_moments_then_resume(runner, job_factory, reference, chain):
    job, out = job_factory(chain)
    for step in CHAINS[chain]:
        kind, _, detail = step.partition(":")
        if kind == "timed":
            code, log = _kill_when(runner, job, out, detail), ""
        else:
            code, log = _finish(runner, job, step)
        assert code == -signal.SIGKILL, (step, log)
    code, log = _finish(runner, job)
    assert code == 0, log
    assert _rows(out) == reference
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_rerun_of_a_finished_job_skips_every_row(runner, job_factory, reference):
    job, out = job_factory("reference")
    code, log = _finish(runner, job)
    assert code == 0, log
    assert "wrote 0 rows to" in log and "8 were already there" in log
    assert _rows(out) == reference
