"""The HTTP request stage: each row's ``payload`` POSTed to the endpoint with many requests in
flight, rate limited, retried with exponential backoff, answers handed on in input order.

The requests run on an asyncio event loop in a thread of their own (aiohttp); the stage, a
generator over Arrow tables like every stage, submits rows to it and collects the answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from llmbatch.llm.columns import (
    HTTP_RESPONSE,
    PAYLOAD,
    as_table,
    column_values,
    errors_of,
    format_error,
    set_column,
    to_arrow,
    with_errors,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from llmbatch.llm.http_config import HttpRequestProcessorConfig
    from llmbatch.llm.summary import RunStats

# Answers worth another try: the server is busy, overloaded or failed, or the request timed out.
_RETRY_STATUSES = frozenset({408, 429})
_MAX_BODY_IN_ERROR = 1000
# Rows sent but not handed on yet (waiting for an earlier, slower row), per request in flight.
_WAITING_PER_IN_FLIGHT = 4


class HttpRequestFailed(RuntimeError):
    """A row's request got no usable answer; the message has the status and the body."""


@dataclass(slots=True, frozen=True)
class _Answer:
    response: dict[str, Any] | None
    error: str | None


def _retryable(status: int) -> bool:
    return status in _RETRY_STATUSES or status >= 500


