"""Writing a stream of blocks into a folder of Parquet, CSV or JSON-lines files.

One file per non-empty block by default, as in Ray Data, so ``repartition`` sets the file count;
``min_rows_per_file`` joins consecutive blocks and ``max_rows_per_file`` splits them. Files are
named ``{write id}_{index:06d}.{ext}``, so sorting the names gives back the input order, and each
is streamed to a hidden temporary name and renamed when complete. An empty dataset writes one
file holding only the schema, so that reading the folder back gives its columns.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import io
import json
import os
import uuid
from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from llmbatch.data.batch_format import column_to_numpy
from llmbatch.data.blocks import conform, unify_schemas
from llmbatch.data.extension_types import column_values, is_tensor_type, table_rows
from llmbatch.data.files import DiskFullError, OutputFolder, PathLike, is_disk_full

_ROWS_PER_JSON_CHUNK = 1024
# Lines of text, one per row: the ``text`` column written as it is.
TEXT_FORMAT = "text"
TEXT_COLUMN = "text"


class _FileWriter(Protocol):
    def write(self, table: pa.Table) -> None: ...

    def close(self) -> None: ...


def write_blocks(
    blocks: Iterable[pa.Table],
    path: PathLike,
    file_format: str,
    *,
    filesystem: Any = None,
    min_rows_per_file: int | None = None,
    max_rows_per_file: int | None = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Writes ``blocks`` under the folder ``path`` as ``file_format`` ("parquet", "csv", "json")."""
    _check_file_sizes(min_rows_per_file, max_rows_per_file)
    files = _FileSequence(OutputFolder.create(path, filesystem), file_format, options or {})
    try:
        _write_all(files, blocks, min_rows_per_file, max_rows_per_file)
    except OSError as error:
        if not is_disk_full(error):
            raise
        raise DiskFullError(
            error.errno,
            f"the disk holding {path} is full ({os.strerror(error.errno)}): {files.done} "
            f"file(s) were written whole and the unfinished one was removed; free some space "
            f"and write again (overwrite=True replaces what was written)",
        ) from error


def _write_all(
    files: _FileSequence,
    blocks: Iterable[pa.Table],
    min_rows_per_file: int | None,
    max_rows_per_file: int | None,
) -> None:
    schema: pa.Schema | None = None
    with files:
        for block in blocks:
            schema = block.schema if schema is None else unify_schemas([schema, block.schema])
            offset = 0
            while offset < block.num_rows:
                take = block.num_rows - offset
                if max_rows_per_file is not None:
                    take = min(take, max_rows_per_file - files.rows_in_file)
                files.write(block.slice(offset, take), schema)
                offset += take
                if max_rows_per_file is not None and files.rows_in_file >= max_rows_per_file:
                    files.finish()
            if files.rows_in_file >= (min_rows_per_file or 1):
                files.finish()
        if files.count == 0 and schema is not None:
            files.write(schema.empty_table(), schema)


