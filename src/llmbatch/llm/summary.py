"""Counters of one processor run and the summary computed from them."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class RunSummary:
    """What one run of a processor did.

    Rates are over the run's wall time less the engine's start-up (0 when it was already
    loaded), so they measure processing, not model loading. `preemptions` counts the times a
    request gave its KV cache up to others and was recomputed (many of them: the KV cache is
    too small for max_num_seqs sequences of these lengths). `retries` counts the HTTP
    processor's requests sent again after a failed attempt.
    """

    rows: int
    error_rows: int
    errors_by_kind: dict[str, int]
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    preemptions: int
    wall_time_s: float
    engine_startup_s: float
    rows_per_s: float
    output_tokens_per_s: float
    finished: bool
    retries: int = 0

    def format(self) -> str:
        """A few aligned lines for a terminal."""
        errors = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.errors_by_kind.items()))
        lines = [
            ("rows", f"{self.rows}"),
            ("error rows", f"{self.error_rows}" + (f" ({errors})" if errors else "")),
            ("input tokens", f"{self.input_tokens} ({self.cached_input_tokens} from prefix cache)"),
            ("output tokens", f"{self.output_tokens}"),
            ("preemptions", f"{self.preemptions}"),
            *([("retried requests", f"{self.retries}")] if self.retries else []),
            (
                "wall time",
                f"{self.wall_time_s:.2f} s (engine start-up {self.engine_startup_s:.2f} s)",
            ),
            ("rows/s", f"{self.rows_per_s:.2f}"),
            ("output tokens/s", f"{self.output_tokens_per_s:.1f}"),
        ]
        width = max(len(name) for name, _ in lines)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


@dataclass(slots=True)
class RunStats:
    """Live counters that the stages of one run update."""

    started_at: float = field(default_factory=time.perf_counter)
    finished_at: float | None = None
    rows: int = 0
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    preemptions: int = 0
    retries: int = 0
    engine_startup_s: float = 0.0

    def summary(self) -> RunSummary:
        end = self.finished_at if self.finished_at is not None else time.perf_counter()
        wall = end - self.started_at
        busy = max(wall - self.engine_startup_s, 1e-9)
        return RunSummary(
            rows=self.rows,
            error_rows=sum(self.errors_by_kind.values()),
            errors_by_kind=dict(self.errors_by_kind),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cached_input_tokens,
            preemptions=self.preemptions,
            wall_time_s=wall,
            engine_startup_s=self.engine_startup_s,
            rows_per_s=self.rows / busy,
            output_tokens_per_s=self.output_tokens / busy,
            finished=self.finished_at is not None,
            retries=self.retries,
        )
