"""One engine in this process (or the tensor-parallel group it drives) that survives its own
failures: an error from a step (a CUDA error, running out of memory, a worker that died) closes
the engine, builds it again, and runs again the requests it was running (see ``recovery``); a
step that does not return within ``engine_stall_timeout_s`` stops the job (see ``watchdog``)."""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from llmbatch.engine.outputs import RequestOutput, RequestRejected
from llmbatch.runtime import fault_injection
from llmbatch.runtime.recovery import (
    PendingRequest,
    Recovery,
    RecoveryPolicy,
    describe_failure,
)
from llmbatch.runtime.watchdog import EngineStalled, StepWatchdog

if TYPE_CHECKING:
    from llmbatch.engine.lora_request import LoRARequest
    from llmbatch.engine.multimodal import MultiModalInputs
    from llmbatch.engine.pooling_params import PoolingParams
    from llmbatch.engine.sampling_params import SamplingParams
    from llmbatch.runtime.client import EngineClient


class RestartingEngine:
    """An `EngineClient` that rebuilds its engine with ``start()`` when the engine fails."""

    def __init__(self, start: Callable[[], EngineClient], policy: RecoveryPolicy) -> None:
        self._start = start
        self._engine = start()
        self.config = self._engine.config
        self.tokenizer = self._engine.tokenizer
        self._recovery = Recovery("the engine", policy.max_engine_restarts)
        self._watchdog = StepWatchdog(policy.engine_stall_timeout_s)
        self._pending: dict[str, PendingRequest] = {}
        self._inside: set[str] = set()  # added to the current engine, not finished
        self._waiting: deque[str] = deque()  # held back while suspected requests run alone
        self._given_up: list[RequestRejected] = []

    @property
    def engine(self) -> EngineClient:
        """The engine now running (a new one after each restart)."""
        return self._engine

    @property
    def restarts(self) -> int:
        return self._recovery.restarts

    @property
    def num_replicas(self) -> int:
        return getattr(self._engine, "num_replicas", 1)

    def __getattr__(self, name: str) -> Any:
        # Everything else (stats, num_kv_blocks, ...) is the running engine's.
        if name == "_engine" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._engine, name)

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | PoolingParams,
        multi_modal: MultiModalInputs | None = None,
        lora_request: LoRARequest | None = None,
    ) -> None:
        if request_id in self._pending:
            raise RequestRejected(f"request_id {request_id!r} is already in the engine", request_id)
        request = PendingRequest(request_id, prompt, params, multi_modal, lora_request)
        if self._recovery.isolating:
            self._pending[request_id] = request
            self._waiting.append(request_id)
            return
        try:
            self._add(request)
        except RequestRejected:
            raise
        except Exception as error:
            self._pending[request_id] = request
            self._inside.add(request_id)
            self._given_up.extend(self._recover(error))

    def _add(self, request: PendingRequest) -> None:
        self._engine.add_request(
            request.request_id,
            request.prompt,
            request.params,
            multi_modal=request.multi_modal,
            lora_request=request.lora_request,
        )
        self._pending[request.request_id] = request
        self._inside.add(request.request_id)

    def step(self) -> list[RequestOutput | RequestRejected]:
        results: list[RequestOutput | RequestRejected] = self._given_up
        self._given_up = []
        try:
            with self._watchdog.watching():
                seeds = [getattr(self._pending[i].params, "seed", None) for i in self._inside]
                fault_injection.before_step(seeds, in_replica_process=False)
                outputs = self._engine.step()
        except EngineStalled:
            raise
        except Exception as error:
            results.extend(self._recover(error))
            return results
        for output in outputs:
            if self._pending.pop(output.request_id, None) is None:
                continue
            self._inside.discard(output.request_id)
            if isinstance(output, RequestOutput):
                self._recovery.finished()
            results.append(output)
        self._recovery.group_done(self._inside)
        self._advance()
        return results

    def abort_request(self, request_id: str) -> bool:
        if self._pending.pop(request_id, None) is None:
            return False
        self._recovery.forget(request_id)
        if request_id in self._waiting:
            self._waiting.remove(request_id)
        if request_id in self._inside:
            self._inside.discard(request_id)
            self._engine.abort_request(request_id)
        return True

    def has_unfinished(self) -> bool:
        return bool(self._pending) or bool(self._given_up)

    def num_unfinished(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        self._watchdog.close()
        self._engine.close()

    def _recover(self, error: Exception) -> list[RequestRejected]:
        cause = describe_failure(error)
        # The traceback's frames hold the failed engine's tensors: let them go before rebuilding.
        error.__traceback__ = None
        lost = [self._pending[i] for i in self._inside]
        self._inside.clear()
        rejected = self._recovery.crashed(lost, cause)
        for given_up in rejected:
            self._pending.pop(given_up.request_id, None)
        while True:
            try:
                self._restart()
                break
            except Exception as start_error:
                failure = describe_failure(start_error)
                start_error.__traceback__ = None
                rejected += self._recovery.crashed([], failure)
        self._advance()
        return rejected

    def _restart(self) -> None:
        with suppress(Exception):
            self._engine.close()
        gc.collect()
        with suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self._engine = self._start()

    def _advance(self) -> None:
        """Starts the next group of suspected requests, or lets the held-back ones in."""
        group = self._recovery.next_group(engine_is_empty=not self._inside)
        if group is not None:
            for request in group:
                self._add_or_give_up(request)
            return
        if self._recovery.isolating:
            return
        while self._waiting:
            self._add_or_give_up(self._pending[self._waiting.popleft()])

    def _add_or_give_up(self, request: PendingRequest) -> None:
        try:
            self._add(request)
        except RequestRejected as rejected:
            rejected.request_id = request.request_id
            self._pending.pop(request.request_id, None)
            self._given_up.append(rejected)
