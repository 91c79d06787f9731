"""`llmbatch run --dashboard` killed (SIGKILL) mid-job, then run again: the report covers both
runs as segments of one timeline, and `llmbatch report` rebuilds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from llmbatch.cli import main
from llmbatch.data.checkpoint import CRASH_ENV
from llmbatch.monitor import REPORT_NAME, TIMELINE_NAME
from llmbatch.monitor.timeline import read_timeline

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[2] / "src"
NUM_ROWS = 12


def run_cli(args: list[str], crash_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "llmbatch.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_report_covers_a_killed_run_and_its_resume(tmp_path, smollm2_dir):
    csv = tmp_path / "rows.csv"
    csv.write_text("id,word\n" + "".join(f"{i},item {i}\n" for i in range(NUM_ROWS)))
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "input": {"path": str(csv)},
                "processor": {
                    "model_source": smollm2_dir,
                    "batch_size": 4,
                    "engine_kwargs": {"kv_cache_memory_bytes": 16 << 20, "max_model_len": 128},
                },
                "prompt": {"user": "Say a word about {word}."},
                "sampling_params": {"temperature": 0, "max_tokens": 3},
                "output": {"path": str(out)},
            }
        )
    )
    killed = run_cli(["run", str(job), "--dashboard"], crash_at="output_block:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stderr.count("llmbatch dashboard: http://127.0.0.1:") == 1
    bars = [line for line in killed.stderr.replace("\r", "\n").splitlines() if "%|" in line]
    assert bars and all(line.startswith("llmbatch:") for line in bars)  # one bar, no library's

    finished = run_cli(["run", str(job), "--no-progress"])
    assert finished.returncode == 0, finished.stderr
    rows = [r for f in sorted(out.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert [r["id"] for r in rows] == list(range(NUM_ROWS))

    first, second = read_timeline(str(out / TIMELINE_NAME)).segments
    assert (first.status, second.status) == ("killed", "finished")
    assert first.committed_before == 0 and second.committed_before == 4
    assert second.committed_before + second.last.counts.rows == NUM_ROWS
    assert second.engine_config["max_model_len"] == 128
    report = (out / REPORT_NAME).read_text()
    assert "run 1 (killed)" in report and "run 2 (finished)" in report

    (out / REPORT_NAME).unlink()
    assert main(["report", str(out)]) == 0
    assert "run 2 (finished)" in (out / REPORT_NAME).read_text()
