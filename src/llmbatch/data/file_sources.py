"""Datasets read from files: one lazy stream over the files in order, each block carrying the
file's partition values and (with ``include_paths``) its path; and the check that a file is in
the format its reader expects."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from llmbatch.data.blocks import Stream
from llmbatch.data.dataset import Dataset
from llmbatch.data.files import SourceFile
from llmbatch.data.identity import digest
from llmbatch.data.partitioning import Partitioning, with_partitions
from llmbatch.data.plan import PlanInfo


def file_dataset(
    name: str,
    files: list[SourceFile],
    read_file: Callable[[SourceFile], Stream],
    *,
    include_paths: bool = False,
    partitioning: Any = None,
    count_file: Callable[[SourceFile, int | None], int] | None = None,
    settings: dict[str, Any] | None = None,
) -> Dataset:
    """The dataset of ``read_file`` over ``files``; ``settings`` (plain values of the reader's
    options that change the rows) go into its fingerprint."""
    partitions = Partitioning.of(partitioning)
    extras: list[Any] = []
    if partitions is not None and partitions != Partitioning("hive"):
        extras.append(repr(partitions))
    if settings:
        extras.append(settings)

    def stream() -> Stream:
        for file in files:
            values = {} if partitions is None else partitions.values(file.path)
            for table in read_file(file):
                if values:
                    table = with_partitions(table, values, file.path)
                yield with_path(table, file.path) if include_paths else table

    def count_by_reading(file: SourceFile, stop_at: int | None) -> int:
        return _count(read_file(file), stop_at)

    def count_rows(stop_at: int | None) -> int:
        total = 0
        for file in files:
            total += (count_file or count_by_reading)(
                file, None if stop_at is None else stop_at - total
            )
            if stop_at is not None and total >= stop_at:
                return stop_at
        return total

    return Dataset(
        stream,
        name=f"{name}({len(files)} file{'' if len(files) == 1 else 's'})",
        info=PlanInfo(count_rows=count_rows),
        identity=lambda: digest(name, include_paths, [f.identity() for f in files], *extras),
        input_files=[file.path for file in files],
    )


def _count(tables: Iterator[pa.Table], stop_at: int | None) -> int:
    total = 0
    for table in tables:
        total += table.num_rows
        if stop_at is not None and total >= stop_at:
            return stop_at
    return total


def with_path(table: pa.Table, path: str) -> pa.Table:
    if "path" in table.column_names:
        raise ValueError(f"include_paths=True: {path} already has a column named 'path'")
    return table.append_column("path", pa.array([path] * table.num_rows, pa.string()))


class NotTheFormatError(ValueError):
    """A file given to a reader is not in that reader's format."""


def not_the_format(reader: str, path: str, file_format: str, why: str) -> NotTheFormatError:
    return NotTheFormatError(
        f"{reader}: {path} is not a {file_format} file ({why}); to read only some files of a "
        f"folder, pass file_extensions=[...]"
    )


def check_text(reader: str, path: str, file_format: str, head: bytes) -> None:
    """Text formats hold no NUL byte; a file that does is binary (Parquet, an image, ...)."""
    if b"\x00" in head:
        kind = "a Parquet file" if head.startswith(b"PAR1") else "binary data"
        raise not_the_format(reader, path, file_format, f"it holds {kind}")
