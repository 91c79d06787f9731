"""Malformed CSV lines and undecodable text: what `read_csv` does with them."""

from __future__ import annotations

import codecs
import csv
import io
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
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
    line_of: Any = None  # maps pyarrow's line numbers to the file's, when lines were cut

    def __call__(self, row: Any) -> str:
        if self.mode == "fail":
            return "error"
        number = row.number
        if number is not None and self.line_of is not None:
            number = self.line_of(number)
        message = f"expected {row.expected_columns} columns, got {row.actual_columns}: {row.text!r}"
        self.lines.append((number, message))
        return "skip"

    def unterminated_quote(self, number: int, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if self.mode == "fail":
            raise ValueError(
                f"Cannot read CSV {self.path}: line {number} opens a quote it does not close: "
                f'{text!r}; fix that line, or read with on_bad_lines="error_row" or "skip"'
            )
        self.lines.append((number, f"a quote opened on this line is not closed: {text!r}"))

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
            for number, message in sorted(self.lines, key=lambda line: line[0] or 0)
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


# Encodings in which a quote and a line break are the bytes they are in ASCII.
_ASCII_COMPATIBLE = frozenset({"utf-8", "ascii", "latin-1", "iso8859-1", "cp1252", "utf-8-sig"})
_CHUNK_BYTES = 1 << 20


def resynchronises(read_options: pacsv.ReadOptions, parse_options: pacsv.ParseOptions) -> bool:
    """Whether unterminated quotes can be found line by line: there is a quote character and
    no escape character, and the encoding keeps ASCII's quote and newline bytes."""
    try:
        encoding = codecs.lookup(read_options.encoding or "utf8").name
    except LookupError:
        return False
    return (
        bool(parse_options.quote_char)
        and not parse_options.escape_char
        and encoding in _ASCII_COMPATIBLE
    )


def lines_before_rows(read_options: pacsv.ReadOptions) -> int:
    """Lines of a file that come before its first row (skipped lines and the header)."""
    header = 0 if read_options.column_names or read_options.autogenerate_column_names else 1
    return read_options.skip_rows + header + read_options.skip_rows_after_names


class QuoteResync(io.RawIOBase):
    """The bytes of a CSV file less its lines that open a quote they never close.

    Without this, pyarrow reads everything after an unterminated quote as one value, and every
    later row is lost in one malformed line. A line with an odd number of quotes (a doubled
    quote counts twice, keeping the parity) opens a quoted value that goes on to the next such
    line; when the record they make has the header's number of fields it is a value written
    over several lines and is kept, otherwise (or when no closing line comes within
    ``max_record_bytes``) the opening line is cut out. Each cut line goes to ``bad_lines``
    under its number in the file, and ``original_line`` maps pyarrow's line numbers back.
    Quotes are counted with numpy over whole chunks; records are split by Python's csv module.
    """

    def __init__(
        self,
        stream: Any,
        parse_options: pacsv.ParseOptions,
        read_options: pacsv.ReadOptions,
        bad_lines: BadLineCollector,
        check_head: Any = None,
    ) -> None:
        self._stream = stream
        self._quote = ord(parse_options.quote_char)
        self._dialect = {
            "delimiter": parse_options.delimiter,
            "quotechar": parse_options.quote_char,
            "doublequote": parse_options.double_quote,
        }
        self._skip = lines_before_rows(read_options)
        self._header_line = read_options.skip_rows + 1
        self._fields: int | None = (
            len(read_options.column_names) if read_options.column_names else None
        )
        self._max_record = max(read_options.block_size, 1)
        self._bad_lines = bad_lines
        self._check_head = check_head
        self._line = 0  # lines of the file passed on or cut
        self._pending = b""
        self._ready = bytearray()
        self._done = False
        self.cut: list[int] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._ready and not self._done:
            self._fill()
        size = min(len(buffer), len(self._ready))
        buffer[:size] = self._ready[:size]
        del self._ready[:size]
        return size

    def original_line(self, number: int) -> int:
        """The line of the file that pyarrow calls line ``number``."""
        for cut in self.cut:
            if cut <= number:
                number += 1
            else:
                break
        return number

    def _fill(self) -> None:
        chunk = self._stream.read(_CHUNK_BYTES)
        if self._check_head is not None:
            self._check_head(chunk)
            self._check_head = None
        at_end = not chunk
        data = self._pending + chunk
        if not at_end:
            end = data.rfind(b"\n") + 1
            data, self._pending = data[:end], data[end:]
        else:
            self._pending = b""
        if data:
            kept, undecided = self._resolve(data, at_end)
            self._ready += kept
            self._pending = undecided + self._pending
        self._done = at_end and not self._pending

    def _resolve(self, data: bytes, at_end: bool) -> tuple[bytes, bytes]:
        """What of ``data`` (whole lines) goes on to pyarrow, and the tail still undecided
        (from a line that opens a quote whose closing line has not been read yet)."""
        raw = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(raw == 10) + 1
        if not len(ends) or ends[-1] != len(raw):
            ends = np.append(ends, len(raw))
        starts = np.concatenate([[0], ends[:-1]])
        quotes = np.concatenate([[0], np.cumsum(raw == self._quote)])
        odd = np.flatnonzero((quotes[ends] - quotes[starts]) % 2 == 1).tolist()
        first = self._line + 1
        if self._fields is None and first <= self._header_line < first + len(ends):
            index = self._header_line - first
            self._fields = self._count_fields(data[starts[index] : ends[index]])
        kept: list[bytes] = []
        cursor = 0
        position = 0
        while position < len(odd):
            opener = odd[position]
            if first + opener <= self._skip:
                position += 1
                continue
            start = int(starts[opener])
            if position + 1 < len(odd):
                stop = int(ends[odd[position + 1]])
                if stop - start <= self._max_record and self._is_record(data[start:stop]):
                    position += 2
                    continue
            elif not at_end and len(data) - start <= self._max_record:
                kept.append(data[cursor:start])
                self._line += opener
                return b"".join(kept), data[start:]
            kept.append(data[cursor:start])
            cursor = int(ends[opener])
            self._cut(first + opener, data[start:cursor])
            position += 1
        kept.append(data[cursor:])
        self._line += len(ends)
        return b"".join(kept), b""

    def _cut(self, number: int, line: bytes) -> None:
        self.cut.append(number)
        self.cut.sort()
        self._bad_lines.unterminated_quote(number, line)

    def _count_fields(self, line: bytes) -> int:
        rows = list(csv.reader(io.StringIO(line.decode("utf-8", "replace")), **self._dialect))
        return len(rows[0]) if rows else 0

    def _is_record(self, text: bytes) -> bool:
        """Whether ``text`` (lines from an opening to a closing quote) is one record with the
        header's number of fields."""
        rows = list(csv.reader(io.StringIO(text.decode("utf-8", "replace")), **self._dialect))
        return len(rows) == 1 and (self._fields is None or len(rows[0]) == self._fields)
