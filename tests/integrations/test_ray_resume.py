"""The Ray path resumes too: a processor over a Ray Dataset written with llmbatch's writers
commits shards with the manifest of a local write; its process SIGKILLed mid-write and run
again, it processes only the missing rows, and every row ends up written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

import llmbatch.data as data  # noqa: E402
from llmbatch._fixtures import customers  # noqa: E402
from llmbatch.data.checkpoint import CRASH_ENV, MANIFEST_NAME, Manifest  # noqa: E402
from llmbatch.data.files import OutputFolder  # noqa: E402
from llmbatch.llm import LLMProcessorConfig, build_llm_processor  # noqa: E402

pytestmark = pytest.mark.slow

JOB = Path(__file__).with_name("ray_resumable_job.py")
SRC = Path(__file__).resolve().parents[2] / "src"
NUM_ROWS = 10


def run_job(model: str, csv: Path, out: Path, crash_at: str | None = None):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
    }
    env.pop(CRASH_ENV, None)
    if crash_at is not None:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, str(JOB), model, str(csv), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_a_killed_ray_job_resumes_with_only_the_missing_rows(smollm2_dir, tmp_path):
    csv = tmp_path / "customers.csv"
    customers.write_customers_csv(str(csv), num_rows=NUM_ROWS, seed=11)
    out = tmp_path / "out"

    killed = run_job(smollm2_dir, csv, out, crash_at="shard_renamed:3")
    assert killed.returncode == -9, killed.stderr[-3000:]
    manifest = Manifest.load(OutputFolder.create(out))
    assert len(manifest.shards) == 2 and not manifest.complete
    committed = manifest.committed_rows()
    assert 0 < committed < NUM_ROWS

    finished = run_job(smollm2_dir, csv, out)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report["rows_already_committed"] == committed
    assert report["rows_written"] == NUM_ROWS - committed
    assert report["total_rows"] == NUM_ROWS

    rows = data.read_parquet(out).take_all()
    assert [row["Index"] for row in rows] == list(range(1, NUM_ROWS + 1))
    assert (out / MANIFEST_NAME).exists()
    assert Manifest.load(OutputFolder.create(out)).complete

    def postprocess(row):
        return {"Index": row["Index"], "answer": row["generated_text"]}

    config = LLMProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs={"kv_cache_memory_bytes": 16 << 20, "max_model_len": 128, "device": "cpu"},
        batch_size=2,
    )
    sys.path.insert(0, str(JOB.parent))
    from ray_resumable_job import preprocess

    local = build_llm_processor(config, preprocess=preprocess, postprocess=postprocess)
    expected = local(data.read_csv(csv)).take_all()
    assert [row["answer"] for row in rows] == [row["answer"] for row in expected]
