"""Batch files in and out: a JSON-lines file (local or http(s)) read as a Dataset of its
non-blank lines with their numbers, and finished output uploaded to a URL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pyarrow as pa

from llmbatch.data.dataset import Dataset
from llmbatch.data.files import resolve_files
from llmbatch.data.identity import digest

logger = logging.getLogger("llmbatch")

_CHUNK_BYTES = 1 << 20
_LINES_PER_BLOCK = 256
_UPLOAD_ATTEMPTS = 5
_UPLOAD_RETRY_WAIT_S = 5.0
_UPLOAD_TIMEOUT_S = 1000.0


def read_batch_file(path: str) -> Dataset:
    """The non-blank lines of one file, as rows ``{line: its 1-based number, text}``; a line
    that is not UTF-8 has ``text`` None. Read lazily, in blocks of 256 lines."""
    files = resolve_files(path)
    if len(files) != 1:
        raise ValueError(f"-i takes a single file, {path!r} names {len(files)}")
    [file] = files

    def lines() -> Iterator[tuple[int, str | None]]:
        number, pending = 0, b""
        with file.open_stream() as stream:
            while True:
                chunk = stream.read(_CHUNK_BYTES)
                pieces = (pending + chunk).split(b"\n")
                pending = pieces.pop() if chunk else b""
                for raw in pieces:
                    number += 1
                    if raw.strip():
                        yield number, _decoded(raw)
                if not chunk:
                    return

    def stream() -> Iterator[pa.Table]:
        block: list[tuple[int, str | None]] = []
        for item in lines():
            block.append(item)
            if len(block) == _LINES_PER_BLOCK:
                yield _table(block)
                block = []
        if block:
            yield _table(block)

    return Dataset(
        stream,
        name=f"read_batch_file({file.path})",
        identity=lambda: digest("read_batch_file", file.identity()),
    )


def _decoded(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def _table(block: list[tuple[int, str | None]]) -> pa.Table:
    return pa.table(
        {
            "line": pa.array([number for number, _ in block], pa.int64()),
            "text": pa.array([text for _, text in block], pa.string()),
        }
    )


def upload(files: list[str], url: str) -> None:
    """PUTs the files' bytes, joined, to `url`; retried a few times, as uploads of large files
    time out."""
    asyncio.run(_upload(files, url))


async def _upload(files: list[str], url: str) -> None:
    import aiohttp

    async def body() -> AsyncIterator[bytes]:
        for name in files:
            with open(name, "rb") as file:
                while chunk := file.read(_CHUNK_BYTES):
                    yield chunk

    timeout = aiohttp.ClientTimeout(total=_UPLOAD_TIMEOUT_S)
    for attempt in range(1, _UPLOAD_ATTEMPTS + 1):
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.put(url, data=body()) as response:
                    if response.status < 300:
                        return
                    text = await response.text()
                    message = f"HTTP {response.status}: {text[:500]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            message = f"{type(exc).__name__}: {exc}"
        if attempt == _UPLOAD_ATTEMPTS:
            raise OSError(f"cannot upload the output to {url} ({message})")
        logger.warning(
            "uploading to %s failed (%s); retrying in %.0f s", url, message, _UPLOAD_RETRY_WAIT_S
        )
        await asyncio.sleep(_UPLOAD_RETRY_WAIT_S)
