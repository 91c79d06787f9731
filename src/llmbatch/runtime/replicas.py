"""Data parallelism on one host: engine replicas in worker processes behind the `EngineClient`
interface, so the engine stage feeds them as it feeds one engine.

The parent tokenizes, hands each request to the replica with the fewest in flight and reorders
the outputs (the engine stage does that). Replicas are spawned processes, one per GPU (or
tensor-parallel group), or on a CPU-only host one per share of the cores. A replica that dies
is started again and its requests run again (see ``recovery``); one that holds requests and
says nothing for ``engine_stall_timeout_s`` stops the job with every process's stacks.
"""

from __future__ import annotations

import time
from collections import deque
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from llmbatch.engine.config import EngineConfig
from llmbatch.engine.lora_request import LoRARequest
from llmbatch.engine.multimodal import MultiModalInputs
from llmbatch.engine.outputs import RequestOutput, RequestRejected
from llmbatch.engine.pooling_params import PoolingParams
from llmbatch.engine.sampling_params import SamplingParams
from llmbatch.runtime.recovery import EngineFailed, PendingRequest, Recovery, RecoveryPolicy
from llmbatch.runtime.replica_plan import ReplicaPlan
from llmbatch.runtime.replica_process import ReplicaInfo, ReplicaProcess
from llmbatch.runtime.watchdog import EngineStalled, stall_message, thread_stacks

if TYPE_CHECKING:
    from llmbatch.engine.llm_engine import EngineStats

STARTUP_TIMEOUT_S = 1800.0
POLL_INTERVAL_S = 1.0


class ReplicaFailed(EngineFailed):
    """An engine replica could not start, or kept dying."""


