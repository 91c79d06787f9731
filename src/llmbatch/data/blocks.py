"""Arrow blocks: building them from Python rows, and joining blocks whose types differ.

Types are inferred per block, so one block may hold a column of nulls where the next holds strings,
or a struct with fewer fields. Whenever blocks meet (concatenation, one output file), their schemas
are unified: null columns take the other type, numbers widen, structs merge their fields, and a
column missing from a block is filled with nulls. Types that cannot meet raise SchemaConflictError.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from llmbatch.data.extension_types import (
    RaggedTensorType,
    column_values,
    is_arrow_kind,
    is_tensor_type,
    objects_to_arrow,
    ragged_tensors,
    tensor_dtype,
    tensors_to_arrow,
)

Stream = Iterator[pa.Table]

_OVERFLOW_BLOCK_ROWS = 65_536


class SchemaConflictError(TypeError):
    """A column holds values of types that cannot share one Arrow column."""


def rows_to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """A table of row dicts; its columns are the union of the rows' keys, in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    if not names:
        return pa.Table.from_pylist(list(rows))
    return pa.table(
        {name: values_to_array(name, [row.get(name) for row in rows]) for name in names}
    )


def values_to_array(column: str, values: Sequence[Any]) -> pa.Array:
    """One column's Python values as Arrow, kept exactly: numpy arrays as tensors, pandas
    timestamps to the nanosecond, and values Arrow has no type for pickled. Values of kinds Arrow
    can store but not together (a number and a text) raise SchemaConflictError naming the
    column."""
    if any(isinstance(value, np.ndarray) for value in values):
        if all(value is None or isinstance(value, np.ndarray) for value in values):
            return tensors_to_arrow(values)
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        if not all(is_arrow_kind(value) for value in values):
            return objects_to_arrow(values)
        kinds = sorted({type(value).__name__ for value in values if value is not None})
        raise SchemaConflictError(
            f"Column {column!r} mixes values that cannot share one column "
            f"(Python types: {', '.join(kinds)}; Arrow says: {error}). "
            f"Return one type per column, e.g. convert with str(...)."
        ) from error
    if pa.types.is_timestamp(array.type) or pa.types.is_duration(array.type):
        return _with_nanoseconds(array, values)
    return array


def _with_nanoseconds(array: pa.Array, values: Sequence[Any]) -> pa.Array:
    """pandas timestamps and timedeltas hold nanoseconds, which Arrow's inference drops."""
    if array.type.unit == "ns" or not any(
        isinstance(value, pd.Timestamp | pd.Timedelta) for value in values
    ):
        return array
    if pa.types.is_timestamp(array.type):
        return pa.array(values, pa.timestamp("ns", array.type.tz))
    return pa.array(values, pa.duration("ns"))


