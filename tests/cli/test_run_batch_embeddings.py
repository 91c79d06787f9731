"""`llmbatch run-batch` over an embedding model: /v1/embeddings lines get OpenAI's embeddings
responses (floats or base64, optional dimensions), equal to `LLM.embed`; the endpoints a
pooling model does not serve are error lines."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from openai.types import CreateEmbeddingResponse
from tiny_pooling import qwen3_config, save_base_model

from llmbatch import LLM, PoolingParams
from llmbatch.cli import main

MODEL_NAME = "embedder"
ENGINE_OPTIONS = ["--max-model-len", "128", "--kv-cache-memory-bytes", str(4 << 20)]


def embedding(custom_id: str, text, **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": MODEL_NAME, "input": text, **body},
    }


LINES = [
    embedding("plain", "w5 w6 w7 w8"),
    embedding("short-base64", ["w30 w31 w9"], dimensions=16, encoding_format="base64"),
    embedding("two-inputs", ["w5", "w6"]),
    {
        "custom_id": "chat",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL_NAME, "messages": [{"role": "user", "content": "w5"}]},
    },
    embedding("bad-format", "w5", encoding_format="int8"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run_batch_embeddings")
    model = folder / "model"
    save_base_model(model, qwen3_config(), "lasttoken")
    requests = folder / "requests.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    output = folder / "results.jsonl"
    options = ["--served-model-name", MODEL_NAME, "--no-progress", *ENGINE_OPTIONS]
    assert (
        main(["run-batch", "-i", str(requests), "-o", str(output), "--model", str(model), *options])
        == 0
    )
    lines = {line["custom_id"]: line for line in map(json.loads, output.read_text().splitlines())}
    return model, lines


def expected_embedding(model: Path, text: str, **params) -> list[float]:
    with LLM(str(model), max_model_len=128, kv_cache_memory_bytes=4 << 20) as llm:
        return llm.embed([text], PoolingParams(**params))[0].outputs.embedding


def test_embedding_lines_get_openai_s_response_with_the_engine_s_embedding(run):
    model, lines = run
    plain = CreateEmbeddingResponse.model_validate(lines["plain"]["response"]["body"])
    assert plain.model == MODEL_NAME and plain.usage.prompt_tokens == 4
    np.testing.assert_allclose(
        plain.data[0].embedding, expected_embedding(model, "w5 w6 w7 w8"), atol=1e-6
    )
    short = lines["short-base64"]["response"]["body"]["data"][0]["embedding"]
    values = np.frombuffer(base64.b64decode(short), dtype="<f4")
    np.testing.assert_allclose(
        values, expected_embedding(model, "w30 w31 w9", dimensions=16), atol=1e-6
    )


@pytest.mark.parametrize(
    ("custom_id", "code", "message"),
    [
        ("two-inputs", "invalid_request", "one input per request line"),
        (
            "chat",
            "unsupported_endpoint",
            "this is a pooling model (embed), which generates no text",
        ),
        ("bad-format", "invalid_request", "encoding_format must be one of float, base64"),
    ],
)
def test_what_a_pooling_model_cannot_answer_is_an_error_line(run, custom_id, code, message):
    _, lines = run
    line = lines[custom_id]
    assert line["response"]["body"] is None
    assert line["error"]["code"] == code
    assert message in line["error"]["message"]
