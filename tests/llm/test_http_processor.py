"""The HTTP processor against a real OpenAI-compatible server on 127.0.0.1 that answers some
requests with 429s, 500s, slow answers and dropped connections: every row is answered or
becomes an error row with the status and body, retries are counted, the rate stays within qps,
credentials never show, and a run killed with SIGKILL resumes without any row twice."""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from image_testing import http_server

import llmbatch.data as data
from llmbatch.data.checkpoint import CRASH_ENV
from llmbatch.llm import HttpRequestProcessorConfig, build_processor

SRC = str(Path(__file__).resolve().parents[2] / "src")
KEY = "sk-llmbatch-test-0123456789"
# What the server does with each attempt at a row, by row number; other rows are answered.
PLANS = {
    3: ["429", "ok"],
    5: ["500", "500", "ok"],
    7: ["slow", "ok"],
    9: ["drop", "ok"],
    11: ["500"] * 10,
    13: ["400"],
    15: ["not-json"],
}
MAX_RETRIES = 3
CLIENT_TIMEOUT_S = 0.5


class OpenAIServer(http.server.BaseHTTPRequestHandler):
    """Chat completions, answered as the row's plan says; remembers what it received."""

    attempts: Counter = Counter()
    arrivals: list[float] = []
    payloads: dict[int, dict] = {}
    authorizations: set[str] = set()
    lock = threading.Lock()

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        row = int(payload["messages"][0]["content"].split()[-1])
        with self.lock:
            self.arrivals.append(time.monotonic())
            attempt = self.attempts[row]
            self.attempts[row] += 1
            self.payloads[row] = payload
            self.authorizations.add(self.headers.get("Authorization"))
        plan = PLANS.get(row, ["ok"])
        action = plan[min(attempt, len(plan) - 1)]
        if action == "drop":
            return  # the connection closes without an answer
        if action == "slow":
            time.sleep(CLIENT_TIMEOUT_S * 3)
        if action in ("429", "500", "400"):
            echo = {"error": {"message": f"failed for {self.headers['Authorization']}"}}
            self._send(int(action), json.dumps(echo), {"Retry-After": "0"})
        elif action == "not-json":
            self._send(200, "<html>maintenance</html>")
        else:
            self._send(200, json.dumps(_completion(row, payload["model"])))

    def _send(self, status: int, body: str, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
        except OSError:
            pass  # the client gave up waiting (a slow answer)

    def log_message(self, *args: object) -> None:
        pass


def _completion(row: int, model: str) -> dict:
    return {
        "id": f"chatcmpl-{row}",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"answer {row}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


@pytest.fixture(scope="module")
def server():
    with http_server(OpenAIServer) as url:
        yield f"{url}/v1/chat/completions"


@pytest.fixture
def fresh_server(server):
    with OpenAIServer.lock:
        OpenAIServer.attempts.clear()
        OpenAIServer.arrivals.clear()
        OpenAIServer.payloads.clear()
        OpenAIServer.authorizations.clear()
    return server


def preprocess(row):
    payload = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"row {row['id']}"}],
    }
    if row["id"] % 2:
        payload["temperature"] = 0.3  # other rows leave it out: it must not be sent as null
    return {"payload": payload}


def postprocess(row):
    return {"id": row["id"], "resp": row["http_response"]["choices"][0]["message"]["content"]}


def short_timeout_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S))