class ReplicatedEngine:
    """Engine replicas in worker processes, used like one LLMEngine by the engine stage.

    `step()` returns what any replica finished since the last call (RequestOutputs, and a
    RequestRejected for each request a replica refused or that kept killing it).
    """

    def __init__(
        self, config: EngineConfig, plan: ReplicaPlan, policy: RecoveryPolicy | None = None
    ) -> None:
        policy = policy or RecoveryPolicy()
        self.plan = plan
        self._config = config
        self._stall_timeout = policy.engine_stall_timeout_s
        self._replicas = [self._spawn(i) for i in range(plan.num_replicas)]
        self._recovery = [
            Recovery(self._name(i), policy.max_engine_restarts) for i in range(plan.num_replicas)
        ]
        self._pending: dict[str, PendingRequest] = {}
        self._owner: dict[str, int] = {}
        self._inside: list[set[str]] = [set() for _ in self._replicas]
        self._unsent: list[list[PendingRequest]] = [[] for _ in self._replicas]
        self._waiting: deque[str] = deque()
        self._given_up: list[RequestRejected] = []
        self._stats: list[EngineStats | None] = [None] * plan.num_replicas
        self._closed = False
        try:
            infos = [self._started(i) for i in range(plan.num_replicas)]
        except BaseException:
            self.close()
            raise
        self.config: EngineConfig = infos[0].config
        self.tokenizer = infos[0].tokenizer
        self.startup_s = max(info.startup_s for info in infos)

    @property
    def num_replicas(self) -> int:
        return self.plan.num_replicas

    @property
    def replica_stats(self) -> list[EngineStats | None]:
        """Each replica's engine stats as it last sent them (None before it sent any)."""
        return list(self._stats)

    @property
    def pids(self) -> list[int | None]:
        """The replica processes' ids, in replica order (new ones after a restart)."""
        return [replica.pid for replica in self._replicas]

    @property
    def restarts(self) -> int:
        return sum(recovery.restarts for recovery in self._recovery)

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | PoolingParams,
        multi_modal: MultiModalInputs | None = None,
        lora_request: LoRARequest | None = None,
    ) -> None:
        """Queues a request on the least-loaded replica (sent with the next `step`)."""
        if request_id in self._pending:
            raise RequestRejected(f"request_id {request_id!r} is already in the engine", request_id)
        self._pending[request_id] = PendingRequest(
            request_id, prompt, params, multi_modal, lora_request
        )
        self._waiting.append(request_id)
        self._place_waiting()

    def abort_request(self, request_id: str) -> bool:
        if self._pending.pop(request_id, None) is None:
            return False
        if request_id in self._waiting:
            self._waiting.remove(request_id)
        replica = self._owner.pop(request_id, None)
        if replica is not None:
            self._recovery[replica].forget(request_id)
            self._inside[replica].discard(request_id)
            unsent = self._unsent[replica]
            kept = [request for request in unsent if request.request_id != request_id]
            if len(kept) < len(unsent):
                self._unsent[replica] = kept
            elif not self._closed:
                self._replicas[replica].send("abort", [request_id])
        return True

    def has_unfinished(self) -> bool:
        return bool(self._pending) or bool(self._given_up)

    def num_unfinished(self) -> int:
        return len(self._pending)

    def step(self) -> list[RequestOutput | RequestRejected]:
        """Sends queued requests, then waits for at least one result (if any request is out)."""
        results: list[Any] = self._given_up
        self._given_up = []
        self._send_unsent()
        while self._pending and not results:
            ready = wait([replica.outbox for replica in self._replicas], POLL_INTERVAL_S)
            for index, replica in enumerate(self._replicas):
                if replica.outbox in ready:
                    results.extend(self._receive(index))
            self._check_stalls()
            self._send_unsent()
        return results

    def close(self, kill: bool = False) -> None:
        """Stops the replicas (their engines release their memory) and waits for them; with
        ``kill``, without asking them (a stuck replica would never read the request)."""
        if self._closed:
            return
        self._closed = True
        for replica in self._replicas:
            replica.stop(kill=kill)
        self._pending.clear()

    def __enter__(self) -> ReplicatedEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _name(self, index: int) -> str:
        return f"engine replica {index} (device {self.plan.devices[index]})"

    def _spawn(self, index: int) -> ReplicaProcess:
        device = self.plan.devices[index]
        return ReplicaProcess(
            self._config, device, self.plan.num_threads, f"llmbatch-replica-{index}"
        )

    def _started(self, index: int) -> ReplicaInfo:
        try:
            return self._replicas[index].wait_ready(STARTUP_TIMEOUT_S)
        except RuntimeError as error:
            raise ReplicaFailed(f"{self._name(index)} failed: {error}") from None

    def _receive(self, index: int) -> list[Any]:
        message = self._replicas[index].receive()
        if message is None:
            code = self._replicas[index].exit_code()
            return self._restart(index, f"the process exited with code {code}")
        kind, payload = message
        if kind == "failed":
            return self._restart(index, f"its engine raised:\n{payload}")
        if kind == "stats":
            self._stats[index] = payload
            return []
        taken = []
        for result in payload:
            if self._owner.get(result.request_id) != index:
                continue
            del self._owner[result.request_id]
            self._pending.pop(result.request_id, None)
            self._inside[index].discard(result.request_id)
            if isinstance(result, RequestOutput):
                self._recovery[index].finished()
            taken.append(result)
        self._recovery[index].group_done(self._inside[index])
        self._advance(index)
        return taken

    def _restart(self, index: int, cause: str) -> list[RequestRejected]:
        """Starts replica ``index`` again; its requests run again, or are given up on."""
        recovery = self._recovery[index]
        sent = [self._pending[i] for i in self._inside[index] if i in self._pending]
        unsent = {request.request_id for request in self._unsent[index]}
        crashed_with = [request for request in sent if request.request_id not in unsent]
        self._unsent[index] = []
        self._inside[index].clear()
        for request in sent:
            del self._owner[request.request_id]
        try:
            rejected = recovery.crashed(crashed_with, f"{self._name(index)}: {cause}")
            while True:
                self._replicas[index].stop(kill=True)
                self._replicas[index] = self._spawn(index)
                try:
                    self._started(index)
                    break
                except ReplicaFailed as error:
                    rejected += recovery.crashed([], str(error))
        except EngineFailed as error:
            self.close()
            raise ReplicaFailed(str(error)) from None
        for given_up in rejected:
            self._pending.pop(given_up.request_id, None)
        self._waiting.extendleft(sorted(unsent & set(self._pending), reverse=True))
        self._advance(index)
        return rejected

    def _advance(self, index: int) -> None:
        """Starts replica ``index``'s next group of suspected requests, then places the
        waiting requests on replicas that are not running such a group."""
        group = self._recovery[index].next_group(engine_is_empty=not self._inside[index])
        for request in group or ():
            self._assign(index, request)
        self._place_waiting()

    def _place_waiting(self) -> None:
        open_replicas = [i for i in range(self.num_replicas) if not self._recovery[i].isolating]
        while self._waiting and open_replicas:
            request = self._pending[self._waiting.popleft()]
            self._assign(min(open_replicas, key=lambda i: len(self._inside[i])), request)

    def _assign(self, index: int, request: PendingRequest) -> None:
        self._owner[request.request_id] = index
        self._inside[index].add(request.request_id)
        self._unsent[index].append(request)

    def _send_unsent(self) -> None:
        for index, requests in enumerate(self._unsent):
            if requests:
                payload = [
                    (r.request_id, r.prompt, r.params, _record(r.multi_modal), r.lora_request)
                    for r in requests
                ]
                if self._inside[index] <= {r.request_id for r in requests}:
                    # The replica was idle: its silence until now was no stall.
                    self._replicas[index].last_heard = time.monotonic()
                self._replicas[index].send("add", payload)
                self._unsent[index] = []

    def _check_stalls(self) -> None:
        now = time.monotonic()
        for index, replica in enumerate(self._replicas):
            if self._inside[index] and now - replica.last_heard > self._stall_timeout:
                stacks = (
                    f"{thread_stacks()}\n--- {self._name(index)}, process {replica.pid}:\n"
                    f"{replica.stacks()}"
                )
                self.close(kill=True)
                raise EngineStalled(stall_message(self._name(index), self._stall_timeout, stacks))


def _record(multi_modal: MultiModalInputs | None) -> Any:
    return None if multi_modal is None else multi_modal.to_record()
