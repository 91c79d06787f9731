"""Images in every form a row may give one: loaded and decoded as RGB PIL images.

An image is a PIL image, encoded bytes (PNG, JPEG, WebP, ...), a ``{"bytes": ..., "path": ...}``
dict as Hugging Face ``datasets`` stores an ``Image()`` column, a file path (str or Path), an
http(s) URL or a base64 ``data:`` URL.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image, UnidentifiedImageError

IMAGE_FETCH_TIMEOUT_S = 30.0
ACCEPTED_IMAGES = (
    "a PIL image, encoded image bytes, a {'bytes': ..., 'path': ...} dict, a file path, an "
    "http(s) URL or a data:image/...;base64 URL"
)


class ImageInputError(ValueError):
    """An image value that is not an image, or that cannot be read or decoded."""


def load_image(value: Any, timeout: float = IMAGE_FETCH_TIMEOUT_S) -> Image.Image:
    """`value` (any accepted form of an image) as a decoded RGB PIL image.

    http(s) URLs are fetched with `timeout` seconds to connect and for each read. Raises
    ImageInputError saying what was given and why it cannot be used.
    """
    if isinstance(value, Image.Image):
        return _to_rgb(value, f"the PIL image ({value.mode} {value.size[0]}x{value.size[1]})")
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return _decode(data, f"{len(data)} bytes")
    if isinstance(value, Mapping):
        return _load_stored_image(value, timeout)
    if isinstance(value, os.PathLike):
        return _read_file(os.fspath(value))
    if isinstance(value, str):
        return _load_address(value, timeout)
    raise ImageInputError(f"got {_describe(value)}; an image must be {ACCEPTED_IMAGES}")


def _load_stored_image(value: Mapping[str, Any], timeout: float) -> Image.Image:
    if not set(value) <= {"bytes", "path"}:
        raise ImageInputError(
            f"got a dict with keys {sorted(map(str, value))}; an image dict holds 'bytes' "
            "(encoded image) and/or 'path' (a file or URL), as Hugging Face datasets store images"
        )
    if value.get("bytes") is not None:
        return load_image(value["bytes"], timeout)
    if value.get("path") is not None:
        return load_image(value["path"], timeout)
    raise ImageInputError("got an image dict whose 'bytes' and 'path' are both empty")


def _load_address(address: str, timeout: float) -> Image.Image:
    if address.startswith("data:"):
        return _decode(_data_url_bytes(address), f"the data URL {_shorten(address)}")
    scheme = urlsplit(address).scheme.lower()
    if scheme in ("http", "https"):
        data = _fetch(address, timeout)
        return _decode(data, f"{len(data)} bytes from {address}")
    if scheme == "file":
        return _read_file(unquote(urlsplit(address).path))
    if len(scheme) > 1 and "://" in address:
        raise ImageInputError(
            f"cannot read {address}: {scheme}:// URLs are not read as images; give an http(s) "
            "URL, a data URL, a local path, or the image's bytes"
        )
    return _read_file(address)


def _data_url_bytes(url: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise ImageInputError(
            f"the data URL {_shorten(url)} is not base64-encoded: give it as "
            "data:image/png;base64,<base64 of the file>"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise ImageInputError(f"the data URL {_shorten(url)} has invalid base64: {exc}") from exc


def _fetch(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "llmbatch"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise ImageInputError(
            f"cannot fetch {url}: HTTP {exc.code} {exc.reason}; check that the URL is right and "
            "public"
        ) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            reason = f"no answer within {timeout:g} s"
        raise ImageInputError(
            f"cannot fetch {url}: {reason}; check the address and that the server is reachable"
        ) from exc


def _read_file(path: str) -> Image.Image:
    try:
        data = Path(path).expanduser().read_bytes()
    except FileNotFoundError as exc:
        raise ImageInputError(
            f"no file {path!r}; a string image is a file path or an http(s) or data URL"
        ) from exc
    except OSError as exc:
        raise ImageInputError(f"cannot read the file {path!r}: {exc.strerror or exc}") from exc
    return _decode(data, f"the file {path!r}")


def _decode(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageInputError(
            f"cannot decode {what}: cannot identify image file (not PNG, JPEG, WebP, GIF or "
            "another format Pillow reads)"
        ) from exc
    except Exception as exc:
        raise ImageInputError(f"cannot decode {what}: {exc}") from exc
    return _to_rgb(image, what)


def _to_rgb(image: Image.Image, what: str) -> Image.Image:
    # Decoding is lazy in PIL: a truncated or corrupt file only fails when its pixels are read.
    try:
        return image.convert("RGB")
    except Exception as exc:
        raise ImageInputError(f"cannot decode {what}: {exc}") from exc


def _describe(value: Any) -> str:
    return f"a {type(value).__name__} ({_shorten(repr(value))})"


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
