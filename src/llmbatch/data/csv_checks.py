"""Malformed CSV lines and undecodable text: what `read_csv` does with them."""

from __future__ import annotations

import codecs
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv

logger = logging.getLogger("llmbatch")

BadLines = Literal["error_row", "fail", "skip"]
BAD_LINE_CHOICES: tuple[str, ...] = ("error_row", "fail", "skip")
ERROR_COLUMN = "error"


@dataclass(slots=True)
class BadLineCollector:
    """An ``invalid_row_handler`` for pyarrow that remembers the bad lines of one file."""

    path: str
    mode: str
    lines: list[tuple[int | None, str]] = field(default_factory=list)

    def __call__(self, row: Any) -> str:
        if self.mode == "fail":
            return "error"
        message = f"expected {row.expected_columns} columns, got {row.actual_columns}: {row.text!r}"
        self.lines.append((row.number, message))
        return "skip"

    def error_rows(self, schema: pa.Schema) -> pa.Table | None:
        """One row per bad line: every column null, ``error`` naming the line (error_row)."""
        if self.mode == "skip":
            if self.lines:
                logger.warning("skipped %d malformed line(s) of %s", len(self.lines), self.path)
            return None
        if not self.lines:
            return None
        errors = [
            f"read_csv: malformed line: line {number} of {self.path}: {message}"
            for number, message in self.lines
        ]
        columns = {
            name: pa.nulls(len(errors), schema.field(name).type)
            for name in schema.names
            if name != ERROR_COLUMN
        }
        return pa.table({**columns, ERROR_COLUMN: pa.array(errors, pa.string())})


def check_bad_lines_mode(on_bad_lines: str) -> None:
    if on_bad_lines not in BAD_LINE_CHOICES:
        raise ValueError(f"on_bad_lines={on_bad_lines!r}; accepted: {', '.join(BAD_LINE_CHOICES)}")


def with_bad_line_handler(
    read_options: pacsv.ReadOptions, parse_options: pacsv.ParseOptions | None, handler: Any
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions]:
    """Copies of the options that hand bad lines to ``handler``; single-threaded parsing, since
    pyarrow knows a bad line's number only then. A handler the user set is kept."""
    parse_options = parse_options or pacsv.ParseOptions()
    if parse_options.invalid_row_handler is not None:
        return read_options, parse_options
    parse = pacsv.ParseOptions(
        delimiter=parse_options.delimiter,
        quote_char=parse_options.quote_char,
        double_quote=parse_options.double_quote,
        escape_char=parse_options.escape_char,
        newlines_in_values=parse_options.newlines_in_values,
        ignore_empty_lines=parse_options.ignore_empty_lines,
        invalid_row_handler=handler,
    )
    read = pacsv.ReadOptions(
        use_threads=False,
        block_size=read_options.block_size,
        skip_rows=read_options.skip_rows,
        skip_rows_after_names=read_options.skip_rows_after_names,
        column_names=read_options.column_names,
        autogenerate_column_names=read_options.autogenerate_column_names,
        encoding=read_options.encoding,
    )
    return read, parse


def check_text_columns(
    table: pa.Table, convert_options: pacsv.ConvertOptions | None, path: str, open_stream: Any
) -> None:
    """pyarrow reads a column holding invalid UTF-8 as binary; unless binary was asked for,
    that is an error naming the file, line and byte offset of the first bad byte."""
    asked = dict(convert_options.column_types) if convert_options is not None else {}
    binary = [
        field.name
        for field in table.schema
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)
    ]
    binary = [name for name in binary if name not in asked]
    if not binary:
        return
    offset, line = _first_invalid_utf8(open_stream)
    raise ValueError(
        f"Cannot read CSV {path}: invalid UTF-8 at byte {offset} (line {line}), in column "
        f"{binary[0]!r}; fix the file, give its encoding with "
        f"read_options=pyarrow.csv.ReadOptions(encoding=...), or read the column as bytes with "
        f"convert_options=pyarrow.csv.ConvertOptions(column_types={{{binary[0]!r}: "
        f"pyarrow.binary()}})"
    )


def _first_invalid_utf8(open_stream: Any) -> tuple[int, int]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with open_stream() as stream:
        while chunk := stream.read(1 << 20):
            # The decoder holds back the start of a character cut by the chunk's end.
            held = decoder.getstate()[0]
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                seen = (held + chunk)[: error.start]
                return offset - len(held) + error.start, lines + seen.count(b"\n")
            offset += len(chunk)
            lines += chunk.count(b"\n")
    return offset, lines
