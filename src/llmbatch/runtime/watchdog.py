"""Noticing an engine that makes no progress: a step that does not return, or replicas that
send nothing while they hold requests, for ``engine_stall_timeout_s``. The job then stops with
an error holding the stacks of every thread, instead of hanging."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator

logger = logging.getLogger("llmbatch")

# After the timeout, a step stuck in native code (never back in Python) gets this long to
# notice the interruption before the process exits.
NATIVE_GRACE_S = 60.0
STALL_EXIT_CODE = 70


class EngineStalled(RuntimeError):
    """The engine made no progress for engine_stall_timeout_s."""


class _Interrupt(BaseException):
    """Raised inside the stuck step's thread; turned into EngineStalled there."""


def thread_stacks() -> str:
    """The current stack of every thread of this process."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f'Thread "{names.get(ident, ident)}":\n{stack}')
    return "\n".join(parts)


def stall_message(what: str, timeout_s: float, stacks: str) -> str:
    return (
        f"{what} made no progress for {timeout_s:g} s (engine_stall_timeout_s); the job is "
        f"stopped and the rows already written are kept. Raise engine_stall_timeout_s if the "
        f"engine is only slow. Stacks of the threads:\n{stacks}"
    )


class StepWatchdog:
    """Watches steps of an engine in this process: a step running longer than ``timeout_s``
    raises EngineStalled in the thread that runs it."""

    def __init__(self, timeout_s: float, what: str = "the engine") -> None:
        self._timeout = timeout_s
        self._what = what
        self._lock = threading.Lock()
        self._started: float | None = None
        self._thread: int | None = None
        self._report: str | None = None
        self._delivered = threading.Event()
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="llmbatch-watchdog", daemon=True)
        self._watcher.start()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Runs one step under watch."""
        with self._lock:
            self._started, self._thread, self._report = (
                time.monotonic(),
                threading.get_ident(),
                None,
            )
        try:
            try:
                yield
            finally:
                with self._lock:
                    self._started = None
        except _Interrupt:
            self._delivered.set()
            raise EngineStalled(self._report or "the engine stalled") from None

    def close(self) -> None:
        self._closed.set()

    def _watch(self) -> None:
        period = min(1.0, self._timeout / 10)
        while not self._closed.wait(period):
            with self._lock:
                started, thread = self._started, self._thread
                if started is None or time.monotonic() - started < self._timeout:
                    continue
                self._report = stall_message(self._what, self._timeout, thread_stacks())
                self._delivered.clear()
                logger.error("%s", self._report)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(thread), ctypes.py_object(_Interrupt)
                )
            if self._delivered.wait(NATIVE_GRACE_S) or self._closed.is_set():
                continue
            logger.critical("the stalled engine step never returned to Python; exiting")
            faulthandler.dump_traceback(all_threads=True)
            os._exit(STALL_EXIT_CODE)
