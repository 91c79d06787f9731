"""Request lines of OpenAI's batch format (vLLM's ``run-batch``, the OpenAI and Azure batch
APIs), ``{custom_id, method, url, body}``, as processor rows; a line that cannot run fails with
an exception whose type names the error code of its output line (`batch_responses`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("llmbatch")

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS)
# Fields of an embeddings request (OpenAI's), and the encodings of its answer.
_EMBEDDING_FIELDS = ("model", "input", "dimensions", "encoding_format", "user")
ENCODING_FORMATS = ("float", "base64")

# Body fields that map onto the engine's sampling parameters under the same name, with their
# JSON type (checked here: rows of one table must agree on each field's type).
_SAME_NAME: dict[str, str] = {
    "temperature": "number",
    "top_p": "number",
    "top_k": "integer",
    "min_p": "number",
    "seed": "integer",
    "presence_penalty": "number",
    "frequency_penalty": "number",
    "repetition_penalty": "number",
    "min_tokens": "integer",
    "stop_token_ids": "integers",
    "ignore_eos": "boolean",
    "skip_special_tokens": "boolean",
    "include_stop_str_in_output": "boolean",
    "truncate_prompt_tokens": "integer",
    "n": "integer",
}
_HANDLED = (
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "logprobs",
    "top_logprobs",
    "response_format",
    "stream",
    "stream_options",
)
# Fields that change nothing in a batch: who asked, and the API's own storage flags.
_IGNORED = ("user", "store", "metadata", "service_tier")
# Fields the engine cannot honour yet, with the value that asks for nothing.
_UNSUPPORTED = {
    "tools": None,
    "tool_choice": "none",
    "functions": None,
    "function_call": "none",
    "parallel_tool_calls": None,
    "logit_bias": None,
    "echo": False,
    "best_of": 1,
    "suffix": None,
    "audio": None,
    "modalities": None,
    "prediction": None,
}
_MESSAGE_KEYS = ("role", "content", "name")
_COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class MalformedLine(ValueError):
    """The line is not a JSON object in the batch format."""


class InvalidRequest(ValueError):
    """The request asks for something it cannot: a bad or unsupported field."""


class ModelNotFound(ValueError):
    """The request names a model other than the one being served."""


class UnsupportedEndpoint(ValueError):
    """The request's url is not an endpoint run-batch serves."""


