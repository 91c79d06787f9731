"""Ctrl-C on `llmbatch run`: exit status 130, the committed rows stay, and running the same
command again finishes with every row once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from llmbatch.data.checkpoint import MANIFEST_NAME

NUM_ROWS = 24


def _listed_rows(out: Path) -> int:
    try:
        shards = json.loads((out / MANIFEST_NAME).read_text())["shards"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(shard["stop"] - shard["start"] for shard in shards)


def test_ctrl_c_keeps_committed_rows_and_a_rerun_finishes(tmp_path, smollm2_dir):
    csv = tmp_path / "rows.csv"
    csv.write_text("id,word\n" + "".join(f"{i},item {i}\n" for i in range(NUM_ROWS)))
    out = tmp_path / "out"
    spec = {
        "input": {"path": str(csv)},
        "processor": {
            "model_source": smollm2_dir,
            "batch_size": 2,
            # two rows at a time: the first shard commits with most rows still to run, so the
            # interrupt (sent as soon as it is seen) always lands mid-run
            "engine_kwargs": {
                "kv_cache_memory_bytes": 16 << 20,
                "max_model_len": 128,
                "max_num_seqs": 2,
            },
        },
        "prompt": {"user": "Say a word about {word}."},
        "sampling_params": {"temperature": 0, "max_tokens": 2},
        "output": {"path": str(out), "format": "parquet"},
    }
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "llmbatch.cli", "run", str(job), "--no-progress"]

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while process.poll() is None and _listed_rows(out) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()
    assert "interrupted" in err.decode() and "Run the same command again" in err.decode()
    committed = _listed_rows(out)
    assert 0 < committed < NUM_ROWS

    rerun = subprocess.run(command, capture_output=True, timeout=300, env=os.environ)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert f"{committed} were already there" in rerun.stdout.decode()
    files = sorted(out.glob("*.parquet"))
    ids = [row["id"] for f in files for row in pq.read_table(f).to_pylist()]
    assert ids == list(range(NUM_ROWS))
