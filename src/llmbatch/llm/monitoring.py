"""A processor's side of watching its runs: the stages the monitor meters, the counters and
engine it reads, and the configuration it shows (see `llmbatch.monitor`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from llmbatch.monitor import JobMonitor
from llmbatch.monitor.state import RunCounts

# The stages shown with their own meters; the others (error policy, logging) pass rows on and
# their little time counts as the next stage's.
SHOWN_STAGES = (
    "preprocess",
    "chat_template",
    "tokenize",
    "engine",
    "http_request",
    "detokenize",
    "postprocess",
)
# The stage whose output rows carry token counts.
TOKEN_STAGE = "engine"
_PLAIN = (str, int, float, bool, type(None))


class Processor(Protocol):
    """What the monitor reads of a processor."""

    config: Any

    def summary(self) -> Any: ...

    @property
    def loaded_engine(self) -> Any: ...


def monitor_for(processor: Processor) -> JobMonitor:
    """The monitor of ``processor``'s runs."""
    return JobMonitor(lambda: _probe(processor), lambda: describe(processor))


def _probe(processor: Processor) -> tuple[RunCounts, Any]:
    summary = processor.summary()
    engine = processor.loaded_engine
    if summary is None:
        return RunCounts(), engine
    counts = RunCounts(
        rows=summary.rows,
        error_rows=summary.error_rows,
        input_tokens=summary.input_tokens,
        output_tokens=summary.output_tokens,
        cached_input_tokens=summary.cached_input_tokens,
        preemptions=summary.preemptions,
        engine_startup_s=summary.engine_startup_s,
        finished=summary.finished,
    )
    return counts, engine


def describe(processor: Processor) -> dict[str, Any]:
    """The configuration shown on the dashboard and in the report: the model, the processor's
    settings (credentials left out) and, once loaded, the engine's resolved config."""
    config = processor.config
    values = config.identity() if hasattr(config, "identity") else config.identity_values()
    settings = {name: _shown(value) for name, value in values.items()}
    description: dict[str, Any] = {
        "model": str(getattr(config, "model_source", None) or getattr(config, "url", "")),
        "processor": type(config).__name__,
        "settings": settings,
    }
    engine = processor.loaded_engine
    if engine is not None:
        resolved = {
            field.name: _shown(getattr(engine.config, field.name))
            for field in dataclasses.fields(engine.config)
            if field.name != "args"
        }
        description["engine"] = {**resolved, "replicas": engine.num_replicas}
    return description


def _shown(value: Any) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {str(k): _shown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shown(v) for v in value]
    return repr(value) if dataclasses.is_dataclass(value) else str(value)