@dataclass(frozen=True, slots=True)
class RequestReader:
    """Turns one request line into a processor row: ``messages`` (chat) or ``prompt``
    (completions) with ``sampling_params``, or ``prompt`` with ``pooling_params``
    (embeddings), and what the output line needs.

    ``served_models`` are the names a request's ``model`` may give; ``max_model_len()`` (the
    engine's, known once it is loaded) is the chat endpoint's default ``max_tokens``: as in
    vLLM, an answer may run until the context is full. ``pooling_task()`` is the engine's
    pooling task (None for a generative model), which decides the endpoints it serves."""

    served_models: tuple[str, ...]
    max_model_len: Callable[[], int]
    pooling_task: Callable[[], str | None] = lambda: None

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        line = _json_object(row["text"], row["line"])
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str):
            raise MalformedLine(
                f"line {row['line']}: 'custom_id' must be a string, got {custom_id!r}"
            )
        method = line.get("method", "POST")
        if not isinstance(method, str) or method.upper() != "POST":
            raise InvalidRequest(f"method must be 'POST', got {method!r}")
        url = line.get("url")
        if url not in ENDPOINTS:
            raise UnsupportedEndpoint(
                f"url {url!r} is not supported; supported: {', '.join(ENDPOINTS)}"
            )
        self._check_endpoint(url)
        body = line.get("body")
        if not isinstance(body, dict):
            raise MalformedLine(f"line {row['line']}: 'body' must be a JSON object, got {body!r}")
        model = body.get("model")
        if model is not None and model not in self.served_models:
            raise ModelNotFound(f"The model `{model}` does not exist.")
        if url == EMBEDDINGS:
            return _embedding_request(custom_id, body)
        _check_fields(body)
        chat = url == CHAT
        request = {
            "custom_id": custom_id,
            "endpoint": url,
            "sampling_params": self._sampling_params(body, chat),
            "top_logprobs": _top_logprobs(body, chat),
        }
        if chat:
            request["messages"] = _messages(body.get("messages"))
        else:
            request["prompt"] = _prompt(body.get("prompt"))
        return request

    def _check_endpoint(self, url: str) -> None:
        task = self.pooling_task()
        if url == EMBEDDINGS and task != "embed":
            kind = "a generative model" if task is None else f"a {task} model"
            raise UnsupportedEndpoint(
                f"url {url!r}: embeddings need a pooling model (an embedding model, or "
                f"--runner pooling --convert embed); this is {kind}"
            )
        if url != EMBEDDINGS and task is not None:
            serves = f"; it serves {EMBEDDINGS}" if task == "embed" else ""
            raise UnsupportedEndpoint(
                f"url {url!r}: this is a pooling model ({task}), which generates no text{serves}"
            )

    def _sampling_params(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        params = {
            name: _typed(name, body[name], kind)
            for name, kind in _SAME_NAME.items()
            if body.get(name) is not None
        }
        default = self.max_model_len() if chat else _COMPLETIONS_DEFAULT_MAX_TOKENS
        given = body.get("max_completion_tokens") if chat else None
        if given is None:
            given = body.get("max_tokens")
        params["max_tokens"] = default if given is None else _typed("max_tokens", given, "integer")
        stop = body.get("stop")
        if stop is not None:
            stop = [stop] if isinstance(stop, str) else stop
            if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
                raise InvalidRequest(f"stop must be a string or a list of strings, got {stop!r}")
            params["stop"] = stop
        logprobs = _top_logprobs(body, chat)
        if logprobs is not None:
            params["logprobs"] = logprobs
        structured = structured_outputs(body.get("response_format"))
        if structured is not None:
            params["structured_outputs"] = structured
        return params


def _embedding_request(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """An embeddings line as a row: its one text input with its pooling params."""
    unknown = sorted(set(body) - set(_EMBEDDING_FIELDS))
    if unknown:
        logger.warning(
            "ignored embeddings request field(s) %s (run-batch does not know them)", unknown
        )
    text = body.get("input")
    if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
        text = text[0]
    if not isinstance(text, str):
        raise InvalidRequest(
            "'input' must be one string (one input per request line: split lists of inputs "
            "into lines; token ids are not supported yet)"
        )
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODING_FORMATS:
        raise InvalidRequest(
            f"encoding_format must be one of {', '.join(ENCODING_FORMATS)}, got {encoding!r}"
        )
    dimensions = body.get("dimensions")
    params = (
        {} if dimensions is None else {"dimensions": _typed("dimensions", dimensions, "integer")}
    )
    return {
        "custom_id": custom_id,
        "endpoint": EMBEDDINGS,
        "prompt": text,
        "pooling_params": params or None,
        "encoding_format": encoding,
    }


def structured_outputs(response_format: Any) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` as vLLM's ``structured_outputs`` (None for plain text)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequest(f"response_format must be an object, got {response_format!r}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "response_format {'type': 'json_schema'} needs json_schema.schema, a JSON schema"
            )
        return {"json": schema}
    raise InvalidRequest(
        f"response_format type {kind!r} is not supported; accepted: 'text', 'json_object', "
        "'json_schema'"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(name: str, value: Any, kind: str) -> Any:
    """`value` of JSON type `kind` (numbers as floats), or InvalidRequest naming the field."""
    if kind == "number" and (_is_int(value) or isinstance(value, float)):
        return float(value)
    if (
        (kind == "integer" and _is_int(value))
        or (kind == "boolean" and isinstance(value, bool))
        or (kind == "integers" and isinstance(value, list) and all(map(_is_int, value)))
    ):
        return value
    article = "a list of integers" if kind == "integers" else f"a {kind}"
    raise InvalidRequest(f"{name} must be {article}, got {value!r}")


def _json_object(text: str | None, number: int) -> dict[str, Any]:
    if text is None:
        raise MalformedLine(f"line {number} is not valid UTF-8 text")
    try:
        line = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedLine(f"line {number} is not valid JSON: {exc}") from None
    if not isinstance(line, dict):
        raise MalformedLine(f"line {number} must be a JSON object, got {type(line).__name__}")
    return line


def _check_fields(body: dict[str, Any]) -> None:
    for name, idle in _UNSUPPORTED.items():
        if body.get(name) is not None and body[name] != idle:
            raise InvalidRequest(f"{name}={body[name]!r} is not supported yet")
    if body.get("stream"):
        raise InvalidRequest("stream=true is not supported in a batch: each line gets one answer")
    unknown = sorted(set(body) - {*_SAME_NAME, *_HANDLED, *_IGNORED, *_UNSUPPORTED})
    if unknown:
        logger.warning("ignored request field(s) %s (run-batch does not know them)", unknown)


def _top_logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives per token the answer shows (None: no logprobs asked)."""
    if not chat:
        value = body.get("logprobs")
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidRequest(f"logprobs must be a non-negative integer, got {value!r}")
        return value
    top = body.get("top_logprobs")
    if not body.get("logprobs"):
        if top:
            raise InvalidRequest("top_logprobs needs logprobs=true")
        return None
    if top is None:
        return 0
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20:
        raise InvalidRequest(f"top_logprobs must be an integer from 0 to 20, got {top!r}")
    return top


def _messages(messages: Any) -> list[dict[str, str | None]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list of messages")
    result = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a 'role', got {message!r}")
        others = sorted(k for k, v in message.items() if k not in _MESSAGE_KEYS and v is not None)
        if others:
            raise InvalidRequest(f"messages[{i}]: {others} (tool calls) are not supported yet")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidRequest(f"messages[{i}].name must be a string, got {name!r}")
        result.append(
            {
                "role": message["role"],
                "content": _text_content(message.get("content"), i),
                "name": name,
            }
        )
    return result


def _text_content(content: Any, index: int) -> str:
    """A message's content as text: text parts are joined by line breaks."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise InvalidRequest(f"messages[{index}].content must be text or a list of parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or "text" not in part:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise InvalidRequest(
                f"messages[{index}].content[{j}] is a {kind!r} part; only text parts are "
                "supported by run-batch"
            )
        texts.append(str(part["text"]))
    return "\n".join(texts)


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest(
            "'prompt' must be one string (lists of prompts and token ids are not supported yet)"
        )
    return prompt
