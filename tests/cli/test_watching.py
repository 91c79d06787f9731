"""`run-batch --dashboard`: the dashboard's address is printed once, and the report and its
timeline end up next to the output file, where `llmbatch report` rebuilds the report."""

from __future__ import annotations

import json

import pytest

from llmbatch.cli import main
from llmbatch.monitor.timeline import read_timeline

pytestmark = pytest.mark.slow


def test_run_batch_keeps_its_report_next_to_the_output(tmp_path, smollm2_dir, capsys):
    requests = tmp_path / "requests.jsonl"
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": f"Say {i}."}], "max_tokens": 3},
        }
        for i in range(5)
    ]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = tmp_path / "results.jsonl"
    argv = ["run-batch", "-i", str(requests), "-o", str(output), "--model", smollm2_dir]
    argv += ["--max-model-len", "256", "--kv-cache-memory-bytes", str(16 << 20), "--no-progress"]
    assert main([*argv, "--dashboard"]) == 0
    assert capsys.readouterr().err.count("llmbatch dashboard: http://127.0.0.1:") == 1
    assert len(output.read_text().splitlines()) == 5
    report = tmp_path / "results.jsonl.llmbatch_report.html"
    timeline = read_timeline(str(tmp_path / "results.jsonl.llmbatch_timeline.jsonl"))
    assert [s.status for s in timeline.segments] == ["finished"]
    assert timeline.segments[0].last.counts.rows == 5
    assert "run 1 (finished)" in report.read_text()
    report.unlink()
    assert main(["report", str(output)]) == 0
    assert report.exists()


def test_a_dashboard_port_out_of_range_is_an_error(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(
        "input: {path: rows.csv}\nprocessor: {model_source: m}\nprompt: {user: hi}\n"
        "output: {path: out}\n"
    )
    assert main(["run", str(job), "--dashboard", "--dashboard-port", "70000"]) == 1
    assert "dashboard_port must be in 0..65535" in capsys.readouterr().err
