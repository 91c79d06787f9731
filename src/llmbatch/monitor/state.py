"""What the monitor sees of a job at one moment: plain records, read by the dashboard, the
Prometheus exposition, the timeline file and the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class StageState:
    """One stage's rows in and out and the seconds it spent on its own work (not waiting for
    the stages before it or for the consumer after it)."""

    name: str
    rows_in: int
    rows_out: int
    busy_s: float

    @property
    def queued(self) -> int:
        """Rows inside the stage: taken in, not yet handed on."""
        return max(self.rows_in - self.rows_out, 0)


@dataclass(frozen=True, slots=True)
class EngineState:
    """One engine replica: gauges now, counters since it started."""

    replica: int
    running: int
    waiting: int
    kv_cache_usage: float
    prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int
    preemptions: int
    finished_requests: int
    steps: int
    step_s: float

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass(frozen=True, slots=True)
class GpuState:
    """One GPU as its driver reports it."""

    index: int
    name: str
    memory_used: int
    memory_total: int
    utilization: float | None


@dataclass(frozen=True, slots=True)
class RunCounts:
    """The current run's counters, as the processor keeps them."""

    rows: int = 0
    error_rows: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    preemptions: int = 0
    engine_startup_s: float = 0.0
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Sample:
    """The job at one moment. ``elapsed`` counts from the start of the run."""

    time: float
    elapsed: float
    counts: RunCounts
    stages: tuple[StageState, ...] = ()
    engines: tuple[EngineState, ...] = ()
    gpus: tuple[GpuState, ...] = ()
    errors_by_reason: dict[str, int] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict (stages as ``name: [rows_in, rows_out, busy_s]``)."""
        return {
            "time": round(self.time, 3),
            "elapsed": round(self.elapsed, 3),
            "counts": asdict(self.counts),
            "stages": {s.name: [s.rows_in, s.rows_out, round(s.busy_s, 4)] for s in self.stages},
            "engines": [asdict(e) for e in self.engines],
            "gpus": [asdict(g) for g in self.gpus],
            "errors_by_reason": dict(self.errors_by_reason),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Sample:
        return cls(
            time=record["time"],
            elapsed=record["elapsed"],
            counts=RunCounts(**record["counts"]),
            stages=tuple(
                StageState(name, int(a), int(b), float(c))
                for name, (a, b, c) in record.get("stages", {}).items()
            ),
            engines=tuple(EngineState(**e) for e in record.get("engines", [])),
            gpus=tuple(GpuState(**g) for g in record.get("gpus", [])),
            errors_by_reason=dict(record.get("errors_by_reason", {})),
        )
