"""``sort``: every row in the order of one or more key columns.

The rows are held (spilled to memory-mapped files beyond a few hundred MB, see ``spill``),
pyarrow sorts the key columns, and the rows are gathered in that order block by block: memory
holds the key columns and one 8-byte index per row, not the other columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmbatch.data import spill
from llmbatch.data.plan import PlanInfo

if TYPE_CHECKING:
    from typing_extensions import Self

    from llmbatch.data.blocks import Stream


class SortOperations:
    """``sort`` of ``Dataset``."""

    if TYPE_CHECKING:
        _info: PlanInfo

        def _chain(
            self, name: str, apply: Callable[[Stream], Stream], info: PlanInfo, code: Any = None
        ) -> Self: ...

    def sort(
        self,
        key: str | list[str],
        descending: bool | list[bool] = False,
        boundaries: list[int | float] | None = None,
    ) -> Self:
        """The rows ordered by ``key`` (a column or a list of columns, compared in turn),
        ascending or ``descending`` (one flag, or one per key); nulls and NaN come last. Rows
        with equal keys keep their input order. ``boundaries`` (numbers, increasing) cut the
        output into blocks by the first key's value: below the first boundary, then up to the
        next, and so on."""
        keys, flags = sort_keys(key, descending)
        cuts = _check_boundaries(boundaries)
        info = self._info

        def apply(stream: Stream) -> Stream:
            table, num_blocks = spill.collect(stream)
            if table.num_rows == 0:
                if num_blocks:
                    yield table
                return
            order = sorted_indices(table, keys, flags)
            if cuts is None:
                yield from spill.emit(table, order, spill.rows_per_block(len(order), num_blocks))
                return
            gatherer = spill.RowGatherer(table)
            for start, stop in _boundary_runs(table.column(keys[0]), order, cuts):
                yield gatherer.take(order[start:stop])

        return self._chain(
            f"sort({keys}, descending={flags})",
            apply,
            PlanInfo(info.num_rows, info.max_rows, info.count_rows, schema=info.schema),
        )


def sort_keys(key: Any, descending: Any) -> tuple[list[str], list[bool]]:
    """Ray's ``key`` and ``descending`` arguments, checked."""
    if key is None:
        raise ValueError("sort needs a key: a column name or a list of them")
    keys = [key] if isinstance(key, str) else key
    if not isinstance(keys, list | tuple) or not keys or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"sort: key must be a column name or a list of them, got {key!r}")
    if isinstance(descending, bool | np.bool_):
        flags = [bool(descending)] * len(keys)
    elif isinstance(descending, list | tuple) and len(descending) == len(keys):
        flags = [bool(flag) for flag in descending]
    else:
        raise ValueError(
            f"sort: descending must be a bool or a list of {len(keys)} bools (one per key), "
            f"got {descending!r}"
        )
    return list(keys), flags


def sorted_indices(table: pa.Table, keys: list[str], descending: list[bool]) -> np.ndarray:
    """The row order of ``table`` sorted by ``keys`` (stable; nulls and NaN last)."""
    missing = [name for name in keys if name not in table.column_names]
    if missing:
        raise KeyError(f"sort: no column(s) {missing}; the columns are {table.column_names}")
    try:
        order = pc.sort_indices(
            table.select(keys),
            sort_keys=[
                (name, "descending" if flag else "ascending", "at_end")
                for name, flag in zip(keys, descending)
            ],
        )
    except (MemoryError, pa.ArrowMemoryError) as error:
        raise MemoryError(
            f"sort: the key columns {keys} of {table.num_rows} rows do not fit in memory (the "
            f"other columns wait in temporary files); sort by fewer or smaller keys"
        ) from error
    return order.to_numpy()


def _check_boundaries(boundaries: Any) -> np.ndarray | None:
    if boundaries is None:
        return None
    values = np.asarray(boundaries)
    if values.ndim != 1 or values.dtype.kind not in "iuf" or len(values) == 0:
        raise ValueError(f"sort: boundaries must be a list of numbers, got {boundaries!r}")
    if np.any(np.diff(values) <= 0):
        raise ValueError(f"sort: boundaries must be increasing, got {boundaries!r}")
    return values


def _boundary_runs(
    column: pa.ChunkedArray, order: np.ndarray, cuts: np.ndarray
) -> list[tuple[int, int]]:
    """Runs of the sorted order whose first key falls between the same boundaries."""
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise TypeError(f"sort: boundaries need a numeric first key, it is {column.type}")
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    bucket = np.searchsorted(cuts, values[order], side="right")
    bucket[np.isnan(values[order])] = len(cuts)
    changes = np.flatnonzero(np.diff(bucket)) + 1
    starts = np.r_[0, changes]
    stops = np.r_[changes, len(order)]
    return list(zip(starts.tolist(), stops.tolist()))
