"""Runs an iterator in a background thread, so reading, preprocessing and tokenizing the next
rows overlaps the engine's steps instead of stalling them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

from llmbatch.monitor.meters import waiting

T = TypeVar("T")

_END = object()


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher(Generic[T]):
    """Pulls items from `source` ahead of the consumer, at most `depth` items ahead.

    `get(block=False)` returns None when no item is ready yet; `exhausted` tells the end.
    An exception raised by the source is raised again by `get`.
    """

    def __init__(self, source: Iterator[T], depth: int, name: str = "llmbatch-prefetch"):
        self._source = source
        self._items: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.exhausted = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(_Failure(exc))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, block: bool) -> T | None:
        """The next item; None when `block` is False and none is ready, or at the end."""
        if self.exhausted:
            return None
        try:
            # time waiting for the source is the source's, not the consumer's
            with waiting():
                item = self._items.get(block=block)
        except queue.Empty:
            return None
        if item is _END:
            self.exhausted = True
            return None
        if isinstance(item, _Failure):
            self.exhausted = True
            raise item.exc
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stops the thread (it closes the source) and waits briefly for it."""
        self._stop.set()
        self._thread.join(timeout=5)