def unify_schemas(schemas: Sequence[pa.Schema]) -> pa.Schema:
    """The schema all of ``schemas`` can be cast to; the error names a conflicting column.
    Tensors of one dtype but different shapes unify to ragged tensors."""
    schemas = _tensors_unified(schemas)
    try:
        return pa.unify_schemas(list(schemas), promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise SchemaConflictError(_describe_conflict(schemas, error)) from error


def _describe_conflict(schemas: Sequence[pa.Schema], error: Exception) -> str:
    seen: dict[str, pa.DataType] = {}
    for schema in schemas:
        for field in schema:
            earlier = seen.setdefault(field.name, field.type)
            try:
                pa.unify_schemas(
                    [pa.schema([(field.name, earlier)]), pa.schema([field])],
                    promote_options="permissive",
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return (
                    f"Column {field.name!r} is {earlier} in one batch and {field.type} in another. "
                    f"Make the function that produces it return one type (e.g. always str)."
                )
    return f"Batches have incompatible schemas: {error}"


def _tensors_unified(schemas: Sequence[pa.Schema]) -> list[pa.Schema]:
    types: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for field in schema:
            kinds = types.setdefault(field.name, [])
            if not pa.types.is_null(field.type) and field.type not in kinds:
                kinds.append(field.type)
    ragged = {}
    for name, kinds in types.items():
        if len(kinds) > 1 and all(is_tensor_type(kind) for kind in kinds):
            dtypes = {tensor_dtype(kind) for kind in kinds}
            if len(dtypes) == 1:
                ragged[name] = RaggedTensorType(dtypes.pop())
    if not ragged:
        return list(schemas)
    return [
        pa.schema(pa.field(f.name, ragged[f.name]) if f.name in ragged else f for f in schema)
        for schema in schemas
    ]


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Casts ``table`` to ``schema`` (a unification of its own), adding missing columns as nulls."""
    if table.schema.equals(schema):
        return table
    columns = [
        _cast(table.column(field.name), field.type)
        if field.name in table.column_names
        else pa.nulls(table.num_rows, field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _cast(column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray | pa.Array:
    if column.type == target:
        return column
    if pa.types.is_null(column.type):
        return pa.nulls(len(column), target)
    if isinstance(target, RaggedTensorType):
        return ragged_tensors(column_values(column), target.dtype)
    return column.cast(target)


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenates blocks in order, unifying their schemas."""
    if len(tables) == 1:
        return tables[0]
    schema = unify_schemas([table.schema for table in tables])
    return pa.concat_tables([conform(table, schema) for table in tables])


def balanced_sizes(num_rows: int, num_blocks: int) -> list[int]:
    """Sizes of ``num_blocks`` blocks holding ``num_rows`` rows, differing by at most one row."""
    base, extra = divmod(num_rows, num_blocks)
    return [base + 1 if index < extra else base for index in range(num_blocks)]


def coalesce(stream: Iterable[pa.Table], size: Callable[[pa.Table], int], minimum: int) -> Stream:
    """Joins consecutive blocks (without copying rows) until each has ``size >= minimum``."""
    pending: list[pa.Table] = []
    pending_size = 0
    for table in stream:
        pending.append(table)
        pending_size += size(table)
        if pending_size >= minimum:
            yield concat(pending)
            pending, pending_size = [], 0
    if pending:
        yield concat(pending)


def rebatch(stream: Iterable[pa.Table], batch_size: int) -> Stream:
    """Re-cuts a stream into blocks of exactly ``batch_size`` rows; the last may be smaller."""
    return _cut(stream, itertools.repeat(batch_size))


def split_into(stream: Iterable[pa.Table], sizes: Sequence[int]) -> Stream:
    """Re-cuts a stream into exactly ``len(sizes)`` blocks of these sizes.

    Sizes not reached when the stream ends become empty blocks, so the count stays exact. Rows
    beyond ``sum(sizes)`` (a source that grew since it was counted) go into further blocks.
    """
    positive = [size for size in sizes if size > 0]
    overflow = positive[-1] if positive else _OVERFLOW_BLOCK_ROWS
    schema: pa.Schema | None = None

    def remember_schema(tables: Iterable[pa.Table]) -> Stream:
        nonlocal schema
        for table in tables:
            schema = table.schema
            yield table

    emitted = 0
    for block in _cut(
        remember_schema(stream), itertools.chain(positive, itertools.repeat(overflow))
    ):
        emitted += 1
        yield block
    if schema is not None:
        for _ in range(len(sizes) - emitted):
            yield schema.empty_table()


def _cut(stream: Iterable[pa.Table], sizes: Iterator[int]) -> Stream:
    pending: list[pa.Table] = []
    pending_rows = 0
    target = next(sizes)
    for table in stream:
        offset = 0
        while offset < table.num_rows:
            piece = table.slice(offset, target - pending_rows)
            pending.append(piece)
            pending_rows += piece.num_rows
            offset += piece.num_rows
            if pending_rows == target:
                yield concat(pending)
                pending, pending_rows = [], 0
                target = next(sizes)
    if pending:
        yield concat(pending)


def carry_column(table: pa.Table, name: str, fn: Callable[[pa.Table], pa.Table]) -> pa.Table:
    """``fn(table)`` with column ``name`` set aside before and put back after: ``fn`` keeps
    one output row per input row, in order, and never sees the column."""
    if name not in table.column_names:
        return fn(table)
    column = table.column(name)
    result = fn(table.drop_columns([name]))
    if result.num_rows != len(column):
        raise RuntimeError(
            f"a processing that keeps every row gave back {result.num_rows} rows for {len(column)}"
        )
    return result.append_column(name, column)