class _FileSequence:
    """The numbered files of one write; a file ends early when the schema must change in it."""

    def __init__(self, folder: OutputFolder, file_format: str, options: dict[str, Any]) -> None:
        self._folder = folder
        self._format = file_format
        self._options = options
        self._write_id = uuid.uuid4().hex
        self._open_file = ExitStack()
        self._writer: _FileWriter | None = None
        self._schema: pa.Schema | None = None
        self.count = 0
        self.done = 0
        self.rows_in_file = 0

    def write(self, table: pa.Table, schema: pa.Schema) -> None:
        """Writes ``table`` into the current file; ``schema`` unifies everything seen so far."""
        if self._writer is not None and self._format != "json" and not schema.equals(self._schema):
            self.finish()
        if self._writer is None:
            name = f"{self._write_id}_{self.count:06d}.{self._format}"
            stream = self._open_file.enter_context(self._folder.atomic_file(name))
            self._writer = _open_writer(self._format, stream, schema, self._options)
            self._schema = schema
            self.count += 1
            self.rows_in_file = 0
        self._writer.write(table if self._format == "json" else conform(table, self._schema))
        self.rows_in_file += table.num_rows

    def finish(self) -> None:
        """Completes the current file, if any: it appears under its final name."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._open_file.close()
            self.done += 1
        self.rows_in_file = 0

    def __enter__(self) -> _FileSequence:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *rest: Any) -> None:
        if error_type is None:
            self.finish()
        else:
            self._open_file.__exit__(error_type, *rest)


def _check_file_sizes(min_rows: int | None, max_rows: int | None) -> None:
    for name, value in (("min_rows_per_file", min_rows), ("max_rows_per_file", max_rows)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if min_rows is not None and max_rows is not None and min_rows > max_rows:
        raise ValueError(
            f"min_rows_per_file ({min_rows}) is larger than max_rows_per_file ({max_rows})"
        )


def _open_writer(
    file_format: str, stream: pa.NativeFile, schema: pa.Schema, options: dict[str, Any]
) -> _FileWriter:
    if file_format == "parquet":
        return pq.ParquetWriter(stream, schema, **options)
    if file_format == "csv":
        return _CsvWriter(stream, schema, options)
    if file_format == TEXT_FORMAT:
        return _TextLinesWriter(stream)
    if file_format == "npy":
        return _NumpyWriter(stream, options["column"])
    return _JsonLinesWriter(stream)


def write_table(stream: pa.NativeFile, table: pa.Table, file_format: str, options: dict) -> None:
    """Writes ``table`` whole as one file of ``file_format`` into ``stream``."""
    writer = _open_writer(file_format, stream, table.schema, options)
    writer.write(table)
    writer.close()


def _is_bytes(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_fixed_size_binary(data_type)
    )


def as_csv_text(table: pa.Table) -> pa.Table:
    """Lists, structs and maps as JSON text and bytes (e.g. images) as base64, which CSV can
    store; bytes inside JSON are base64 too, as write_json writes them."""
    for index, column in enumerate(table.schema):
        if pa.types.is_nested(column.type) or is_tensor_type(column.type):
            text = [
                None if value is None else json.dumps(value, default=_json_value)
                for value in column_values(table.column(index))
            ]
        elif _is_bytes(column.type):
            text = [
                None if value is None else _json_value(value)
                for value in table.column(index).to_pylist()
            ]
        else:
            continue
        table = table.set_column(index, column.name, pa.array(text, pa.string()))
    return table


def _csv_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        pa.field(f.name, pa.string())
        if pa.types.is_nested(f.type) or _is_bytes(f.type) or is_tensor_type(f.type)
        else f
        for f in schema
    )


class _CsvWriter:
    """CSV with nested columns (lists, structs) stored as JSON text and bytes as base64."""

    def __init__(self, stream: pa.NativeFile, schema: pa.Schema, options: dict[str, Any]) -> None:
        self._schema = _csv_schema(schema)
        self._writer = pacsv.CSVWriter(stream, self._schema, **options)

    def write(self, table: pa.Table) -> None:
        self._writer.write(conform(as_csv_text(table), self._schema))

    def close(self) -> None:
        self._writer.close()


class _JsonLinesWriter:
    """One JSON object per line; dates as ISO strings, bytes as base64, decimals as numbers."""

    def __init__(self, stream: pa.NativeFile) -> None:
        self._stream = stream

    def write(self, table: pa.Table) -> None:
        for batch in table.to_batches(max_chunksize=_ROWS_PER_JSON_CHUNK):
            lines = "".join(
                json.dumps(row, ensure_ascii=False, default=_json_value) + "\n"
                for row in table_rows(batch)
            )
            self._stream.write(lines.encode())

    def close(self) -> None:
        """The stream is closed by the folder, which then renames the file."""


class _TextLinesWriter:
    """The ``text`` column as lines, each written as it is (e.g. JSON built by the caller)."""

    def __init__(self, stream: pa.NativeFile) -> None:
        self._stream = stream

    def write(self, table: pa.Table) -> None:
        if TEXT_COLUMN not in table.column_names:
            raise ValueError(
                f"the {TEXT_FORMAT!r} format writes the {TEXT_COLUMN!r} column; the table has "
                f"{table.column_names}"
            )
        lines = table.column(TEXT_COLUMN).to_pylist()
        if any(line is None or "\n" in line for line in lines):
            raise ValueError(f"{TEXT_COLUMN!r} values must be single lines of text")
        self._stream.write("".join(line + "\n" for line in lines).encode())

    def close(self) -> None:
        """The stream is closed by the folder, which then renames the file."""


class _NumpyWriter:
    """One column's values stacked into one array, written as a ``.npy`` file when closed."""

    def __init__(self, stream: pa.NativeFile, column: str) -> None:
        self._stream = stream
        self._column = column
        self._pieces: list[np.ndarray] = []

    def write(self, table: pa.Table) -> None:
        if self._column not in table.column_names:
            raise KeyError(
                f"write_numpy: no column {self._column!r}; the columns are {table.column_names}"
            )
        values = column_to_numpy(table.column(self._column))
        if values.dtype == np.dtype(object):
            shapes = {getattr(value, "shape", None) for value in values}
            if len(shapes) > 1 or None in shapes:
                raise ValueError(
                    f"write_numpy: column {self._column!r} holds values of different shapes "
                    f"or nulls; a .npy file holds one array of one shape"
                )
            values = np.stack(list(values)) if len(values) else values
        self._pieces.append(values)

    def close(self) -> None:
        array = np.concatenate(self._pieces) if len(self._pieces) > 1 else self._pieces[0]
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        self._stream.write(buffer.getvalue())


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"write_json cannot store a value of type {type(value).__name__}: {value!r}")
