"""Readers of files that are not tables: ``read_text`` (a row per line), ``read_binary_files``
and ``read_images`` (a row per file) and ``read_numpy`` (a row per entry of an array's first
axis). Arguments and column names are Ray Data's."""

from __future__ import annotations

import codecs
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from llmbatch.data.batch_format import ndarray_to_arrow
from llmbatch.data.blocks import values_to_array
from llmbatch.data.dataset import Dataset
from llmbatch.data.extension_types import tensors_to_arrow
from llmbatch.data.file_sources import check_text, file_dataset, not_the_format
from llmbatch.data.files import Paths, SourceFile, resolve_files
from llmbatch.data.partitioning import Partitioning
from llmbatch.data.readers import BLOCK_BYTES

IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif"]
NUMPY_EXTENSIONS = ["npy"]
_CHUNK_BYTES = 1 << 20
_NUMPY_MAGIC = b"\x93NUMPY"


def read_text(
    paths: Paths,
    *,
    encoding: str = "utf-8",
    drop_empty_lines: bool = True,
    filesystem: Any = None,
    partitioning: Partitioning | None = None,
    include_paths: bool = False,
    ignore_missing_paths: bool = False,
    file_extensions: Sequence[str] | None = None,
) -> Dataset:
    """One row per line of text, in column ``"text"``, streamed in blocks of about 8 MiB.

    Lines end at ``\\n`` (a ``\\r`` before it is part of the line ending too); with
    ``drop_empty_lines``, lines holding nothing (or only spaces) are left out. Text that is not
    in ``encoding`` is an error naming the file and byte offset. ``paths`` and the other
    arguments are as in ``read_csv``.
    """
    codecs.lookup(encoding)
    files = resolve_files(paths, filesystem, file_extensions, ignore_missing_paths)

    def read_file(file: SourceFile) -> Any:
        decoder = codecs.getincrementaldecoder(encoding)()
        pending = ""
        offset = 0
        lines: list[str] = []
        size = 0
        with file.open_stream() as stream:
            while True:
                chunk = stream.read(_CHUNK_BYTES)
                if offset == 0 and encoding.lower().replace("-", "") in ("utf8", "ascii"):
                    check_text("read_text", file.path, "text", chunk[:4096])
                try:
                    text = decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as error:
                    raise ValueError(
                        f"read_text: {file.path} is not {encoding} text: byte "
                        f"{offset + error.start} cannot be decoded; give its encoding="
                    ) from None
                offset += len(chunk)
                pending += text
                *complete, pending = pending.split("\n")
                for line in complete:
                    line = line.removesuffix("\r")
                    if drop_empty_lines and not line.strip():
                        continue
                    lines.append(line)
                    size += len(line)
                if size >= BLOCK_BYTES:
                    yield pa.table({"text": pa.array(lines, pa.string())})
                    lines, size = [], 0
                if not chunk:
                    break
        last = pending.removesuffix("\r")
        if last and not (drop_empty_lines and not last.strip()):
            lines.append(last)
        yield pa.table({"text": pa.array(lines, pa.string())})

    return file_dataset(
        "read_text",
        files,
        read_file,
        include_paths=include_paths,
        partitioning=partitioning,
        settings={"encoding": encoding, "drop_empty_lines": drop_empty_lines},
    )


def read_binary_files(
    paths: Paths,
    *,
    include_paths: bool = False,
    filesystem: Any = None,
    partitioning: Partitioning | None = None,
    ignore_missing_paths: bool = False,
    file_extensions: Sequence[str] | None = None,
) -> Dataset:
    """One row per file: its bytes, in column ``"bytes"`` (and its path in ``"path"`` with
    ``include_paths``). Compressed files (``.gz``, ...) are read as they are, not unpacked."""
    files = resolve_files(paths, filesystem, file_extensions, ignore_missing_paths)

    def read_file(file: SourceFile) -> Any:
        yield pa.table({"bytes": pa.array([_read_bytes(file)], pa.large_binary())})

    return file_dataset(
        "read_binary_files",
        files,
        read_file,
        include_paths=include_paths,
        partitioning=partitioning,
    )


def read_images(
    paths: Paths,
    *,
    filesystem: Any = None,
    partitioning: Partitioning | None = None,
    size: tuple[int, int] | None = None,
    mode: str | None = None,
    include_paths: bool = False,
    ignore_missing_paths: bool = False,
    file_extensions: Sequence[str] | None = IMAGE_EXTENSIONS,
) -> Dataset:
    """One row per image file: the decoded picture as a numpy array of ``(height, width,
    channels)`` uint8 (``(height, width)`` for one channel), in column ``"image"``.

    Images are decoded as the vision path decodes them (RGB), then converted to ``mode`` (a PIL
    mode such as "L" or "RGBA") and resized to ``size`` = ``(height, width)`` when given. A file
    that is not an image is an error naming it; ``file_extensions`` (image extensions by
    default) chooses the files of a folder.
    """
    from llmbatch.data.images import ImageInputError, load_image

    if size is not None and (len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"read_images: size must be (height, width) in pixels, got {size!r}")
    files = resolve_files(paths, filesystem, file_extensions, ignore_missing_paths)

    def read_file(file: SourceFile) -> Any:
        try:
            image = load_image(_read_bytes(file))
        except ImageInputError as error:
            raise not_the_format("read_images", file.path, "image", str(error)) from None
        if mode is not None and image.mode != mode:
            image = image.convert(mode)
        if size is not None:
            image = image.resize((size[1], size[0]))
        yield pa.table({"image": tensors_to_arrow([np.asarray(image)])})

    return file_dataset(
        "read_images",
        files,
        read_file,
        include_paths=include_paths,
        partitioning=partitioning,
        settings={"size": size, "mode": mode},
    )


def read_numpy(
    paths: Paths,
    *,
    filesystem: Any = None,
    partitioning: Partitioning | None = None,
    include_paths: bool = False,
    ignore_missing_paths: bool = False,
    file_extensions: Sequence[str] | None = NUMPY_EXTENSIONS,
    allow_pickle: bool = False,
    **numpy_load_args: Any,
) -> Dataset:
    """One row per entry of each ``.npy`` file's first axis, in column ``"data"``: a number for
    a 1-D array, a numpy array of the other axes' shape and the file's dtype otherwise.
    ``numpy_load_args`` go to ``numpy.load``; ``allow_pickle`` as there."""
    files = resolve_files(paths, filesystem, file_extensions, ignore_missing_paths)

    def read_file(file: SourceFile) -> Any:
        raw = _read_bytes(file)
        if not raw.startswith(_NUMPY_MAGIC):
            raise not_the_format("read_numpy", file.path, ".npy", "no numpy header")
        array = np.load(io.BytesIO(raw), allow_pickle=allow_pickle, **numpy_load_args)
        if array.ndim == 0:
            array = array.reshape(1)
        rows = max(1, BLOCK_BYTES // max(array[:1].nbytes, 1))
        for start in range(0, max(len(array), 1), rows):
            piece = array[start : start + rows]
            yield pa.table({"data": _column(piece)})

    return file_dataset(
        "read_numpy",
        files,
        read_file,
        include_paths=include_paths,
        partitioning=partitioning,
    )


def _column(array: np.ndarray) -> pa.Array:
    if array.dtype.hasobject:
        return values_to_array("data", list(array))
    return ndarray_to_arrow(array)


def _read_bytes(file: SourceFile) -> bytes:
    with file.open_random_access() as stream:
        return stream.read()
