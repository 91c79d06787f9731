"""What the dashboard page shows, computed from the sampled history: rates over recent
windows, the stages' busy shares, ETA, and the series for the charts."""

from __future__ import annotations

from typing import Any

from llmbatch.monitor.state import Sample

# rates and busy shares are measured over this many seconds of history
RATE_WINDOW_S = 10.0
ETA_WINDOW_S = 30.0
MAX_POINTS = 600


def generated_tokens(sample: Sample) -> int:
    """Output tokens so far: counted per step by the engines when they report, else as rows
    finish."""
    if sample.engines:
        return sum(e.generated_tokens for e in sample.engines)
    return sample.counts.output_tokens


def prompt_tokens(sample: Sample) -> int:
    if sample.engines:
        return sum(e.prompt_tokens for e in sample.engines)
    return sample.counts.input_tokens


def rate(a: Sample, b: Sample, value: Any) -> float:
    """Per second from ``a`` to ``b`` (0 across an engine restart, whose counters start over)."""
    seconds = b.time - a.time
    if seconds <= 0:
        return 0.0
    return max(value(b) - value(a), 0) / seconds


def window_start(history: list[Sample], seconds: float) -> Sample:
    last = history[-1]
    for sample in history:
        if last.time - sample.time <= seconds:
            return sample
    return last


def progress(
    history: list[Sample], committed_before: int, total_rows: int | None
) -> tuple[int, float, float | None]:
    """Rows done in the whole job, rows per second of late, and the seconds left (None when
    the total or the rate is unknown)."""
    last = history[-1]
    done = committed_before + last.counts.rows
    rows_per_s = rate(window_start(history, ETA_WINDOW_S), last, lambda s: s.counts.rows)
    eta = None
    if total_rows is not None and rows_per_s > 0:
        eta = max(total_rows - done, 0) / rows_per_s
    return done, rows_per_s, eta


def dashboard_view(
    description: dict[str, Any],
    history: list[Sample],
    committed_before: int,
    total_rows: int | None,
    error_examples: dict[str, list[str]],
    active: bool,
) -> dict[str, Any]:
    last = history[-1]
    recent = window_start(history, RATE_WINDOW_S)
    done, rows_per_s, eta = progress(history, committed_before, total_rows)
    if last.counts.finished:
        status = "finished"
    elif last.counts.rows == 0 and not last.engines and last.elapsed > 0 and active:
        status = "loading"
    else:
        status = "running" if active else "idle"
    span = max(last.time - recent.time, 1e-9)
    earlier = {s.name: s for s in recent.stages}
    stages = []
    for stage in last.stages:
        before = earlier.get(stage.name)
        busy = stage.busy_s - (before.busy_s if before else 0.0)
        stages.append(
            {
                "name": stage.name,
                "rows_in": stage.rows_in,
                "rows_out": stage.rows_out,
                "queued": stage.queued,
                "busy_s": stage.busy_s,
                "busy_share": min(busy / span, 1.0) if recent is not last else 0.0,
            }
        )
    engines_before = {e.replica: e for e in recent.engines}
    engines = []
    for engine in last.engines:
        before = engines_before.get(engine.replica)
        steps = engine.steps - (before.steps if before else 0)
        step_s = engine.step_s - (before.step_s if before else 0.0)
        generated = engine.generated_tokens - (before.generated_tokens if before else 0)
        engines.append(
            {
                "replica": engine.replica,
                "running": engine.running,
                "waiting": engine.waiting,
                "kv_cache_usage": engine.kv_cache_usage,
                "prefix_cache_hit_rate": engine.prefix_cache_hit_rate,
                "preemptions": engine.preemptions,
                "step_ms": 1000 * step_s / steps if steps > 0 else None,
                "output_tokens_per_s": max(generated, 0) / span if recent is not last else 0.0,
            }
        )
    errors = [
        {"reason": reason, "count": count, "examples": error_examples.get(reason, [])}
        for reason, count in sorted(last.errors_by_reason.items(), key=lambda kv: -kv[1])
    ]
    return {
        "job": description,
        "status": status,
        "now": {
            "elapsed_s": last.elapsed,
            "rows_done": done,
            "rows_total": total_rows,
            "rows_this_run": last.counts.rows,
            "eta_s": eta,
            "rows_per_s": rows_per_s,
            "output_tokens_per_s": rate(recent, last, generated_tokens),
            "input_tokens_per_s": rate(recent, last, prompt_tokens),
            "output_tokens": last.counts.output_tokens,
            "input_tokens": last.counts.input_tokens,
            "error_rows": last.counts.error_rows,
            "engine_startup_s": last.counts.engine_startup_s,
            "stages": stages,
            "engines": engines,
            "gpus": [
                {
                    "index": g.index,
                    "name": g.name,
                    "memory_used": g.memory_used,
                    "memory_total": g.memory_total,
                    "utilization": g.utilization,
                }
                for g in last.gpus
            ],
            "errors": errors,
        },
        "series": _series(history, committed_before),
    }


def _series(history: list[Sample], committed_before: int) -> dict[str, Any]:
    """Per-sample values for the charts, at most MAX_POINTS of them."""
    step = max(1, -(-len(history) // MAX_POINTS))
    points = history[::step]
    if points[-1] is not history[-1]:
        points.append(history[-1])
    series: dict[str, Any] = {
        "elapsed_s": [round(s.elapsed, 2) for s in points],
        "rows_done": [committed_before + s.counts.rows for s in points],
        "output_tokens_per_s": [],
        "input_tokens_per_s": [],
        "engines": {},
        "gpus": {},
    }
    for i, sample in enumerate(points):
        previous = points[i - 1] if i else sample
        series["output_tokens_per_s"].append(round(rate(previous, sample, generated_tokens), 1))
        series["input_tokens_per_s"].append(round(rate(previous, sample, prompt_tokens), 1))
    replicas = sorted({e.replica for s in points for e in s.engines})
    for replica in replicas:
        lines: dict[str, list[Any]] = {"running": [], "waiting": [], "kv_cache_usage": []}
        for sample in points:
            engine = next((e for e in sample.engines if e.replica == replica), None)
            for name in lines:
                lines[name].append(None if engine is None else getattr(engine, name))
        series["engines"][str(replica)] = lines
    for index in sorted({g.index for s in points for g in s.gpus}):
        memory: list[Any] = []
        utilization: list[Any] = []
        for sample in points:
            gpu = next((g for g in sample.gpus if g.index == index), None)
            memory.append(None if gpu is None else gpu.memory_used)
            utilization.append(None if gpu is None else gpu.utilization)
        series["gpus"][str(index)] = {"memory_used": memory, "utilization": utilization}
    return series
