"""Reading CSV, JSON and Parquet files as a lazy stream of blocks."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from llmbatch.data.blocks import Stream, coalesce, rows_to_table
from llmbatch.data.csv_checks import (
    BadLineCollector,
    BadLines,
    check_bad_lines_mode,
    check_text_columns,
    with_bad_line_handler,
)
from llmbatch.data.dataset import Dataset
from llmbatch.data.files import Paths, SourceFile, resolve_files
from llmbatch.data.identity import digest
from llmbatch.data.plan import PlanInfo

# Blocks hold about this much data: large enough for few files per write, small enough to bound
# memory. CSV is parsed in pyarrow's default 1 MiB pieces, joined up to it: pyarrow's streaming
# CSV reader parses dozens of pieces ahead, so larger pieces would multiply memory.
BLOCK_BYTES = 8 << 20
PARQUET_BLOCK_ROWS = 131_072
_ROWS_PER_JSON_ARRAY_BLOCK = 65_536
_COMPRESSED = ("", ".gz", ".bz2", ".zst", ".lz4")
CSV_EXTENSIONS = tuple(".csv" + suffix for suffix in _COMPRESSED)
JSON_EXTENSIONS = tuple(
    ext + suffix for ext in (".json", ".jsonl", ".ndjson") for suffix in _COMPRESSED
)
PARQUET_EXTENSIONS = (".parquet",)


def read_csv(
    paths: Paths,
    *,
    filesystem: Any = None,
    read_options: pacsv.ReadOptions | None = None,
    parse_options: pacsv.ParseOptions | None = None,
    convert_options: pacsv.ConvertOptions | None = None,
    include_paths: bool = False,
    file_extensions: Sequence[str] | None = None,
    on_bad_lines: BadLines = "error_row",
) -> Dataset:
    """Reads CSV files lazily, block by block (``pyarrow.csv.open_csv``); never a whole file.

    ``paths``: a file, a folder (its ``.csv`` files, recursively), a glob, an http(s) URL, an
    fsspec URL (``s3://...`` when s3fs is installed) or a list of these; ``filesystem`` a pyarrow
    or fsspec filesystem for them. The options are pyarrow's. Column types are inferred from the
    first block; when a later block disagrees, the error names the column to fix with
    ``convert_options=pyarrow.csv.ConvertOptions(column_types={...})``. Blocks hold about 8 MiB;
    with ``read_options`` given, each block is one ``read_options.block_size`` piece instead
    (pyarrow parses a few dozen pieces ahead, so memory grows with the piece size).
    ``include_paths`` adds a "path" column naming each row's file.

    A malformed line (too many or too few fields), with ``on_bad_lines``: ``"error_row"`` (the
    default) gives a row with every column null and an ``error`` column naming the file, the
    line and the fault, placed after the good rows of its file (an LLM processor passes it
    through as an error row); ``"fail"`` raises an error naming the file and line; ``"skip"``
    drops it with a warning counting the skipped lines. A ``parse_options.invalid_row_handler``
    of your own replaces all three. An empty file has no columns and no rows. Text that is not
    valid UTF-8 (and no ``encoding`` given) is an error naming the file, line and byte offset.
    """
    check_bad_lines_mode(on_bad_lines)
    files = resolve_files(paths, filesystem, _extensions(file_extensions, CSV_EXTENSIONS))
    join_pieces = read_options is None
    names_known = convert_options is None or not convert_options.include_columns
    read_options = read_options or pacsv.ReadOptions()

    def read_file(file: SourceFile) -> Stream:
        bad_lines = BadLineCollector(file.path, on_bad_lines)
        read, parse = with_bad_line_handler(read_options, parse_options, bad_lines)
        with file.open_stream() as stream:
            try:
                reader = pacsv.open_csv(stream, read, parse, convert_options)
            except pa.ArrowInvalid as error:
                if str(error) == "Empty CSV file":
                    yield pa.table({})
                    return
                raise ValueError(_csv_error(error, file.path, None)) from error
            tables = _csv_tables(reader, file.path, names_known)
            for table in (
                coalesce(tables, attrgetter("nbytes"), BLOCK_BYTES) if join_pieces else tables
            ):
                check_text_columns(table, convert_options, file.path, file.open_stream)
                yield table
            error_rows = bad_lines.error_rows(reader.schema)
            if error_rows is not None:
                yield error_rows

    return _file_dataset("read_csv", files, read_file, include_paths)


def _csv_tables(reader: pacsv.CSVStreamingReader, path: str, names_known: bool) -> Stream:
    any_rows = False
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as error:
            names = reader.schema.names if names_known else None
            raise ValueError(_csv_error(error, path, names)) from error
        any_rows = True
        yield pa.Table.from_batches([batch])
    if not any_rows:
        yield reader.schema.empty_table()


def _csv_error(error: pa.ArrowInvalid, path: str, names: list[str] | None) -> str:
    """pyarrow names the column by its position in the file; the fix needs its name."""
    message = f"Cannot read CSV {path}: {error}"
    if "CSV parse error" in str(error):
        return (
            f"{message} (Row #N is line N of the file); fix that line, or read with "
            f'on_bad_lines="error_row" or "skip"'
        )
    match = re.search(r"column #(\d+)", str(error))
    if match is None:
        return message
    position = int(match.group(1))
    column = names[position] if names and position < len(names) else f"#{position}"
    return (
        f"{message}. Column types are inferred from the first block; set column {column!r} "
        f"with convert_options=pyarrow.csv.ConvertOptions(column_types={{...: pyarrow.string()}})"
    )


def read_json(
    paths: Paths,
    *,
    filesystem: Any = None,
    read_options: pajson.ReadOptions | None = None,
    parse_options: pajson.ParseOptions | None = None,
    include_paths: bool = False,
    file_extensions: Sequence[str] | None = None,
) -> Dataset:
    """Reads JSON-lines files lazily, in blocks of whole lines parsed by ``pyarrow.json``.

    Types are inferred per block and unified across blocks. A file holding one JSON array
    (``[{...}, ...]``) is also accepted, but is parsed whole: use JSON lines for large data.
    ``paths``, ``filesystem``, ``include_paths`` and ``file_extensions`` are as in ``read_csv``.
    """
    files = resolve_files(paths, filesystem, _extensions(file_extensions, JSON_EXTENSIONS))
    read_options = read_options or pajson.ReadOptions(block_size=BLOCK_BYTES)
    block_bytes = read_options.block_size

    def read_file(file: SourceFile) -> Stream:
        with file.open_stream() as stream:
            first = stream.read(block_bytes)
            if first.lstrip()[:1] == b"[":
                yield from _json_array_tables(first + stream.read(), file.path)
                return
            pending = first
            while True:
                cut = pending.rfind(b"\n")
                if cut >= 0:
                    if pending[:cut].strip():
                        yield _parse_json_lines(
                            pending[: cut + 1], read_options, parse_options, file.path
                        )
                    pending = pending[cut + 1 :]
                chunk = stream.read(block_bytes)
                if not chunk:
                    break
                pending += chunk
            if pending.strip():
                yield _parse_json_lines(pending, read_options, parse_options, file.path)

    return _file_dataset("read_json", files, read_file, include_paths)


def _parse_json_lines(
    data: bytes,
    read_options: pajson.ReadOptions,
    parse_options: pajson.ParseOptions | None,
    path: str,
) -> pa.Table:
    # One parse block per chunk: the chunk ends on a line break, so no line is ever cut.
    options = pajson.ReadOptions(use_threads=read_options.use_threads, block_size=len(data) + 1)
    try:
        return pajson.read_json(pa.BufferReader(data), options, parse_options)
    except pa.ArrowInvalid as error:
        raise ValueError(
            f"Cannot read JSON {path}: {error}. To fix a column's type, pass "
            f"parse_options=pyarrow.json.ParseOptions(explicit_schema=...)"
        ) from error


def _json_array_tables(data: bytes, path: str) -> Stream:
    try:
        rows = json.loads(data)
    except json.JSONDecodeError as error:
        raise ValueError(f"Cannot read JSON {path}: {error}") from error
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"Cannot read JSON {path}: the array must hold only objects (rows)")
    for start in range(0, len(rows), _ROWS_PER_JSON_ARRAY_BLOCK):
        yield rows_to_table(rows[start : start + _ROWS_PER_JSON_ARRAY_BLOCK])


def read_parquet(
    paths: Paths,
    *,
    filesystem: Any = None,
    columns: Sequence[str] | None = None,
    include_paths: bool = False,
    file_extensions: Sequence[str] | None = None,
) -> Dataset:
    """Reads Parquet files lazily, a row group (at most 131,072 rows) at a time.

    ``columns`` reads only those columns. ``count()`` comes from the files' metadata.
    ``paths``, ``filesystem``, ``include_paths`` and ``file_extensions`` are as in ``read_csv``.
    """
    files = resolve_files(paths, filesystem, _extensions(file_extensions, PARQUET_EXTENSIONS))
    selected = None if columns is None else list(columns)

    def read_file(file: SourceFile) -> Stream:
        with file.open_random_access() as source:
            parquet = pq.ParquetFile(source)
            missing = [name for name in selected or () if name not in parquet.schema_arrow.names]
            if missing:
                raise KeyError(
                    f"read_parquet: {file.path} has no column(s) {missing}; "
                    f"its columns are {parquet.schema_arrow.names}"
                )
            any_rows = False
            for group in range(parquet.num_row_groups):
                batches = parquet.iter_batches(
                    PARQUET_BLOCK_ROWS, row_groups=[group], columns=selected
                )
                for batch in batches:
                    any_rows = True
                    yield pa.Table.from_batches([batch])
            if not any_rows:
                yield _select(parquet.schema_arrow.empty_table(), selected)

    def count_file(file: SourceFile, stop_at: int | None) -> int:
        with file.open_random_access() as source:
            return pq.ParquetFile(source).metadata.num_rows

    return _file_dataset("read_parquet", files, read_file, include_paths, count_file)


def _select(table: pa.Table, columns: list[str] | None) -> pa.Table:
    return table if columns is None else table.select(columns)


def _extensions(given: Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    if given is None:
        return tuple(default)
    if isinstance(given, str):
        given = [given]
    return tuple(ext if ext.startswith(".") else "." + ext for ext in given)


def _file_dataset(
    name: str,
    files: list[SourceFile],
    read_file: Callable[[SourceFile], Stream],
    include_paths: bool,
    count_file: Callable[[SourceFile, int | None], int] | None = None,
) -> Dataset:
    def stream() -> Stream:
        for file in files:
            for table in read_file(file):
                yield _with_path(table, file.path) if include_paths else table

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
        identity=lambda: digest(name, include_paths, [file.identity() for file in files]),
    )


def _count(tables: Iterator[pa.Table], stop_at: int | None) -> int:
    total = 0
    for table in tables:
        total += table.num_rows
        if stop_at is not None and total >= stop_at:
            return stop_at
    return total


def _with_path(table: pa.Table, path: str) -> pa.Table:
    if "path" in table.column_names:
        raise ValueError(f"include_paths=True: {path} already has a column named 'path'")
    return table.append_column("path", pa.array([path] * table.num_rows, pa.string()))