def _without_nulls(value: Any) -> Any:
    """A payload read back from Arrow: the keys that only other rows set come back as None."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def payload_body(payload: Any) -> str:
    """A row's payload as the JSON text to send; a dict, or a JSON object's text."""
    if payload is None:
        raise ValueError(f"the row has no {PAYLOAD!r}: return a JSON object from preprocess")
    if isinstance(payload, str):
        try:
            parsed = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{PAYLOAD!r} is text but not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"{PAYLOAD!r} must be a JSON object, got {type(parsed).__name__}")
        return payload
    if not isinstance(payload, dict):
        raise TypeError(f"{PAYLOAD!r} must be a dict (a JSON object), got {type(payload).__name__}")
    return json.dumps(_without_nulls(payload))


class _RateLimiter:
    """Starts at most `qps` requests per second, evenly spaced."""

    def __init__(self, qps: float | None) -> None:
        self._interval = 1.0 / qps if qps else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = asyncio.get_running_loop().time()
        start = max(now, self._next)
        self._next = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)


class HttpClient:
    """An aiohttp session on an event loop in its own thread; `submit` is called from others."""

    def __init__(self, config: HttpRequestProcessorConfig, stats: RunStats) -> None:
        self._config = config
        self._stats = stats
        self._headers = {"Content-Type": "application/json", **(config.headers or {})}
        self._limiter = _RateLimiter(config.qps)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="llmbatch-http", daemon=True
        )
        self._session: Any = None

    def __enter__(self) -> HttpClient:
        self._thread.start()
        self._session = self._run(self._open_session())
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._run(self._close_session())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def submit(self, body: str) -> concurrent.futures.Future[_Answer]:
        return asyncio.run_coroutine_threadsafe(self._send(body), self._loop)

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _open_session(self) -> Any:
        import aiohttp

        if self._config.session_factory is not None:
            return self._config.session_factory()
        connector = aiohttp.TCPConnector(limit=self._config.max_in_flight)
        return aiohttp.ClientSession(connector=connector)

    async def _close_session(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._session.close()

    async def _send(self, body: str) -> _Answer:
        import aiohttp

        config = self._config
        failure, wait = "", 0.0
        for attempt in range(config.max_retries + 1):
            if attempt:
                self._stats.retries += 1
                await asyncio.sleep(wait)
            await self._limiter.wait()
            wait = config.base_retry_wait_time_in_s * 2**attempt
            try:
                async with self._session.post(
                    config.url, data=body, headers=self._headers
                ) as response:
                    status, text = response.status, await response.text()
                    retry_after = response.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                failure = f"{type(exc).__name__}: {exc}".rstrip(": ")
                continue
            except aiohttp.ClientError as exc:
                return self._failed(f"{type(exc).__name__}: {exc}")
            if _retryable(status):
                failure = f"HTTP {status}: {_excerpt(text)}"
                wait = max(wait, _seconds(retry_after))
                continue
            if status >= 400:
                return self._failed(f"HTTP {status}: {_excerpt(text)}")
            return self._parsed(status, text)
        attempts = config.max_retries + 1
        return self._failed(f"{failure} (after {attempts} attempt{'s' * (attempts > 1)})")

    def _parsed(self, status: int, text: str) -> _Answer:
        try:
            response = json.loads(text)
        except json.JSONDecodeError:
            return self._failed(f"HTTP {status}: the answer is not JSON: {_excerpt(text)}")
        if not isinstance(response, dict):
            return self._failed(f"HTTP {status}: the answer is not a JSON object: {_excerpt(text)}")
        usage = response.get("usage")
        if isinstance(usage, dict):
            self._stats.input_tokens += _count(usage.get("prompt_tokens"))
            self._stats.output_tokens += _count(usage.get("completion_tokens"))
        return _Answer(response, None)

    def _failed(self, message: str) -> _Answer:
        error = format_error(HttpRequestStage.name, HttpRequestFailed(message))
        return _Answer(None, self._config.redact(error))


def _excerpt(text: str) -> str:
    text = text.strip()
    if len(text) <= _MAX_BODY_IN_ERROR:
        return text or "(empty body)"
    return f"{text[:_MAX_BODY_IN_ERROR]}... ({len(text)} characters)"


def _seconds(retry_after: str | None) -> float:
    try:
        return max(float(retry_after or 0), 0.0)
    except ValueError:
        return 0.0


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class HttpRequestStage:
    """``payload`` -> ``http_response``: at most ``batch_size * concurrency`` requests in
    flight, rows handed on in input order. A row whose request gets no usable answer (after
    the retries) becomes an error row naming the status and body; rows that come with an
    error pass untouched."""

    name = "http_request"

    def __init__(
        self, config: HttpRequestProcessorConfig, current_stats: Callable[[], RunStats]
    ) -> None:
        self._config = config
        self._current_stats = current_stats

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        max_in_flight = self._config.max_in_flight
        window: deque[tuple[pa.Table, list[Any]]] = deque()
        in_flight: set[concurrent.futures.Future[_Answer]] = set()
        waiting = 0
        with HttpClient(self._config, self._current_stats()) as client:
            for block in blocks:
                table = as_table(block)
                errors = errors_of(table)
                answers: list[Any] = []
                for error, payload in zip(errors, column_values(table, PAYLOAD)):
                    if error is not None:
                        answers.append(None)
                        continue
                    try:
                        body = payload_body(payload)
                    except (TypeError, ValueError) as exc:
                        answers.append(_Answer(None, format_error(self.name, exc)))
                        continue
                    while len(in_flight) >= max_in_flight:
                        _, in_flight = concurrent.futures.wait(
                            in_flight, return_when=concurrent.futures.FIRST_COMPLETED
                        )
                    future = client.submit(body)
                    in_flight.add(future)
                    answers.append(future)
                window.append((table, answers))
                waiting += table.num_rows
                while window and (
                    _done(window[0][1]) or waiting > _WAITING_PER_IN_FLIGHT * max_in_flight
                ):
                    table, answers = window.popleft()
                    waiting -= table.num_rows
                    yield _with_answers(table, answers)
            while window:
                yield _with_answers(*window.popleft())


def _done(answers: list[Any]) -> bool:
    return all(not isinstance(a, concurrent.futures.Future) or a.done() for a in answers)


def _with_answers(table: pa.Table, answers: list[Any]) -> pa.Table:
    """The table with each row's answer (waiting for those still in flight)."""
    errors = errors_of(table)
    responses: list[dict[str, Any] | None] = []
    for i, answer in enumerate(answers):
        if isinstance(answer, concurrent.futures.Future):
            answer = answer.result()
        if answer is None:
            responses.append(None)
            continue
        responses.append(answer.response)
        errors[i] = answer.error
    if any(response is not None for response in responses):
        table = set_column(table, HTTP_RESPONSE, to_arrow(HTTP_RESPONSE, responses))
    else:
        table = set_column(table, HTTP_RESPONSE, pa.nulls(table.num_rows))
    return with_errors(table, errors)