def test_every_row_is_answered_or_an_error_row(fresh_server, caplog):
    config = HttpRequestProcessorConfig(
        url=fresh_server,
        headers={"Authorization": f"Bearer {KEY}"},
        max_retries=MAX_RETRIES,
        base_retry_wait_time_in_s=0.01,
        batch_size=4,
        concurrency=2,
        session_factory=short_timeout_session,
    )
    processor = build_processor(config, preprocess=preprocess, postprocess=postprocess)
    with caplog.at_level(logging.DEBUG, logger="llmbatch"):
        rows = processor(data.range(20)).take_all()

    assert [row["id"] for row in rows] == list(range(20))
    failed = {11: "HTTP 500", 13: "HTTP 400", 15: "HTTP 200: the answer is not JSON"}
    for row in rows:
        if row["id"] in failed:
            assert row["error"].startswith(f"http_request: HttpRequestFailed: {failed[row['id']]}")
        else:
            assert row["error"] is None and row["resp"] == f"answer {row['id']}"
    errors = {row["id"]: row["error"] for row in rows}
    assert errors[11].endswith("(after 4 attempts)")
    assert '{"error": {"message": "failed for ***"}}' in errors[11]
    assert "<html>maintenance</html>" in errors[15]

    attempts = OpenAIServer.attempts
    assert {row: attempts[row] for row in PLANS} == {3: 2, 5: 3, 7: 2, 9: 2, 11: 4, 13: 1, 15: 1}
    assert sum(attempts.values()) == 20 + 8
    summary = processor.summary()
    assert (summary.rows, summary.error_rows) == (20, 3)
    # every retry the server saw is counted (a loaded machine may time out a connection that
    # never reached it, and retry that too)
    assert summary.retries >= sum(attempts.values()) - 20
    assert summary.errors_by_kind == {"http_request": 3}
    assert summary.input_tokens == 3 * 17 and summary.output_tokens == 2 * 17
    assert OpenAIServer.authorizations == {f"Bearer {KEY}"}
    assert "temperature" not in OpenAIServer.payloads[2]
    assert OpenAIServer.payloads[1]["temperature"] == 0.3
    shown = caplog.text + summary.format() + repr(config) + json.dumps(rows)
    assert KEY not in shown


def test_requests_keep_to_qps(fresh_server):
    qps, num_rows = 20, 31
    config = HttpRequestProcessorConfig(url=fresh_server, qps=qps, batch_size=16, concurrency=2)
    processor = build_processor(config, preprocess=preprocess)
    rows = processor(data.range(num_rows).map(lambda r: {"id": r["id"] * 2})).take_all()

    assert all(row["error"] is None for row in rows)
    arrivals = sorted(OpenAIServer.arrivals)
    rate = (num_rows - 1) / (arrivals[-1] - arrivals[0])
    assert qps * 0.9 <= rate <= qps * 1.1
    busiest_second = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest_second <= qps * 1.1


SCRIPT = """
import sys
import llmbatch.data as data
from llmbatch.llm import HttpRequestProcessorConfig, build_processor

def preprocess(row):
    return {"payload": {"model": "m", "messages": [{"role": "user", "content": f"row {row['id']}"}]}}

config = HttpRequestProcessorConfig(url=sys.argv[1], batch_size=2, max_retries=3,
                                    base_retry_wait_time_in_s=0.01)
processor = build_processor(config, preprocess=preprocess)
processor(data.range(10)).write_json(sys.argv[2])
"""


def _write(script: Path, url: str, out: Path, crash_at: str = "") -> int:
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    command = [sys.executable, str(script), url, str(out)]
    return subprocess.run(command, env=env, capture_output=True, timeout=120).returncode


def test_a_killed_run_resumes_without_any_row_twice(fresh_server, tmp_path):
    script = tmp_path / "write.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    assert _write(script, fresh_server, out, "shard_renamed:3") == -signal.SIGKILL
    sent_before = sum(OpenAIServer.attempts.values())
    assert _write(script, fresh_server, out) == 0

    rows = [json.loads(line) for path in sorted(out.glob("0*.json")) for line in path.open()]
    assert [row["id"] for row in rows] == list(range(10))
    assert all(row["error"] is None for row in rows if row["id"] not in PLANS)
    # The second run asked only for the rows the first had not committed (2 shards of 2 rows).
    assert sum(OpenAIServer.attempts.values()) - sent_before < 10
