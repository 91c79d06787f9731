"""Grouping and aggregates: ``groupby(...)`` with ``count``, ``sum``, ``min``, ``max``,
``mean``, ``std`` and ``map_groups``; ``unique``; and the same aggregates over a whole dataset.

Aggregates are pyarrow's hash aggregation (Acero) over the rows' key and value columns, held as
``spill`` holds them; its memory grows with the number of groups, not of rows. As in Ray Data,
nulls and NaN are skipped unless ``ignore_nulls=False`` (then one makes the result null),
groups come out sorted by their keys (nulls last), and result columns are named
``"sum(col)"``, ``"count()"``, ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmbatch.data import spill
from llmbatch.data.batch_format import BatchFormat, check_batch_format, from_batch, to_batch
from llmbatch.data.blocks import Stream, coalesce
from llmbatch.data.extension_types import column_values
from llmbatch.data.outputs import check_count
from llmbatch.data.plan import PlanInfo
from llmbatch.data.sort import sorted_indices
from llmbatch.data.udf import UserFunction, check_scheduling_keywords

# A Dataset: its module imports this one.
Dataset = Any

_ROW = "__llmbatch_row"


class GroupedData:
    """A dataset grouped by key columns (``Dataset.groupby``); each method gives a Dataset."""

    def __init__(self, dataset: Dataset, keys: list[str]) -> None:
        self._dataset = dataset
        self._keys = keys

    def count(self) -> Dataset:
        """The keys and ``count()``: the number of rows of each group."""
        return self._aggregate("count", [([], "count_all", None, "count()")])

    def sum(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Dataset:
        """The keys and ``sum(col)`` for each column ``on`` (every other column when None)."""
        return self._per_column("sum", on, pc.ScalarAggregateOptions(skip_nulls=ignore_nulls))

    def min(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Dataset:
        return self._per_column("min", on, pc.ScalarAggregateOptions(skip_nulls=ignore_nulls))

    def max(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Dataset:
        return self._per_column("max", on, pc.ScalarAggregateOptions(skip_nulls=ignore_nulls))

    def mean(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Dataset:
        return self._per_column("mean", on, pc.ScalarAggregateOptions(skip_nulls=ignore_nulls))

    def std(
        self, on: str | list[str] | None = None, ddof: int = 1, ignore_nulls: bool = True
    ) -> Dataset:
        """The keys and ``std(col)``, with divisor ``N - ddof`` (null when N <= ddof)."""
        ddof = check_count("ddof", ddof, minimum=0)
        options = pc.VarianceOptions(ddof=ddof, skip_nulls=ignore_nulls)
        return self._per_column("std", on, options)

    def map_groups(
        self,
        fn: Callable[[Any], Any],
        *,
        zero_copy_batch: bool = True,
        batch_format: BatchFormat | None = "default",
        fn_args: Iterable[Any] | None = None,
        fn_kwargs: Mapping[str, Any] | None = None,
        fn_constructor_args: Iterable[Any] | None = None,
        fn_constructor_kwargs: Mapping[str, Any] | None = None,
        **scheduling: Any,
    ) -> Dataset:
        """Calls ``fn`` with each group's rows as one batch (in input order), groups sorted by
        key, and keeps the batches it returns, as ``map_batches`` does. A group must fit in
        memory."""
        check_scheduling_keywords("map_groups", scheduling)
        batch_format = check_batch_format(batch_format)
        udf = UserFunction.of(fn, fn_args, fn_kwargs, fn_constructor_args, fn_constructor_kwargs)
        keys = self._keys

        def apply(stream: Stream) -> Stream:
            function = udf.instantiate()
            table, num_blocks = spill.collect(stream)
            if table.num_rows == 0:
                return
            gatherer = spill.RowGatherer(table)
            producer = f"map_groups function {udf.name!r}"

            def outputs() -> Stream:
                for rows in _group_rows(table, keys):
                    result = function(to_batch(gatherer.take(rows), batch_format, zero_copy_batch))
                    results = result if isinstance(result, Iterator) else [result]
                    for batch in results:
                        yield from_batch(batch, producer)

            yield from coalesce(outputs(), len, spill.rows_per_block(table.num_rows, num_blocks))

        return self._dataset._chain(
            f"groupby({keys}).map_groups({udf.name})", apply, PlanInfo(), udf
        )

    def _per_column(self, name: str, on: str | list[str] | None, options: Any) -> Dataset:
        function = {"std": "stddev"}.get(name, name)
        columns = None if on is None else _column_list(name, on)

        def specs(table: pa.Table) -> list[tuple[Any, str, Any, str]]:
            chosen = columns or [c for c in table.column_names if c not in self._keys]
            return [(column, function, options, f"{name}({column})") for column in chosen]

        return self._aggregate(name, specs, columns)

    def _aggregate(
        self,
        name: str,
        specs: list[tuple[Any, str, Any, str]] | Callable[[pa.Table], list],
        columns: list[str] | None = None,
    ) -> Dataset:
        keys = self._keys

        def apply(stream: Stream) -> Stream:
            wanted = None if columns is None and callable(specs) else [*keys, *(columns or [])]
            table, _ = spill.collect(stream, wanted)
            chosen = specs(table) if callable(specs) else specs
            yield aggregate(table, keys, chosen)

        return self._dataset._chain(f"groupby({keys}).{name}()", apply, PlanInfo())

    def __repr__(self) -> str:
        return f"GroupedData(keys={self._keys})"


def aggregate(table: pa.Table, keys: list[str], specs: list[tuple[Any, str, Any, str]]) -> pa.Table:
    """One row per group of ``keys`` (sorted by them, nulls last) with each aggregate of
    ``specs``: ``(column, pyarrow function, options, output name)``."""
    missing = [
        c for c in [*keys, *(s[0] for s in specs if s[0] != [])] if c not in table.column_names
    ]
    if missing:
        raise KeyError(f"groupby: no column(s) {missing}; the columns are {table.column_names}")
    names = [*keys, *(s[3] for s in specs)]
    if table.num_rows == 0:
        # pyarrow gives an empty dataset's columns no type to aggregate: every result is null.
        if keys:
            return pa.table({name: pa.nulls(0) for name in names})
        return pa.table({s[3]: [0 if s[1] == "count_all" else None] for s in specs})
    table = _nan_as_null(table, [s[0] for s in specs if isinstance(s[0], str)])
    try:
        result = table.group_by(keys, use_threads=False).aggregate(
            [(column, function, options) for column, function, options, _ in specs]
        )
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
        raise TypeError(f"groupby: cannot aggregate these columns: {error}") from error
    except (MemoryError, pa.ArrowMemoryError) as error:
        raise MemoryError(
            f"groupby({keys}): the groups of {table.num_rows} rows do not fit in memory; group "
            f"by fewer distinct keys"
        ) from error
    result = result.rename_columns(names)
    if keys and result.num_rows > 1:
        result = result.take(sorted_indices(result, keys, [False] * len(keys)))
    return result


def _nan_as_null(table: pa.Table, columns: list[str]) -> pa.Table:
    for name in dict.fromkeys(columns):
        column = table.column(name)
        if pa.types.is_floating(column.type):
            index = table.column_names.index(name)
            cleaned = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
            table = table.set_column(index, name, cleaned)
    return table


def _group_rows(table: pa.Table, keys: list[str]) -> Iterable[np.ndarray]:
    """Each group's row numbers (in input order), groups sorted by key."""
    if not keys:
        yield np.arange(table.num_rows)
        return
    numbered = table.select(keys).append_column(_ROW, pa.array(np.arange(table.num_rows)))
    groups = numbered.group_by(keys, use_threads=False).aggregate([(_ROW, "list")])
    groups = groups.take(sorted_indices(groups, keys, [False] * len(keys)))
    for chunk in groups.column(f"{_ROW}_list").chunks:
        offsets = chunk.offsets.to_numpy()
        values = chunk.values.to_numpy()
        for start, stop in zip(offsets[:-1], offsets[1:]):
            yield values[start:stop]


