"""The stages of a dataset as generators over a stream of Arrow blocks, in input order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from llmbatch.data.batch_format import column_to_arrow, from_batch, to_batch
from llmbatch.data.blocks import Stream, coalesce, concat, rows_to_table, values_to_array
from llmbatch.data.extension_types import table_rows
from llmbatch.data.udf import UserFunction

# Rows turned into Python dicts at a time, so row functions over large blocks stay small in memory.
ROWS_PER_CALL = 1024


def limit(stream: Stream, num_rows: int) -> Stream:
    """The first ``num_rows`` rows; upstream is not pulled again once they have passed."""
    remaining = num_rows
    if remaining == 0:
        return
    for table in stream:
        if table.num_rows >= remaining:
            yield table.slice(0, remaining)
            return
        remaining -= table.num_rows
        yield table


def map_rows(stream: Stream, udf: UserFunction) -> Stream:
    fn = udf.instantiate()
    check = _SameKeys(f"map function {udf.name!r}")

    def apply(row: dict[str, Any]) -> list[Mapping[str, Any]]:
        return [check(_check_row(fn(row), udf, "map"))]

    return _per_row(stream, apply)


def flat_map_rows(stream: Stream, udf: UserFunction) -> Stream:
    fn = udf.instantiate()
    check = _SameKeys(f"flat_map function {udf.name!r}")

    def apply(row: dict[str, Any]) -> list[Mapping[str, Any]]:
        results = fn(row)
        if isinstance(results, Mapping) or not isinstance(results, Iterable):
            raise TypeError(
                f"flat_map function {udf.name!r} must return a list of dicts, "
                f"got {type(results).__name__}"
            )
        return [check(_check_row(result, udf, "flat_map")) for result in results]

    return _per_row(stream, apply)


def _check_row(result: Any, udf: UserFunction, method: str) -> Mapping[str, Any]:
    if not isinstance(result, Mapping):
        raise TypeError(
            f"{method} function {udf.name!r} must return a dict (one row), "
            f"got {type(result).__name__}"
        )
    return result


class _SameKeys:
    """Every row a function returns must have the keys of the first one, as Ray Data requires:
    a missing key is an error, never a column quietly filled with nulls."""

    def __init__(self, producer: str) -> None:
        self._producer = producer
        self._keys: list[str] | None = None

    def __call__(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        if self._keys is None:
            self._keys = list(row)
        elif row.keys() != set(self._keys):
            raise ValueError(
                f"{self._producer} returned rows with different columns: {list(row)} after "
                f"{self._keys}; return the same keys from every row (None for a missing value)"
            )
        return row


def _per_row(stream: Stream, apply: Callable[[dict[str, Any]], list[Mapping[str, Any]]]) -> Stream:
    for table in stream:
        pieces = []
        for batch in table.to_batches(max_chunksize=ROWS_PER_CALL):
            rows = [result for row in table_rows(batch) for result in apply(row)]
            pieces.append(rows_to_table(rows))
        yield concat(pieces) if pieces else pa.table({})


def filter_rows(stream: Stream, udf: UserFunction) -> Stream:
    fn = udf.instantiate()
    for table in stream:
        keep = [
            bool(fn(row))
            for batch in table.to_batches(max_chunksize=ROWS_PER_CALL)
            for row in table_rows(batch)
        ]
        yield table.filter(pa.array(keep, pa.bool_()))


def filter_expression(stream: Stream, expression: pc.Expression) -> Stream:
    for table in stream:
        yield table.filter(expression)


def map_batches(
    stream: Stream,
    udf: UserFunction,
    batch_size: int | None,
    batch_format: str,
    zero_copy_batch: bool = True,
) -> Stream:
    """Calls ``fn`` on batches and yields one block per group of whole input blocks.

    Like Ray, whole input blocks are grouped until they hold at least ``batch_size`` rows, and
    batches are cut inside each group, so a group's last batch may be smaller than ``batch_size``.
    """
    fn = udf.instantiate()
    producer = f"map_batches function {udf.name!r}"
    groups = stream if batch_size is None else coalesce(stream, len, batch_size)
    for group in groups:
        step = batch_size or max(group.num_rows, 1)
        outputs = []
        for offset in range(0, group.num_rows, step):
            result = fn(to_batch(group.slice(offset, step), batch_format, zero_copy_batch))
            results = result if isinstance(result, Iterator) else [result]
            outputs.extend(from_batch(batch, producer) for batch in results)
        yield concat(outputs) if outputs else pa.table({})


def add_column(stream: Stream, name: str, udf: UserFunction, batch_format: str) -> Stream:
    """Sets column ``name`` (added, or replaced when it exists) to what ``fn`` returns for each
    block: one value per row, or one scalar for every row."""
    fn = udf.instantiate()
    for table in stream:
        values = fn(to_batch(table, batch_format))
        if _is_scalar(values):
            column = values_to_array(name, [values] * table.num_rows)
        else:
            column = column_to_arrow(name, values)
        if len(column) != table.num_rows:
            raise ValueError(
                f"add_column function {udf.name!r} returned {len(column)} values "
                f"for a block of {table.num_rows} rows"
            )
        if name in table.column_names:
            yield table.set_column(table.column_names.index(name), name, column)
        else:
            yield table.append_column(name, column)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 0
    return not isinstance(value, list | tuple | pa.Array | pa.ChunkedArray | pd.Series)


def select_columns(stream: Stream, columns: Sequence[str]) -> Stream:
    for table in stream:
        _require_columns(table, columns, "select_columns")
        yield table.select(list(columns))


def drop_columns(stream: Stream, columns: Sequence[str]) -> Stream:
    for table in stream:
        _require_columns(table, columns, "drop_columns")
        yield table.drop_columns(list(columns))


def rename_columns(stream: Stream, names: Mapping[str, str] | Sequence[str]) -> Stream:
    for table in stream:
        if isinstance(names, Mapping):
            _require_columns(table, list(names), "rename_columns")
            renamed = [names.get(name, name) for name in table.column_names]
        elif len(names) != table.num_columns:
            raise ValueError(
                f"rename_columns got {len(names)} names for {table.num_columns} columns "
                f"{table.column_names}; pass a dict {{old: new}} to rename some of them"
            )
        else:
            renamed = list(names)
        clashes = sorted({name for name in renamed if renamed.count(name) > 1})
        if clashes:
            raise ValueError(
                f"rename_columns would give two columns the name(s) {clashes}; the columns are "
                f"{table.column_names}"
            )
        yield table.rename_columns(renamed)


def _require_columns(table: pa.Table, columns: Iterable[str], method: str) -> None:
    missing = [column for column in columns if column not in table.column_names]
    if missing:
        raise KeyError(f"{method}: no column(s) {missing}; the columns are {table.column_names}")


def transform(stream: Stream, fn: Callable[[Stream], Iterable[pa.Table]], name: str) -> Stream:
    for table in fn(stream):
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        elif not isinstance(table, pa.Table):
            raise TypeError(
                f"transform {name!r} must yield pyarrow Tables, got {type(table).__name__}"
            )
        yield table


def transform_preserving_rows(
    stream: Stream, fn: Callable[[Stream], Iterable[pa.Table]], name: str
) -> Stream:
    """Runs a transform that yields one row per input row, cut back into the input's blocks."""
    block_sizes: deque[int] = deque()
    rows_in = 0

    def feed() -> Stream:
        nonlocal rows_in
        for table in stream:
            if table.num_rows:
                block_sizes.append(table.num_rows)
                rows_in += table.num_rows
                yield table

    pending: list[pa.Table] = []
    pending_rows = rows_out = 0
    for table in transform(feed(), fn, name):
        rows_out += table.num_rows
        if rows_out > rows_in:
            raise ValueError(
                f"transform {name!r} promises one row per input row but yielded {rows_out} rows "
                f"after reading {rows_in}"
            )
        offset = 0
        while offset < table.num_rows:
            piece = table.slice(offset, block_sizes[0] - pending_rows)
            pending.append(piece)
            pending_rows += piece.num_rows
            offset += piece.num_rows
            if pending_rows == block_sizes[0]:
                yield concat(pending)
                block_sizes.popleft()
                pending, pending_rows = [], 0
    if rows_out != rows_in:
        raise ValueError(
            f"transform {name!r} promises one row per input row but yielded {rows_out} rows "
            f"for {rows_in} input rows"
        )
