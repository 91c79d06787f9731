"""Splitting a dataset into materialized pieces: ``split``, ``split_at_indices``,
``split_proportionately`` and ``train_test_split``, with Ray Data's arguments and checks.

The rows are held as ``spill`` holds them; the pieces are slices of them, so splitting copies
nothing."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from llmbatch.data import spill
from llmbatch.data.blocks import Stream, balanced_sizes
from llmbatch.data.outputs import check_count

if TYPE_CHECKING:
    from typing_extensions import Self

_ROW = "__llmbatch_row"


class SplitOperations:
    """The splitting methods of ``Dataset``."""

    if TYPE_CHECKING:

        def _blocks(self) -> Stream: ...

        def _materialized(self, blocks: Sequence[pa.Table]) -> Self: ...

        def random_shuffle(self, *, seed: int | None = None) -> Self: ...

    def split(
        self, n: int, *, equal: bool = False, locality_hints: list[Any] | None = None
    ) -> list[Self]:
        """``n`` pieces of consecutive rows whose sizes differ by at most one row; with
        ``equal``, each has exactly ``len // n`` rows and the rest are dropped.
        ``locality_hints`` only matters on a Ray cluster and must have ``n`` entries."""
        n = check_count("n", n, minimum=1)
        if locality_hints is not None and len(locality_hints) != n:
            raise ValueError(f"split: {len(locality_hints)} locality_hints for {n} splits")
        table = self._all_rows()
        sizes = [table.num_rows // n] * n if equal else balanced_sizes(table.num_rows, n)
        return self._pieces(table, sizes)

    def split_at_indices(self, indices: list[int]) -> list[Self]:
        """Pieces cut before each of ``indices`` (sorted, >= 0), like ``numpy.split``; an index
        beyond the end gives empty pieces."""
        if not isinstance(indices, list | tuple) or len(indices) < 1:
            raise ValueError("split_at_indices needs a list of at least one index")
        cuts = [check_count("index", index, minimum=0) for index in indices]
        if cuts != sorted(cuts):
            raise ValueError(f"split_at_indices: indices must be sorted, got {list(indices)}")
        table = self._all_rows()
        bounded = [min(cut, table.num_rows) for cut in cuts]
        edges = [0, *bounded, table.num_rows]
        return self._pieces(table, [stop - start for start, stop in itertools.pairwise(edges)])

    def split_proportionately(self, proportions: list[float]) -> list[Self]:
        """Pieces holding these fractions of the rows (summing to less than 1), and a last
        piece with the rest; every piece gets at least one row."""
        if not isinstance(proportions, list | tuple) or len(proportions) < 1:
            raise ValueError("split_proportionately needs a list of at least one proportion")
        if any(p <= 0 for p in proportions) or sum(proportions) >= 1:
            raise ValueError(
                f"split_proportionately: proportions must be > 0 and sum to less than 1, got "
                f"{list(proportions)}"
            )
        table = self._all_rows()
        cuts = [int(table.num_rows * p) for p in np.cumsum(proportions)]
        for i in range(len(cuts) - 2, -1, -1):
            if cuts[i] >= cuts[i + 1]:
                cuts[i] = cuts[i + 1] - 1
        if any(cut <= 0 for cut in cuts) or cuts[-1] >= table.num_rows:
            raise ValueError(
                f"split_proportionately: {table.num_rows} rows cannot make non-empty pieces of "
                f"{list(proportions)}"
            )
        edges = [0, *cuts, table.num_rows]
        return self._pieces(table, [stop - start for start, stop in itertools.pairwise(edges)])

    def train_test_split(
        self,
        test_size: int | float,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        stratify: str | None = None,
    ) -> tuple[Self, Self]:
        """A train and a test piece: the last ``test_size`` rows (an int) or that fraction of
        them (a float in (0, 1)) are the test piece, after a ``random_shuffle(seed=seed)`` with
        ``shuffle``. With ``stratify`` (a column), each of its values gives that fraction of its
        own rows (its last ones) to the test piece; both pieces keep the input order."""
        if isinstance(test_size, bool) or not isinstance(test_size, int | float | np.number):
            raise TypeError(f"train_test_split: test_size must be int or float, got {test_size!r}")
        if shuffle and stratify is not None:
            raise ValueError("train_test_split: shuffle=True and stratify cannot both be given")
        if isinstance(test_size, float | np.floating) and not 0 < test_size < 1:
            raise ValueError(
                f"train_test_split: a float test_size must be in (0, 1), got {test_size}"
            )
        source = self.random_shuffle(seed=seed) if shuffle else self
        table = source._all_rows()
        count = table.num_rows
        if isinstance(test_size, int | np.integer) and not 0 < test_size < count:
            raise ValueError(
                f"train_test_split: an int test_size must be > 0 and < the {count} rows, got "
                f"{test_size}"
            )
        fraction = float(test_size) if isinstance(test_size, float | np.floating) else None
        if stratify is not None:
            in_test = _stratified_test_rows(table, stratify, fraction or test_size / count)
            rows = np.arange(count)
            gatherer = spill.RowGatherer(table)
            train, test = gatherer.take(rows[~in_test]), gatherer.take(rows[in_test])
            return self._materialized([train]), self._materialized([test])
        if fraction is not None:
            cut = int(count * (1 - fraction))
            if cut <= 0:
                raise ValueError(f"train_test_split: {count} rows leave no training rows")
            return tuple(self._pieces(table, [cut, count - cut]))  # type: ignore[return-value]
        return tuple(self._pieces(table, [count - test_size, test_size]))  # type: ignore[return-value]

    def _all_rows(self) -> pa.Table:
        table, _ = spill.collect(self._blocks())
        return table

    def _pieces(self, table: pa.Table, sizes: list[int]) -> list[Self]:
        starts = itertools.accumulate(sizes, initial=0)
        return [
            self._materialized([table.slice(start, size)]) for start, size in zip(starts, sizes)
        ]


def _stratified_test_rows(table: pa.Table, column: str, fraction: float) -> np.ndarray:
    """Which rows go to the test piece: the last ``int(n * fraction)`` rows of each value."""
    if column not in table.column_names:
        raise KeyError(
            f"train_test_split: no column {column!r}; the columns are {table.column_names}"
        )
    numbered = table.select([column]).append_column(_ROW, pa.array(np.arange(table.num_rows)))
    groups = numbered.group_by([column], use_threads=False).aggregate([(_ROW, "list")])
    in_test = np.zeros(table.num_rows, dtype=bool)
    for rows in groups.column(f"{_ROW}_list").to_pylist():
        take = int(len(rows) * fraction)
        if take:
            in_test[rows[len(rows) - take :]] = True
    return in_test
