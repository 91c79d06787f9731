"""`llmbatch run-batch` as vLLM's batch runner is used: a JSONL file of chat and completion
requests (malformed lines and per-line options among them) in, one OpenAI-shaped line per
request out, in input order, parsed with the `openai` package's own types; local paths and
http(s) URLs; a run killed with SIGKILL continues and never writes a line twice; and the
mistakes vLLM's parser catches are caught with the same words."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from image_testing import http_server
from openai.types import BatchError, Completion
from openai.types.chat import ChatCompletion

from llmbatch import SamplingParams
from llmbatch.cli import main
from llmbatch.cli.batch_requests import RequestReader, structured_outputs
from llmbatch.data.checkpoint import CRASH_ENV

SRC = str(Path(__file__).resolve().parents[2] / "src")
MODEL_NAME = "smol"
ENGINE_OPTIONS = ["--max-model-len", "512", "--kv-cache-memory-bytes", str(64 << 20)]


def chat(custom_id: str, content, **body) -> dict:
    messages = [{"role": "user", "content": content}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL_NAME, "messages": messages, **body},
    }


def completion(custom_id: str, prompt: str, **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": MODEL_NAME, "prompt": prompt, **body},
    }


GREEDY = {"temperature": 0, "max_tokens": 5}
# One entry per line of the file: a request, or raw text for lines that are not requests.
LINES = [
    chat("chat-greedy", "Name a colour.", **GREEDY),
    completion("cmpl-logprobs", "Once upon a time", temperature=0, max_tokens=4, logprobs=2),
    "",
    "{not json",
    chat("chat-seeded", "Tell me a word.", temperature=0.8, seed=7, max_completion_tokens=6),
    chat(
        "chat-parts-stop",
        [{"type": "text", "text": "Count:"}, {"type": "text", "text": "1, 2, 3,"}],
        temperature=0,
        max_tokens=20,
        stop=[","],
        logprobs=True,
        top_logprobs=2,
    ),
    {"method": "POST", "url": "/v1/completions", "body": {"prompt": "no id"}},
    chat("n-two", "Hi", n=2, **GREEDY),
    chat("other-model", "Hi", **{**GREEDY, "model": "gpt-4o"}),
    {"custom_id": "embeddings", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
    chat("image", [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}], **GREEDY),
    chat("hot", "Hi", temperature="hot"),
    completion("cmpl-default", "The sky is", temperature=0),
]


def write_requests(path: Path, lines=LINES) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def run_batch(input_file, output_file, model, *options) -> int:
    return main(
        [
            "run-batch",
            "-i",
            str(input_file),
            "-o",
            str(output_file),
            "--model",
            model,
            "--served-model-name",
            MODEL_NAME,
            "--no-progress",
            *ENGINE_OPTIONS,
            *options,
        ]
    )


def read_output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def results(tmp_path_factory, smollm2_dir) -> list[dict]:
    folder = tmp_path_factory.mktemp("run_batch")
    requests = write_requests(folder / "requests.jsonl")
    output = folder / "results.jsonl"
    assert run_batch(requests, output, smollm2_dir, "--batch-size", "4") == 0
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    return read_output(output)


def _choice(line: dict) -> tuple:
    """An answer's text and finish reason (log-probabilities differ in their last bits between
    runs that batch differently)."""
    [choice] = line["response"]["body"]["choices"]
    return choice.get("text", choice.get("message")), choice["finish_reason"]


def by_id(results: list[dict]) -> dict:
    return {line["custom_id"]: line for line in results if line["custom_id"] is not None}


def test_one_line_per_request_in_input_order(results):
    requests = [line for line in LINES if line != ""]
    assert len(results) == len(requests)
    expected = [r.get("custom_id") if isinstance(r, dict) else None for r in requests]
    assert [line["custom_id"] for line in results] == expected
    assert len({line["id"] for line in results}) == len(results)


def test_chat_answers_are_the_engine_s_in_openai_s_shape(results, reference_llm):
    line = by_id(results)["chat-greedy"]
    assert line["error"] is None and line["response"]["status_code"] == 200
    body = ChatCompletion.model_validate(line["response"]["body"])
    [expected] = reference_llm.chat(
        [[{"role": "user", "content": "Name a colour."}]],
        SamplingParams(temperature=0.0, max_tokens=5),
    )
    assert body.model == MODEL_NAME and body.object == "chat.completion"
    assert body.choices[0].message.content == expected.text
    assert body.choices[0].message.role == "assistant"
    assert body.choices[0].finish_reason == expected.finish_reason == "length"
    assert body.usage.prompt_tokens == expected.num_prompt_tokens
    assert body.usage.completion_tokens == 5 == body.usage.total_tokens - body.usage.prompt_tokens


def test_a_line_asking_for_n_answers_gets_n_choices(results, reference_llm):
    body = ChatCompletion.model_validate(by_id(results)["n-two"]["response"]["body"])
    assert [choice.index for choice in body.choices] == [0, 1]
    # greedy: both samples are the model's one answer
    [expected] = reference_llm.chat(
        [[{"role": "user", "content": "Hi"}]], SamplingParams(temperature=0.0, max_tokens=5, n=2)
    )
    assert [c.message.content for c in body.choices] == [c.text for c in expected.outputs]
    assert body.usage.completion_tokens == sum(len(c.token_ids) for c in expected.outputs)


def test_per_line_options_reach_the_engine(results, reference_llm):
    lines = by_id(results)
    seeded = ChatCompletion.model_validate(lines["chat-seeded"]["response"]["body"])
    [expected] = reference_llm.chat(
        [[{"role": "user", "content": "Tell me a word."}]],
        SamplingParams(temperature=0.8, seed=7, max_tokens=6),
    )
    assert seeded.choices[0].message.content == expected.text

    stopped = ChatCompletion.model_validate(lines["chat-parts-stop"]["response"]["body"])
    [expected] = reference_llm.chat(
        [[{"role": "user", "content": "Count:\n1, 2, 3,"}]],
        SamplingParams(temperature=0.0, max_tokens=20, stop=[","], logprobs=2),
    )
    choice = stopped.choices[0]
    assert choice.message.content == expected.text and "," not in choice.message.content
    assert choice.finish_reason == "stop"
    steps = choice.logprobs.content
    assert len(steps) == stopped.usage.completion_tokens
    for step in steps:
        assert len(step.top_logprobs) == 2
        assert step.top_logprobs[0].logprob >= step.top_logprobs[1].logprob
        assert step.logprob <= step.top_logprobs[0].logprob + 1e-6
        assert bytes(step.bytes).decode() == step.token


def test_completion_answers_with_logprobs(results, reference_llm):
    lines = by_id(results)
    body = Completion.model_validate(lines["cmpl-logprobs"]["response"]["body"])
    [expected] = reference_llm.generate(
        "Once upon a time", SamplingParams(temperature=0.0, max_tokens=4, logprobs=2)
    )
    choice = body.choices[0]
    assert choice.text == expected.text and body.object == "text_completion"
    assert "".join(choice.logprobs.tokens) == choice.text
    assert choice.logprobs.token_logprobs == pytest.approx(
        [step[token].logprob for step, token in zip(expected.logprobs, expected.token_ids)],
        abs=1e-5,
    )
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
    assert choice.logprobs.text_offset[0] == 0

    # The completions endpoint's default max_tokens is 16.
    default = Completion.model_validate(lines["cmpl-default"]["response"]["body"])
    [expected] = reference_llm.generate(
        "The sky is", SamplingParams(temperature=0.0, max_tokens=16)
    )
    assert default.choices[0].text == expected.text


@pytest.mark.parametrize(
    ("custom_id", "line", "status", "code", "message"),
    [
        (None, 4, 400, "invalid_json_line", "line 4 is not valid JSON"),
        (None, 7, 400, "invalid_json_line", "line 7: 'custom_id' must be a string"),
        ("other-model", 9, 404, "model_not_found", "The model `gpt-4o` does not exist."),
        ("embeddings", 10, 400, "unsupported_endpoint", "pooling model"),
        ("image", 11, 400, "invalid_request", "only text parts are supported"),
        ("hot", 12, 400, "invalid_request", "temperature must be a number, got 'hot'"),
    ],
)
def test_bad_lines_become_error_lines(results, custom_id, line, status, code, message):
    [result] = [r for r in results if r["custom_id"] == custom_id and r["error"]["line"] == line]
    error = BatchError.model_validate(result["error"])
    assert (error.code, error.line) == (code, line)
    assert message in error.message
    assert result["response"]["status_code"] == status and result["response"]["body"] is None


def test_response_format_becomes_structured_outputs():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert structured_outputs({"type": "json_object"}) == {"json_object": True}
    assert structured_outputs({"type": "json_schema", "json_schema": {"schema": schema}}) == {
        "json": schema
    }
    assert structured_outputs({"type": "text"}) is None
    reader = RequestReader((MODEL_NAME,), lambda: 512)
    line = chat(
        "x", "Hi", response_format={"type": "json_schema", "json_schema": {"schema": schema}}
    )
    row = reader({"line": 1, "text": json.dumps(line)})
    assert row["sampling_params"]["structured_outputs"] == {"json": schema}
    assert row["sampling_params"]["max_tokens"] == 512  # chat default: until the context is full


class BatchFiles(http.server.SimpleHTTPRequestHandler):
    """Serves the folder's files (GET) and keeps what is PUT, as object stores do."""

    uploads: dict[str, bytes] = {}

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding") == "chunked":
            data = b""
            while (size := int(self.rfile.readline().strip(), 16)) > 0:
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            data = self.rfile.read(length)
        self.uploads[self.path] = data
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_input_and_output_urls(tmp_path, smollm2_dir, results):
    lines = [LINES[0], LINES[1], LINES[3]]
    write_requests(tmp_path / "requests.jsonl", lines)

    def handler(*args: object) -> BatchFiles:
        return BatchFiles(*args, directory=str(tmp_path))

    with http_server(handler) as url:
        code = run_batch(
            f"{url}/requests.jsonl",
            f"{url}/upload/results.jsonl",
            smollm2_dir,
            "--output-tmp-dir",
            str(tmp_path / "work"),
        )
    assert code == 0
    uploaded = [
        json.loads(line) for line in BatchFiles.uploads["/upload/results.jsonl"].splitlines()
    ]
    assert [line["custom_id"] for line in uploaded] == ["chat-greedy", "cmpl-logprobs", None]
    local = by_id(results)
    for line in uploaded[:2]:
        assert _choice(line) == _choice(local[line["custom_id"]])
    assert list((tmp_path / "work").iterdir()) == []


