"""Stage meters: rows in and out of each stage of a chain of stream transforms and the time
each spends on its own work.

Each thread charges its time to the stage it is running now: entering a stage's ``next()``
makes it the current one, entering its upstream's (or waiting on a queue that another thread
fills, `waiting`) hands the clock on, and returning hands it back; two clock reads per block
and stage. Stages running in a prefetch thread and in the main thread are each measured where
they run, and a stage in the middle of a long call is seen busy while it runs.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import pyarrow as pa

from llmbatch.monitor.state import StageState

READ = "read"
WRITE = "write"

StreamFn = Callable[[Iterator[pa.Table]], Iterable[pa.Table]]


@dataclass(slots=True)
class StageMeter:
    name: str
    rows_in: int = 0
    rows_out: int = 0
    busy_s: float = 0.0


class _Clock:
    """One thread's clock: the stage it is charging now, and since when."""

    __slots__ = ("current", "since", "__weakref__")

    def __init__(self) -> None:
        self.current: StageMeter | None = None
        self.since = perf_counter()

    def switch(self, meter: StageMeter | None) -> StageMeter | None:
        """Charges the time since the last switch to the current stage and makes ``meter``
        the current one; returns the one it replaced."""
        now = perf_counter()
        previous = self.current
        if previous is not None:
            previous.busy_s += now - self.since
        self.since = now
        self.current = meter
        return previous


_local = threading.local()
_clocks: weakref.WeakSet[_Clock] = weakref.WeakSet()
_clocks_lock = threading.Lock()


def _clock() -> _Clock:
    clock = getattr(_local, "clock", None)
    if clock is None:
        clock = _local.clock = _Clock()
        with _clocks_lock:
            _clocks.add(clock)
    return clock


@contextmanager
def waiting() -> Iterator[None]:
    """Time in this block is no stage's own (e.g. waiting on a queue another thread fills)."""
    clock = _clock()
    previous = clock.switch(None)
    try:
        yield
    finally:
        clock.switch(previous)


class StageMeters:
    """The meters of one chain, in the order of the chain; `reset` zeroes them for a new run
    (in place, so a chain built earlier keeps counting into them)."""

    def __init__(self) -> None:
        self._meters: dict[str, StageMeter] = {}

    def __getitem__(self, name: str) -> StageMeter:
        if name not in self._meters:
            self._meters[name] = StageMeter(name)
        return self._meters[name]

    def reset(self) -> None:
        for meter in self._meters.values():
            meter.rows_in = meter.rows_out = 0
            meter.busy_s = 0.0

    def states(self) -> tuple[StageState, ...]:
        """The meters now, a call in progress included."""
        now = perf_counter()
        running: Counter[str] = Counter()
        with _clocks_lock:
            clocks = list(_clocks)
        for clock in clocks:
            current = clock.current
            if current is not None and self._meters.get(current.name) is current:
                running[current.name] += max(now - clock.since, 0.0)
        return tuple(
            StageState(m.name, m.rows_in, m.rows_out, m.busy_s + running[m.name])
            for m in self._meters.values()
        )


def _timed_output(tables: Iterator[pa.Table], meter: StageMeter) -> Iterator[pa.Table]:
    """``tables`` (a stage's output): the time inside its ``next()`` is the stage's, and the
    rows it yields its rows out."""
    try:
        while True:
            clock = _clock()
            previous = clock.switch(meter)
            try:
                table = next(tables, None)
            finally:
                clock.switch(previous)
            if table is None:
                return
            meter.rows_out += table.num_rows
            yield table
    finally:
        _close(tables)


def _timed_input(blocks: Iterator[pa.Table], meter: StageMeter) -> Iterator[pa.Table]:
    """``blocks`` (a stage's input): rows in; the time spent fetching them is not the stage's."""
    try:
        while True:
            clock = _clock()
            previous = clock.switch(None)
            try:
                table = next(blocks, None)
            finally:
                clock.switch(previous)
            if table is None:
                return
            meter.rows_in += table.num_rows
            yield table
    finally:
        _close(blocks)


def _timed_consumer(tables: Iterator[pa.Table], meter: StageMeter) -> Iterator[pa.Table]:
    """``tables`` handed to whatever consumes the chain (a writer): the time between handing a
    table over and being asked for the next is the consumer's."""
    try:
        for table in tables:
            meter.rows_in += table.num_rows
            clock = _clock()
            previous = clock.switch(meter)
            try:
                yield table
            finally:
                clock.switch(previous)
            meter.rows_out += table.num_rows
    finally:
        _close(tables)


def _close(stream: Iterator[Any]) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()


class MeteredStage:
    """A stage of a chain with its meter; the first of a chain also meters its input as the
    ``read`` stage, the last its consumer as the ``write`` stage. ``observe`` sees each table
    the stage yields (e.g. to count token lengths), ``observe_output`` each table the last
    stage hands on (the job's output rows)."""

    def __init__(
        self,
        stage: Any,
        meters: StageMeters,
        *,
        metered: bool,
        first: bool,
        last: bool,
        observe: Callable[[pa.Table], None] | None = None,
        observe_output: Callable[[pa.Table], None] | None = None,
    ) -> None:
        self.stage = stage
        self.name: str = stage.name
        self._meters = meters
        self._metered = metered
        self._first = first
        self._last = last
        self._observe = observe
        self._observe_output = observe_output

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        meters = self._meters
        stream: Iterator[pa.Table] = iter(blocks)
        if self._first:
            read = meters[READ]
            stream = _counted_in(_timed_output(stream, read), read)
        if self._metered:
            meter = meters[self.name]
            stream = _timed_output(iter(self.stage(_timed_input(stream, meter))), meter)
        else:
            stream = iter(self.stage(stream))
        if self._observe is not None:
            stream = _observed(stream, self._observe)
        if self._last:
            if self._observe_output is not None:
                stream = _observed(stream, self._observe_output)
            stream = _timed_consumer(stream, meters[WRITE])
        return stream


def _counted_in(tables: Iterator[pa.Table], meter: StageMeter) -> Iterator[pa.Table]:
    for table in tables:
        meter.rows_in += table.num_rows
        yield table


def _observed(tables: Iterator[pa.Table], observe: Callable[[pa.Table], None]) -> Iterator:
    for table in tables:
        observe(table)
        yield table


def meter_chain(
    stages: list[Any],
    meters: StageMeters,
    shown: Iterable[str],
    observers: dict[str, Callable[[pa.Table], None]] | None = None,
) -> list[MeteredStage]:
    """``stages`` with meters: those named in ``shown`` each get their own, the others' time
    counts as their downstream stage's; the chain's input is metered as ``read`` and its
    consumer as ``write``. ``observers`` maps a stage name to a function that sees each table
    it yields; the one under ``write`` sees the chain's output. The meters are registered in
    the chain's order."""
    shown = set(shown)
    observers = observers or {}
    meters[READ]
    for stage in stages:
        if stage.name in shown:
            meters[stage.name]
    meters[WRITE]
    last = len(stages) - 1
    return [
        MeteredStage(
            stage,
            meters,
            metered=stage.name in shown,
            first=i == 0,
            last=i == last,
            observe=observers.get(stage.name),
            observe_output=observers.get(WRITE),
        )
        for i, stage in enumerate(stages)
    ]
