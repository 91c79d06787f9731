"""Joining datasets: ``union`` (one after the other) and ``zip`` (side by side), streamed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from llmbatch.data.blocks import Stream, concat, unify_schemas
from llmbatch.data.plan import PlanInfo

if TYPE_CHECKING:
    from typing_extensions import Self


class CombineOperations:
    """``union`` and ``zip`` of ``Dataset``."""

    if TYPE_CHECKING:
        _info: PlanInfo

        def _blocks(self) -> Stream: ...

        def _combine(
            self,
            name: str,
            open_stream: Callable[[], Stream],
            parents: Sequence[Self],
            info: PlanInfo,
        ) -> Self: ...

    def union(self, *other: Self) -> Self:
        """The rows of this dataset, then those of each of ``other`` in turn, in order. Columns
        are unified as blocks meet (a column one dataset lacks is null in its rows)."""
        datasets = [self, *_datasets("union", other)]

        def stream() -> Stream:
            for dataset in datasets:
                yield from dataset._blocks()

        infos = [dataset._info for dataset in datasets]
        counts = [info.num_rows for info in infos]
        num_rows = None if None in counts else sum(counts)
        schemas = [info.schema for info in infos]
        schema = None if None in schemas else unify_schemas(schemas)
        countable = all(info.num_rows is not None or info.count_rows for info in infos)

        def count_rows(stop_at: int | None) -> int:
            return sum(info.exact_rows() or 0 for info in infos)

        info = PlanInfo(
            num_rows=num_rows,
            count_rows=count_rows if countable and num_rows is None else None,
            schema=schema,
        )
        return self._combine(f"union({len(datasets)} datasets)", stream, datasets, info)

    def zip(self, *other: Self) -> Self:
        """Row i of every dataset side by side, in this dataset's blocks. The datasets must have
        the same number of rows (a ValueError otherwise); a column name already taken gets the
        suffix ``_1`` (``_2``, ...: the position of its dataset in ``other``)."""
        others = _datasets("zip", other)
        datasets = [self, *others]

        def stream() -> Stream:
            sources = [_RowSource(dataset._blocks()) for dataset in others]
            rows = 0
            for table in self._blocks():
                pieces = [
                    source.take(table.num_rows, rows, i + 1) for i, source in enumerate(sources)
                ]
                rows += table.num_rows
                yield _side_by_side(table, pieces)
            for i, source in enumerate(sources):
                extra = source.remaining()
                if extra:
                    raise ValueError(
                        f"zip needs datasets of the same number of rows: this one has {rows}, "
                        f"dataset {i + 1} of the arguments has more"
                    )

        counts = [dataset._info.num_rows for dataset in datasets]
        if None not in counts and len(set(counts)) > 1:
            raise ValueError(f"zip needs datasets of the same number of rows, got {counts}")
        info = PlanInfo(num_rows=self._info.num_rows, count_rows=self._info.count_rows)
        return self._combine(f"zip({len(datasets)} datasets)", stream, datasets, info)


def _datasets(method: str, others: Sequence[Any]) -> list[Any]:
    if not others:
        raise ValueError(f"{method} needs at least one other dataset")
    for other in others:
        if not isinstance(other, CombineOperations):
            raise TypeError(f"{method} takes llmbatch Datasets, got {type(other).__name__}")
    return list(others)


class _RowSource:
    """Hands out a stream's rows in runs of any length, pulling blocks as needed."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._pending: list[pa.Table] = []
        self._rows = 0

    def take(self, count: int, rows_before: int, position: int) -> pa.Table:
        while self._rows < count:
            table = next(self._stream, None)
            if table is None:
                raise ValueError(
                    f"zip needs datasets of the same number of rows: dataset {position} of the "
                    f"arguments has {rows_before + self._rows}, fewer than this one"
                )
            self._pending.append(table)
            self._rows += table.num_rows
        joined = concat(self._pending) if self._pending else pa.table({})
        taken, rest = joined.slice(0, count), joined.slice(count)
        self._pending = [rest] if rest.num_rows else []
        self._rows -= count
        return taken

    def remaining(self) -> int:
        return self._rows + sum(table.num_rows for table in self._stream)


def _side_by_side(table: pa.Table, others: list[pa.Table]) -> pa.Table:
    names = list(table.column_names)
    columns = list(table.columns)
    for position, other in enumerate(others, start=1):
        for name, column in zip(other.column_names, other.columns):
            names.append(f"{name}_{position}" if name in names else name)
            columns.append(column)
    return pa.Table.from_arrays(columns, names=names)
