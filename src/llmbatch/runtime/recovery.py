"""What happens when an engine dies mid-run: it is restarted and the requests it was running
are run again, and a request that makes it die every time is found and given up on.

After a crash, the requests that were inside the engine run again by themselves (no other
request joins them), so the next crash can be blamed on them: if they crash it again, they are
split in two halves run one after the other, down to the one request that does; that request
is rejected (its row becomes an error row) and the others finish. An engine that keeps dying
without any request finishing stops the job: after ``max_engine_restarts`` restarts in a row,
not counting those that narrowed down the request to blame (so a broken engine stops after
blaming at most that many requests, not every row).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmbatch.engine.outputs import RequestRejected

if TYPE_CHECKING:
    from llmbatch.engine.lora_request import LoRARequest
    from llmbatch.engine.multimodal import MultiModalInputs
    from llmbatch.engine.pooling_params import PoolingParams
    from llmbatch.engine.sampling_params import SamplingParams

logger = logging.getLogger("llmbatch")

DEFAULT_MAX_ENGINE_RESTARTS = 3
# Longer than any start-up or first step (loading, compiling kernels, capturing graphs).
DEFAULT_ENGINE_STALL_TIMEOUT_S = 1800.0


@dataclass(frozen=True, slots=True)
class RecoveryPolicy:
    """How engines recover: restarts allowed in a row, and the seconds without progress after
    which a stuck engine stops the job."""

    max_engine_restarts: int = DEFAULT_MAX_ENGINE_RESTARTS
    engine_stall_timeout_s: float = DEFAULT_ENGINE_STALL_TIMEOUT_S


@dataclass(slots=True)
class PendingRequest:
    """A request as it was added, kept until it finishes so that it can be added again."""

    request_id: str
    prompt: str | list[int]
    params: SamplingParams | PoolingParams
    multi_modal: MultiModalInputs | None = None
    lora_request: LoRARequest | None = None
    crashes: int = 0


class EngineFailed(RuntimeError):
    """An engine kept dying: restarting it again would not help."""


class Recovery:
    """The restart bookkeeping of one engine (or one replica)."""

    def __init__(self, name: str, max_restarts: int) -> None:
        self.name = name
        self.max_restarts = max_restarts
        self.restarts = 0
        self._in_a_row = 0
        self._allowance = max_restarts
        self._groups: deque[list[PendingRequest]] = deque()
        self._running: list[PendingRequest] | None = None

    @property
    def isolating(self) -> bool:
        """Whether suspected requests are to run by themselves (nothing else may join)."""
        return self._running is not None or bool(self._groups)

    def crashed(self, in_flight: list[PendingRequest], cause: str) -> list[RequestRejected]:
        """Records that the engine died with ``in_flight`` inside it; returns the requests
        given up on. Raises EngineFailed when no further restart is allowed."""
        self.restarts += 1
        self._in_a_row += 1
        for request in in_flight:
            request.crashes += 1
        rejected: list[RequestRejected] = []
        if self._running is None:
            if in_flight:
                self._groups.appendleft(list(in_flight))
        elif len(in_flight) == 1:
            (request,) = in_flight
            rejected.append(
                RequestRejected(
                    f"the engine died every time it ran this request ({_times(request.crashes)}, "
                    f"the last time with no other request; last failure: {_last_line(cause)}); "
                    "the request is given up on so the other rows can finish",
                    request.request_id,
                )
            )
        elif in_flight:
            half = len(in_flight) // 2
            self._groups.appendleft(in_flight[half:])
            self._groups.appendleft(in_flight[:half])
            self._allowance += 1
        self._running = None
        if self._in_a_row > self._allowance:
            raise EngineFailed(
                f"{self.name} died {_times(self._in_a_row)} in a row without a request finishing "
                f"(max_engine_restarts={self.max_restarts}); the rows already written are kept. "
                f"Last failure:\n{cause}"
            )
        logger.warning(
            "%s died (%s); restarting it (restart %d) and running again the %d request(s) it "
            "was running",
            self.name,
            _last_line(cause),
            self.restarts,
            len(in_flight),
        )
        return rejected

    def finished(self) -> None:
        """A request finished: the engine works again."""
        self._in_a_row = 0
        self._allowance = self.max_restarts

    def next_group(self, engine_is_empty: bool) -> list[PendingRequest] | None:
        """The suspected requests to add now (to an engine that runs nothing else), if any."""
        if self._running is not None or not self._groups or not engine_is_empty:
            return None
        self._running = self._groups.popleft()
        return self._running

    def group_done(self, unfinished: set[str]) -> None:
        """Call after each step: the running group is over when none of it is unfinished."""
        if self._running is not None and not any(r.request_id in unfinished for r in self._running):
            self._running = None

    def forget(self, request_id: str) -> None:
        """An aborted request leaves the groups."""
        for group in [*self._groups, *([self._running] if self._running else [])]:
            group[:] = [r for r in group if r.request_id != request_id]
        self._groups = deque(group for group in self._groups if group)


def _times(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, f"{count} times")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


def describe_failure(error: BaseException) -> str:
    """An exception with its traceback, as text."""
    import traceback

    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def request_payload(request: PendingRequest) -> tuple[Any, ...]:
    return request.request_id, request.prompt, request.params, request.multi_modal