def _column_list(method: str, on: Any) -> list[str]:
    columns = [on] if isinstance(on, str) else on
    if not isinstance(columns, list | tuple) or not all(isinstance(c, str) for c in columns):
        raise TypeError(f"{method}: on must be a column name or a list of them, got {on!r}")
    return list(columns)


class AggregateOperations:
    """``groupby``, ``unique`` and the aggregates of ``Dataset``."""

    if TYPE_CHECKING:

        def _blocks(self) -> Stream: ...

    def groupby(
        self, key: str | list[str] | None, num_partitions: int | None = None
    ) -> GroupedData:
        """The rows grouped by ``key`` (a column, a list of columns, or None for one group of
        every row). ``num_partitions`` is accepted for Ray's sake and has no effect."""
        if num_partitions is not None:
            check_count("num_partitions", num_partitions, minimum=1)
        keys = [] if key is None else _column_list("groupby", key)
        return GroupedData(self, keys)  # type: ignore[arg-type]

    def unique(self, column: str, ignore_nulls: bool = False) -> list[Any]:
        """The distinct values of ``column``, in order of first appearance."""
        if not isinstance(column, str):
            raise TypeError(f"unique: column must be a column name, got {column!r}")
        table, _ = spill.collect(self._blocks(), [column])
        values = pc.unique(table.column(column))
        if ignore_nulls:
            values = values.drop_null()
        return column_values(values)

    def sum(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Any:
        """The sum of column ``on`` (a value), or of several (a dict ``{"sum(col)": value}``;
        every column when None); None when empty or, without ``ignore_nulls``, a null."""
        return self._one("sum", on, ignore_nulls=ignore_nulls)

    def min(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Any:
        return self._one("min", on, ignore_nulls=ignore_nulls)

    def max(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Any:
        return self._one("max", on, ignore_nulls=ignore_nulls)

    def mean(self, on: str | list[str] | None = None, ignore_nulls: bool = True) -> Any:
        return self._one("mean", on, ignore_nulls=ignore_nulls)

    def std(
        self, on: str | list[str] | None = None, ddof: int = 1, ignore_nulls: bool = True
    ) -> Any:
        """The standard deviation (divisor ``N - ddof``), as ``sum`` gives sums."""
        return self._one("std", on, ddof=ddof, ignore_nulls=ignore_nulls)

    def _one(self, name: str, on: str | list[str] | None, **options: Any) -> Any:
        rows = getattr(self.groupby(None), name)(on, **options).take_all()
        row = rows[0] if rows else {}
        if isinstance(on, str):
            return row.get(f"{name}({on})")
        return dict(row)
