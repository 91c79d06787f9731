"""What a lazy dataset knows before it runs, and what each stage did when it last ran."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pyarrow as pa

# Counts a source's rows without running any user function; stops counting at ``stop_at``.
CountRows = Callable[[int | None], int]


@dataclass(frozen=True, slots=True)
class PlanInfo:
    """Facts about a dataset's output that hold without running it; ``None`` means unknown."""

    num_rows: int | None = None
    max_rows: int | None = None
    count_rows: CountRows | None = None
    num_blocks: int | None = None
    schema: pa.Schema | None = None

    @property
    def row_bound(self) -> int | None:
        return self.num_rows if self.num_rows is not None else self.max_rows

    def with_schema(self, schema: pa.Schema | None) -> PlanInfo:
        """After a stage that keeps every row and block but may change the columns."""
        return replace(self, schema=schema)

    def fewer_rows(self) -> PlanInfo:
        """After a stage that drops rows but keeps blocks and columns (filter)."""
        return PlanInfo(max_rows=self.row_bound, num_blocks=self.num_blocks, schema=self.schema)

    def limited(self, limit: int) -> PlanInfo:
        count_rows = self.count_rows
        bound = limit if self.row_bound is None else min(limit, self.row_bound)
        return PlanInfo(
            num_rows=None if self.num_rows is None else bound,
            max_rows=bound,
            count_rows=None
            if count_rows is None
            else lambda stop_at: count_rows(bound if stop_at is None else min(bound, stop_at)),
            schema=self.schema,
        )

    def exact_rows(self) -> int | None:
        """The row count, counting the source if needed; ``None`` when only running can tell."""
        if self.num_rows is not None:
            return self.num_rows
        if self.count_rows is not None:
            return self.count_rows(self.max_rows)
        return None


@dataclass(slots=True)
class StageStats:
    """Blocks, rows and time of one stage during the latest run that reached it."""

    name: str
    runs: int = 0
    blocks: int = 0
    rows: int = 0
    seconds: float = 0.0  # inside this stage and everything upstream of it

    def track(self, stream: Iterator[pa.Table]) -> Iterator[pa.Table]:
        self.runs += 1
        self.blocks, self.rows, self.seconds = 0, 0, 0.0
        while True:
            start = time.perf_counter()
            table = next(stream, None)
            self.seconds += time.perf_counter() - start
            if table is None:
                return
            self.blocks += 1
            self.rows += table.num_rows
            yield table


def describe_stats(stages: list[StageStats]) -> str:
    """One line per stage, source first, with the time spent in the stage itself."""
    lines = []
    upstream_seconds = 0.0
    for stage in stages:
        if stage.runs == 0:
            lines.append(f"{stage.name}: not run yet")
            continue
        own = max(stage.seconds - upstream_seconds, 0.0)
        upstream_seconds = stage.seconds
        lines.append(f"{stage.name}: {stage.blocks} blocks, {stage.rows} rows, {own:.3f}s")
    return "\n".join(lines)
