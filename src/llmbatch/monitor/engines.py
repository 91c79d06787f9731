"""Reading engines and GPUs: each replica's `EngineStats`, and the GPUs through NVML."""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from llmbatch.monitor.state import EngineState, GpuState

if TYPE_CHECKING:
    from llmbatch.engine.llm_engine import EngineStats

logger = logging.getLogger("llmbatch")


def engine_states(engine: Any) -> tuple[EngineState, ...]:
    """One state per replica of ``engine`` (an engine in this process has one, data-parallel
    replicas report theirs with their outputs); nothing for an engine that reports none."""
    if engine is None:
        return ()
    stats: list[EngineStats | None]
    if hasattr(engine, "replica_stats"):
        stats = list(engine.replica_stats)
    elif hasattr(engine, "stats"):
        stats = [engine.stats]
    else:
        return ()
    return tuple(_state(i, s) for i, s in enumerate(stats) if s is not None)


def _state(replica: int, stats: EngineStats) -> EngineState:
    return EngineState(
        replica=replica,
        running=stats.num_running,
        waiting=stats.num_waiting,
        kv_cache_usage=stats.kv_cache_usage,
        prompt_tokens=stats.num_prompt_tokens,
        cached_prompt_tokens=stats.num_cached_tokens,
        generated_tokens=stats.num_generated_tokens,
        preemptions=stats.num_preemptions,
        finished_requests=stats.num_finished,
        steps=stats.num_steps,
        step_s=stats.step_seconds,
    )


class GpuReader:
    """Memory and utilisation of this machine's NVIDIA GPUs through NVML (`nvidia-ml-py`);
    nothing where there is no NVIDIA driver."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: list[Any] | None = None
        self._nvml: Any = None

    def read(self) -> tuple[GpuState, ...]:
        with self._lock:
            if self._handles is None:
                self._handles = self._open()
            states = []
            for index, handle in enumerate(self._handles):
                try:
                    memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                    try:
                        utilization = self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
                    except self._nvml.NVMLError:
                        utilization = None
                    name = self._nvml.nvmlDeviceGetName(handle)
                except self._nvml.NVMLError:
                    continue
                name = name.decode() if isinstance(name, bytes) else str(name)
                states.append(GpuState(index, name, memory.used, memory.total, utilization))
            return tuple(states)

    def _open(self) -> list[Any]:
        try:
            import pynvml

            pynvml.nvmlInit()
            indices = list(range(pynvml.nvmlDeviceGetCount()))
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in _visible(indices)]
        except Exception as exc:  # no driver, no library, no GPU: nothing to show
            logger.debug("no GPU readings: %s", exc)
            return []
        self._nvml = pynvml
        return handles


def _visible(indices: list[int]) -> list[int]:
    """The GPUs CUDA_VISIBLE_DEVICES names (by index), all of them when it names none."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not given:
        return indices
    try:
        chosen = [int(part) for part in given.split(",") if part.strip()]
    except ValueError:  # GPU UUIDs: keep every GPU rather than guess
        return indices
    return [i for i in chosen if i in indices]
