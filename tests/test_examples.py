"""The examples run: the tutorial's two parts one after the other in one process
(examples/tutorial_both.py), a Ray Data LLM 2.60 pipeline, the HTTP processor against a local
server, and the run-batch request file."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
from pathlib import Path

from image_testing import http_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(*command: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent / "src")}
    return subprocess.run(
        [sys.executable, *command],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_text_then_vision_part_in_one_process(tiny_vl_dir, smollm2_dir):
    done = run_example(
        "tutorial_both.py",
        "--vision-model",
        tiny_vl_dir,
        "--generated",
        "--rows",
        "3",
        "--max-tokens",
        "4",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.index("== text part ==") < done.stdout.index("== vision part ==")
    summaries = [line.split() for line in done.stdout.splitlines() if line.startswith("rows ")]
    errors = [line.split() for line in done.stdout.splitlines() if line.startswith("error rows")]
    assert summaries == [["rows", "3"], ["rows", "3"]]
    assert errors == [["error", "rows", "0"], ["error", "rows", "0"]]


def test_the_structured_output_example_prints_dates_and_parsed_records(smollm2_dir):
    import re

    done = run_example("structured_output.py", "--model", smollm2_dir, "--rows", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    answers = [line.split(" -> ")[1].rsplit("  [", 1)[0] for line in lines if " -> " in line]
    assert len(answers) == 6
    assert all(re.fullmatch(r"\d{2}-\d{2}-\d{4}", answer) for answer in answers[:3])
    assert all(answer.startswith("{") for answer in answers[3:])


def test_the_ray_2_60_pipeline(smollm2_dir):
    done = run_example("ray_2_60.py", "--model", smollm2_dir, "--rows", "3", "--max-tokens", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert ["rows", "3"] in [line.split() for line in lines]
    assert ["error", "rows", "0"] in [line.split() for line in lines]


class ChatServer(http.server.BaseHTTPRequestHandler):
    """Answers chat completions with the question it was asked."""

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        question = payload["messages"][-1]["content"]
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": question}}]}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_http_processor_example():
    with http_server(ChatServer) as url:
        done = run_example("http_processor.py", "--url", url, "--rows", "3", "--qps", "50")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "{'id': 2, 'resp': '2 ** 3 = ?', 'error': None}" in done.stdout


def test_the_run_batch_requests(tmp_path, smollm2_dir):
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    from llmbatch.cli import main

    output = tmp_path / "results.jsonl"
    argv = ["run-batch", "-i", str(EXAMPLES / "requests.jsonl"), "-o", str(output)]
    argv += ["--model", smollm2_dir, "--max-model-len", "1024", "--no-progress"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"request-{i}" for i in range(1, 5)]
    assert all(line["error"] is None for line in lines)
    for line in lines:
        kind = Completion if line["custom_id"] == "request-3" else ChatCompletion
        kind.model_validate(line["response"]["body"])