KILL_LINES = [
    chat(f"chat-{i}", f"Say a word about {i}.", **GREEDY)
    if i % 2
    else completion(f"cmpl-{i}", f"Number {i} is", **GREEDY)
    for i in range(8)
]


def _run_process(requests: Path, output: Path, model: str, crash_at: str = "") -> int:
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    command = [sys.executable, "-m", "llmbatch.cli", "run-batch", "-i", str(requests)]
    command += ["-o", str(output), "--model", model, "--served-model-name", MODEL_NAME]
    command += ["--no-progress", "--batch-size", "2", *ENGINE_OPTIONS]
    return subprocess.run(command, env=env, capture_output=True, timeout=300).returncode


def test_a_killed_run_continues_and_writes_each_line_once(tmp_path, smollm2_dir, reference_llm):
    requests = write_requests(tmp_path / "requests.jsonl", KILL_LINES)
    output = tmp_path / "results.jsonl"
    # Killed after a shard is written but before the manifest lists it, then once the manifest
    # lists a later one: each run keeps what was committed and redoes the rest.
    for crash_at in ("shard_renamed:2", "manifest_renamed:3"):
        assert _run_process(requests, output, smollm2_dir, crash_at) == -signal.SIGKILL
        assert not output.exists()
    assert _run_process(requests, output, smollm2_dir) == 0

    lines = read_output(output)
    assert [line["custom_id"] for line in lines] == [r["custom_id"] for r in KILL_LINES]
    params = SamplingParams(temperature=0.0, max_tokens=5)
    chats = reference_llm.chat([r["body"]["messages"] for r in KILL_LINES[1::2]], params)
    completions = reference_llm.generate([r["body"]["prompt"] for r in KILL_LINES[::2]], params)
    texts = [out.text for pair in zip(completions, chats) for out in pair]
    answers = [_choice(line)[0] for line in lines]
    assert [a if isinstance(a, str) else a["content"] for a in answers] == texts
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "requests.jsonl",
        "results.jsonl",
        "results.jsonl.llmbatch_report.html",
        "results.jsonl.llmbatch_timeline.jsonl",
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["-o", "out.jsonl", "--model", "m"],
            "the following arguments are required: -i/--input-file",
        ),
        (
            ["-i", "in.jsonl", "-o", "out.jsonl", "--model", "m", "--max-num-sequences", "8"],
            "unrecognized arguments: --max-num-sequences 8 (--max-num-sequences -> did you mean "
            "--max-num-seqs?)",
        ),
        (
            ["-i", "in.jsonl", "-o", "out.jsonl", "--model", "m", "--max-model-len", "big"],
            "argument --max-model-len: invalid int value: 'big'",
        ),
    ],
)
def test_command_line_mistakes_read_like_vllm_s(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["run-batch", *argv])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_engine_argument_values_are_checked_before_any_line(tmp_path, capsys):
    requests = write_requests(tmp_path / "requests.jsonl", LINES[:1])
    code = main(
        ["run-batch", "-i", str(requests), "-o", str(tmp_path / "o.jsonl"), "--model", "m"]
        + ["--max_model_len", "64", "--block-size", "3"]
    )
    assert code == 1
    assert "block_size must be a power of two" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
