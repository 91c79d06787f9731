"""Randomness: ``random_shuffle`` (every row, in a random order) and ``random_sample`` (a random
fraction of the rows, in their order, streamed)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from llmbatch.data import spill
from llmbatch.data.outputs import check_count
from llmbatch.data.plan import PlanInfo
from llmbatch.data.udf import check_scheduling_keywords

if TYPE_CHECKING:
    from typing_extensions import Self

    from llmbatch.data.blocks import Stream


class SampleOperations:
    """``random_shuffle`` and ``random_sample`` of ``Dataset``."""

    if TYPE_CHECKING:
        _info: PlanInfo

        def _chain(
            self, name: str, apply: Callable[[Stream], Stream], info: PlanInfo, code: Any = None
        ) -> Self: ...

    def random_shuffle(
        self, *, seed: int | None = None, num_blocks: int | None = None, **scheduling: Any
    ) -> Self:
        """Every row in a random order: the same order on every run with an int ``seed``, a new
        one each run without. The rows are held as ``spill`` holds them. ``num_blocks`` (which
        Ray Data deprecates for ``repartition``) sets the number of output blocks."""
        check_scheduling_keywords("random_shuffle", scheduling)
        seed = _check_seed(seed)
        if num_blocks is not None:
            num_blocks = check_count("num_blocks", num_blocks, minimum=1)
            warnings.warn(
                "random_shuffle(num_blocks=...) is deprecated in Ray Data; use "
                "random_shuffle().repartition(num_blocks) instead",
                DeprecationWarning,
                stacklevel=2,
            )
        info = self._info

        def apply(stream: Stream) -> Stream:
            table, blocks = spill.collect(stream)
            if table.num_rows == 0:
                return
            order = np.random.default_rng(seed).permutation(table.num_rows)
            size = spill.rows_per_block(table.num_rows, num_blocks or blocks)
            yield from spill.emit(table, order, size)

        return self._chain(
            f"random_shuffle(seed={seed})",
            apply,
            PlanInfo(info.num_rows, info.max_rows, info.count_rows, num_blocks, info.schema),
        )

    def random_sample(self, fraction: float, *, seed: int | None = None) -> Self:
        """Each row kept with probability ``fraction``, rows keeping their order (about
        ``fraction`` of them, not exactly); the same rows on every run with an int ``seed``."""
        if isinstance(fraction, bool) or not isinstance(fraction, int | float | np.number):
            raise TypeError(f"random_sample: fraction must be a number, got {fraction!r}")
        if not 0 <= fraction <= 1:
            raise ValueError(f"random_sample: fraction must be in [0, 1], got {fraction}")
        seed = _check_seed(seed)

        def apply(stream: Stream) -> Stream:
            for index, table in enumerate(stream):
                rng = np.random.default_rng(None if seed is None else [seed, index])
                yield table.filter(rng.random(table.num_rows) < fraction)

        return self._chain(
            f"random_sample({fraction}, seed={seed})", apply, self._info.fewer_rows()
        )


def _check_seed(seed: Any) -> int | None:
    return None if seed is None else check_count("seed", seed, minimum=0)
