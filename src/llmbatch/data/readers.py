"""Reading CSV, JSON and Parquet files as a lazy stream of blocks."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
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
    QuoteResync,
    check_bad_lines_mode,
    check_text_columns,
    resynchronises,
    with_bad_line_handler,
)
from llmbatch.data.dataset import Dataset
from llmbatch.data.file_sources import check_text, file_dataset, not_the_format
from llmbatch.data.files import Paths, SourceFile, resolve_files
from llmbatch.data.partitioning import Partitioning

# Blocks hold about this much data: large enough for few files per write, small enough to bound
# memory. CSV is parsed in pyarrow's default 1 MiB pieces, joined up to it: pyarrow's streaming
# CSV reader parses dozens of pieces ahead, so larger pieces would multiply memory.
BLOCK_BYTES = 8 << 20
PARQUET_BLOCK_ROWS = 131_072
_ROWS_PER_JSON_ARRAY_BLOCK = 65_536
HIVE = Partitioning("hive")
CSV_EXTENSIONS = tuple(".csv" + suffix for suffix in ("", ".gz", ".bz2", ".zst", ".lz4"))


def read_csv(
    paths: Paths,
    *,
    filesystem: Any = None,
    read_options: pacsv.ReadOptions | None = None,
    parse_options: pacsv.ParseOptions | None = None,
    convert_options: pacsv.ConvertOptions | None = None,
    include_paths: bool = False,
    file_extensions: Sequence[str] | None = None,
    partitioning: Partitioning | None = HIVE,
    ignore_missing_paths: bool = False,
    on_bad_lines: BadLines = "error_row",
) -> Dataset:
    """Reads CSV files lazily, block by block (``pyarrow.csv.open_csv``); never a whole file.

    ``paths``: a file, a folder (every file in it, recursively, but hidden ones: a file that is
    not CSV is an error naming it, so filter with ``file_extensions=["csv"]``), a glob, an
    http(s) URL, an fsspec URL (``s3://...`` when s3fs is installed) or a list of these;
    ``filesystem`` a pyarrow or fsspec filesystem for them. Folders named ``key=value`` give
    each row of their files a ``key`` column (``partitioning``, see ``Partitioning``; None
    turns it off). ``ignore_missing_paths`` skips paths that do not exist. The options are
    pyarrow's. Column types are inferred from the
    first block; when a later block disagrees, the error names the column to fix with
    ``convert_options=pyarrow.csv.ConvertOptions(column_types={...})``. Blocks hold about 8 MiB;
    with ``read_options`` given, each block is one ``read_options.block_size`` piece instead
    (pyarrow parses a few dozen pieces ahead, so memory grows with the piece size).
    ``include_paths`` adds a "path" column naming each row's file.

    A malformed line (too many or too few fields, or a quote it opens and does not close), with
    ``on_bad_lines``: ``"error_row"`` (the
    default) gives a row with every column null and an ``error`` column naming the file, the
    line and the fault, placed after the good rows of its file (an LLM processor passes it
    through as an error row); ``"fail"`` raises an error naming the file and line; ``"skip"``
    drops it with a warning counting the skipped lines. The rows after an unterminated quote
    are read as usual (unless ``newlines_in_values`` lets values span lines). A
    ``parse_options.invalid_row_handler`` of your own replaces all three. An empty file has no columns and no rows. Text that is not
    valid UTF-8 (and no ``encoding`` given) is an error naming the file, line and byte offset.
    """
    check_bad_lines_mode(on_bad_lines)
    _check_block_size("read_csv", read_options)
    files = resolve_files(paths, filesystem, file_extensions, ignore_missing_paths)
    join_pieces = read_options is None
    names_known = convert_options is None or not convert_options.include_columns
    read_options = read_options or pacsv.ReadOptions()
    columns = _SameColumns("read_csv", "CSV", CSV_EXTENSIONS)

    def read_file(file: SourceFile) -> Stream:
        bad_lines = BadLineCollector(file.path, on_bad_lines)
        read, parse = with_bad_line_handler(read_options, parse_options, bad_lines)
        with file.open_stream() as raw:
            stream: Any = raw
            if resynchronises(read, parse):
                stream = QuoteResync(
                    raw,
                    parse,
                    read,
                    bad_lines,
                    lambda head: check_text("read_csv", file.path, "CSV", head[:4096]),
                )
                bad_lines.line_of = stream.original_line
            try:
                reader = pacsv.open_csv(stream, read, parse, convert_options)
            except pa.ArrowInvalid as error:
                if str(error) == "Empty CSV file":
                    yield pa.table({})
                    return
                if not file.path.lower().endswith(CSV_EXTENSIONS):
                    raise not_the_format("read_csv", file.path, "CSV", str(error)) from error
                raise ValueError(_csv_error(error, file.path, None)) from error
            columns.check(file.path, reader.schema.names)
            tables = _csv_tables(reader, file.path, names_known)
            for table in (
                coalesce(tables, attrgetter("nbytes"), BLOCK_BYTES) if join_pieces else tables
            ):
                check_text_columns(table, convert_options, file.path, file.open_stream)
                yield table
            error_rows = bad_lines.error_rows(reader.schema)
            if error_rows is not None:
                yield error_rows

    return file_dataset(
        "read_csv",
        files,
        read_file,
        include_paths=include_paths,
        partitioning=partitioning,
        settings={"on_bad_lines": on_bad_lines},
    )


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
    partitioning: Partitioning | None = HIVE,
    ignore_missing_paths: bool = False,
) -> Dataset:
    """Reads JSON-lines files lazily, in blocks of whole lines parsed by ``pyarrow.json``.

    Types are inferred per block and unified across blocks. A file holding one JSON array
    (``[{...}, ...]``) is also accepted, but is parsed whole: use JSON lines for large data.
    ``paths``, ``filesystem``, ``include_paths``, ``file_extensions``, ``partitioning`` and
    ``ignore_missing_paths`` are as in ``read_csv``.
    """
    _check_block_size("read_json", read_options)
    files = resolve_files(paths, filesystem, file_extensions, ignore_missing_paths)
    read_options = read_options or pajson.ReadOptions(block_size=BLOCK_BYTES)
    block_bytes = read_options.block_size

    def read_file(file: SourceFile) -> Stream:
        with file.open_stream() as stream:
            first = stream.read(block_bytes)
            check_text("read_json", file.path, "JSON", first[:4096])
            start = first.lstrip()[:1]
            if start and start not in (b"{", b"["):
                raise not_the_format(
                    "read_json", file.path, "JSON", f"it starts with {first.lstrip()[:20]!r}"
                )
            if start == b"[":
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

    return file_dataset(
        "read_json", files, read_file, include_paths=include_paths, partitioning=partitioning
    )


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
    partitioning: Partitioning | None = HIVE,
    ignore_missing_paths: bool = False,
) -> Dataset:
    """Reads Parquet files lazily, a row group (at most 131,072 rows) at a time.

    ``columns`` reads only those columns. ``count()`` comes from the files' metadata.
    ``paths``, ``filesystem``, ``include_paths``, ``file_extensions``, ``partitioning`` and
    ``ignore_missing_paths`` are as in ``read_csv``.
    """
    files = resolve_files(paths, filesystem, file_extensions, ignore_missing_paths)
    selected = None if columns is None else list(columns)

    def open_parquet(file: SourceFile, source: Any) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(source)
        except pa.ArrowInvalid as error:
            raise not_the_format("read_parquet", file.path, "Parquet", str(error)) from error

    def read_file(file: SourceFile) -> Stream:
        with file.open_random_access() as source:
            parquet = open_parquet(file, source)
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
            return open_parquet(file, source).metadata.num_rows

    return file_dataset(
        "read_parquet",
        files,
        read_file,
        include_paths=include_paths,
        partitioning=partitioning,
        count_file=count_file,
        settings={"columns": selected} if selected is not None else None,
    )


def _select(table: pa.Table, columns: list[str] | None) -> pa.Table:
    return table if columns is None else table.select(columns)


class _SameColumns:
    """A file whose name is not the format's own (``notes.txt`` in a folder of ``.csv``) must
    have the columns of the format's files, or it is most likely not part of the data: an error
    naming it rather than a column of nulls added to every row."""

    def __init__(self, reader: str, file_format: str, extensions: tuple[str, ...]) -> None:
        self._reader = reader
        self._format = file_format
        self._extensions = extensions
        self._names: list[str] | None = None
        self._first = ""

    def check(self, path: str, names: list[str]) -> None:
        own = path.lower().endswith(self._extensions)
        if self._names is None and own:
            self._names, self._first = list(names), path
        elif not own and self._names is not None and list(names) != self._names:
            raise not_the_format(
                self._reader,
                path,
                self._format,
                f"its columns {names[:5]} are not those of {self._first} ({self._names[:5]})",
            )


def _check_block_size(reader: str, read_options: Any) -> None:
    if read_options is not None and read_options.block_size <= 0:
        raise ValueError(
            f"{reader}: read_options.block_size must be a positive number of bytes, got "
            f"{read_options.block_size}"
        )
