"""Faults on purpose, for tests of what a job does when its engine dies or hangs. Set by
environment variables, which replica processes inherit; without them nothing happens.

- ``LLMBATCH_TEST_STALL_AT_STEP=N``: the Nth step of an engine (in each process) never returns.
- ``LLMBATCH_TEST_CRASH_ON_SEED=S``: stepping an engine that holds a request whose sampling
  params have ``seed=S`` kills it: a replica process kills itself (SIGKILL), an engine in this
  process raises RuntimeError, as a CUDA error would.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

STALL_ENV = "LLMBATCH_TEST_STALL_AT_STEP"
CRASH_ENV = "LLMBATCH_TEST_CRASH_ON_SEED"
_steps = 0


def before_step(seeds: Iterable[int | None], in_replica_process: bool) -> None:
    """Called before each engine step with the seeds of the requests inside the engine."""
    global _steps
    stall_at, crash_seed = os.environ.get(STALL_ENV), os.environ.get(CRASH_ENV)
    if stall_at:
        _steps += 1  # counted only while the variable is set
    if stall_at and _steps == int(stall_at):
        while True:  # a wait in Python, like an engine stuck on a lock or a collective
            time.sleep(0.05)
    if crash_seed and int(crash_seed) in set(seeds):
        if in_replica_process:
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"engine failure injected for a test ({CRASH_ENV}={crash_seed})")
