"""How many engine replicas a processor's ``concurrency`` gives on this host, and their devices.

As in Ray Data LLM, an int ``concurrency`` is an upper bound and a ``(min, max)`` pair sets both
bounds. A replica needs ``tensor_parallel_size`` GPUs on a GPU host. On a CPU-only host a replica
can run on ``tensor_parallel_size`` cores, but runs best on ``CPU_CORES_PER_REPLICA`` times that:
an int gives ``min(concurrency, cores // (tensor_parallel_size * CPU_CORES_PER_REPLICA))``
replicas (at least one), and a ``(min, max)`` pair may ask for up to ``cores //
tensor_parallel_size``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger("llmbatch")

# On a 2-core host, one replica with both cores ran the tutorial in 18.8 s against 29.1 s for
# two replicas of one core each (start-up 0.8 s against 4.9 s, 229 against 161 output tok/s):
# threads of one process share a small model's matmuls well, and the main process needs a core
# to read, tokenize and write rows.
CPU_CORES_PER_REPLICA = 4


@dataclass(slots=True, frozen=True)
class ReplicaPlan:
    """The replicas to start: one entry of ``devices`` per replica."""

    devices: tuple[str, ...]
    """"cpu", or the GPU indices a replica owns, comma-separated (its CUDA_VISIBLE_DEVICES)."""
    num_threads: int | None
    """torch threads per CPU replica, so that replicas split the cores instead of fighting."""

    @property
    def num_replicas(self) -> int:
        return len(self.devices)

    @property
    def on_gpu(self) -> bool:
        return self.devices[0] != "cpu"


def host_cpu_count() -> int:
    """Cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _host_gpus(device: str) -> list[int]:
    """The GPUs replicas may use for a resolved ``device`` ("cpu", "cuda" or "cuda:N")."""
    if device == "cpu":
        return []
    import torch

    if device.startswith("cuda:"):
        return [int(device.split(":", 1)[1])]
    return list(range(torch.cuda.device_count()))


def plan_replicas(
    concurrency: int | tuple[int, int], device: str, tensor_parallel_size: int
) -> ReplicaPlan:
    """The replicas for ``concurrency`` on this host, for engines on a resolved ``device``
    ("cpu", "cuda" or "cuda:N") of ``tensor_parallel_size`` ranks each.

    Raises ValueError when the host cannot run the minimum asked for; logs one warning when it
    runs fewer than an int ``concurrency`` asks.
    """
    low, high = (1, concurrency) if isinstance(concurrency, int) else concurrency
    tp = tensor_parallel_size
    gpus = _host_gpus(device)
    if gpus:
        available = len(gpus) // tp
        host = f"{len(gpus)} GPU(s) for engine replicas of tensor_parallel_size={tp}"
        preferred = available
    else:
        cores = host_cpu_count()
        available = max(1, cores // tp)
        preferred = max(1, cores // (tp * CPU_CORES_PER_REPLICA))
        host = (
            f"no GPU and {cores} CPU core(s) (one replica per {tp * CPU_CORES_PER_REPLICA} "
            f"core(s), at most one per {tp} when concurrency's minimum asks for more)"
        )
    if available < low:
        raise ValueError(
            f"concurrency={concurrency!r} needs at least {low} engine replicas, but this host has "
            f"{host}, enough for {available}; lower the minimum of concurrency"
        )
    count = min(high, max(low, preferred))
    if count < high:
        logger.warning(
            "concurrency=%r: running %d engine replica(s); this host has %s",
            concurrency,
            count,
            host,
        )
    if gpus:
        devices = tuple(",".join(str(g) for g in gpus[i * tp : (i + 1) * tp]) for i in range(count))
        return ReplicaPlan(devices=devices, num_threads=None)
    return ReplicaPlan(devices=("cpu",) * count, num_threads=max(1, host_cpu_count() // count))
