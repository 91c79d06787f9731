"""Output lines of OpenAI's batch format, ``{id, custom_id, response: {status_code, request_id,
body}, error}``: a processed row's answer in the shape of OpenAI's chat and completion
responses, or an error line with the request's ``custom_id`` (or line number)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from llmbatch.cli.batch_requests import CHAT, EMBEDDINGS

# The status and code of an error line, by the exception type at the start of the row's error.
_ERRORS = {
    "MalformedLine": (400, "invalid_json_line"),
    "InvalidRequest": (400, "invalid_request"),
    "ModelNotFound": (404, "model_not_found"),
    "UnsupportedEndpoint": (400, "unsupported_endpoint"),
}
# Stages that fail a row for what its request asked (other failures are the server's).
_REQUEST_STAGES = ("preprocess", "chat_template", "tokenize", "sampling_params", "engine")


def _random_id() -> str:
    return uuid.uuid4().hex


def output_line(
    row: dict[str, Any], model: str, role: str, decode: Callable[[int], str]
) -> dict[str, Any]:
    """The output line of a processed row: the answer in OpenAI's response shape, or an error
    line with the request's ``custom_id`` (or only its line number, when the line has none).
    `decode` gives a token id's text, for logprobs."""
    custom_id = row.get("custom_id") or _custom_id_of(row.get("text"))
    error = row.get("error")
    if error is not None:
        status, code, message = _error_of(error)
        return {
            "id": f"batch_req_{_random_id()}",
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": f"req_{_random_id()}", "body": None},
            "error": {"code": code, "message": message, "line": row["line"], "param": None},
        }
    if row["endpoint"] == EMBEDDINGS:
        body = _embedding_body(row, model)
    elif row["endpoint"] == CHAT:
        body = _chat_body(row, model, role, decode)
    else:
        body = _completion_body(row, model, decode)
    return {
        "id": f"batch_req_{_random_id()}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": f"req_{_random_id()}", "body": body},
        "error": None,
    }


def _custom_id_of(text: str | None) -> str | None:
    try:
        line = json.loads(text or "")
    except json.JSONDecodeError:
        return None
    value = line.get("custom_id") if isinstance(line, dict) else None
    return value if isinstance(value, str) else None


def _error_of(error: str) -> tuple[int, str, str]:
    """Status, code and message of a row's error text (``stage: Type: message``)."""
    stage, _, rest = error.partition(": ")
    kind, _, message = rest.partition(": ")
    if kind in _ERRORS:
        return (*_ERRORS[kind], message)
    if stage in _REQUEST_STAGES:
        return 400, "invalid_request", error
    return 500, "server_error", error


def _samples(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's answers (one, or n for a request with n > 1, whose columns are lists)."""
    fields = ("generated_text", "generated_tokens", "finish_reason", "logprobs")
    if not isinstance(row["generated_text"], list):
        return [{name: row.get(name) for name in fields}]
    count = len(row["generated_text"])
    logprobs = row.get("logprobs") or [None] * count
    return [
        {
            "generated_text": row["generated_text"][i],
            "generated_tokens": row["generated_tokens"][i],
            "finish_reason": row["finish_reason"][i],
            "logprobs": logprobs[i],
        }
        for i in range(count)
    ]


def _usage(row: dict[str, Any]) -> dict[str, int]:
    prompt, completion = row["num_input_tokens"], row["num_generated_tokens"]
    if isinstance(completion, list):
        completion = sum(completion)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _chat_body(
    row: dict[str, Any], model: str, role: str, decode: Callable[[int], str]
) -> dict[str, Any]:
    top = row.get("top_logprobs")
    choices = []
    for index, sample in enumerate(_samples(row)):
        logprobs = None
        if top is not None:
            logprobs = {"content": _chat_logprobs(sample, top, decode), "refusal": None}
        choices.append(
            {
                "index": index,
                "message": {"role": role, "content": sample["generated_text"]},
                "logprobs": logprobs,
                "finish_reason": sample["finish_reason"],
            }
        )
    return {
        "id": f"chatcmpl-{_random_id()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(row),
    }


def _completion_body(
    row: dict[str, Any], model: str, decode: Callable[[int], str]
) -> dict[str, Any]:
    top = row.get("top_logprobs")
    choices = [
        {
            "index": index,
            "text": sample["generated_text"],
            "logprobs": None if top is None else _completion_logprobs(sample, top, decode),
            "finish_reason": sample["finish_reason"],
        }
        for index, sample in enumerate(_samples(row))
    ]
    return {
        "id": f"cmpl-{_random_id()}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(row),
    }


def _embedding_body(row: dict[str, Any], model: str) -> dict[str, Any]:
    """OpenAI's embeddings response: the input's embedding as floats, or base64 of its
    little-endian float32 values."""
    embedding: Any = row["embeddings"]
    if row.get("encoding_format") == "base64":
        embedding = base64.b64encode(np.asarray(embedding, dtype="<f4").tobytes()).decode()
    tokens = row["num_input_tokens"]
    return {
        "id": f"embd-{_random_id()}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": [{"index": 0, "object": "embedding", "embedding": embedding}],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _steps(sample: dict[str, Any], top: int) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """Per generated token: its id, its log-probability and the top alternatives, best first."""
    steps = []
    for token, entries in zip(sample["generated_tokens"], sample.get("logprobs") or []):
        ranked = sorted(
            ((e["token_id"], e["logprob"]) for e in entries), key=lambda e: e[1], reverse=True
        )
        chosen = next(logprob for token_id, logprob in ranked if token_id == token)
        steps.append((token, chosen, ranked[:top]))
    return steps


def _token_entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def _chat_logprobs(
    sample: dict[str, Any], top: int, decode: Callable[[int], str]
) -> list[dict[str, Any]]:
    return [
        {
            **_token_entry(decode(token), logprob),
            "top_logprobs": [_token_entry(decode(t), lp) for t, lp in top],
        }
        for token, logprob, top in _steps(sample, top)
    ]


def _completion_logprobs(
    sample: dict[str, Any], top: int, decode: Callable[[int], str]
) -> dict[str, Any]:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = 0
    for token, logprob, alternatives in _steps(sample, top):
        text = decode(token)
        tokens.append(text)
        token_logprobs.append(logprob)
        tops.append({decode(t): lp for t, lp in alternatives})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }
