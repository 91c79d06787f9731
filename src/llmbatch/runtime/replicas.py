"""Data parallelism on one host: engine replicas in worker processes behind the `EngineClient`
interface, so the engine stage feeds them as it feeds one engine.

The parent tokenizes, hands each request to the replica with the fewest in flight and reorders
the outputs (the engine stage does that). Replicas are spawned processes, one per GPU (or
tensor-parallel group), or on a CPU-only host one per share of the cores.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import time
import traceback
from dataclasses import dataclass
from typing import Any

from llmbatch.engine.config import EngineConfig
from llmbatch.engine.lora_request import LoRARequest
from llmbatch.engine.multimodal import MultiModalInputs
from llmbatch.engine.outputs import RequestOutput, RequestRejected
from llmbatch.engine.pooling_params import PoolingParams
from llmbatch.engine.sampling_params import SamplingParams
from llmbatch.runtime.replica_plan import ReplicaPlan

STARTUP_TIMEOUT_S = 1800.0
POLL_INTERVAL_S = 1.0
CLOSE_TIMEOUT_S = 30.0


@dataclass(slots=True)
class _ReplicaInfo:
    """What a replica tells the parent once its engine has loaded."""

    config: EngineConfig
    tokenizer: Any
    startup_s: float


class ReplicaFailed(RuntimeError):
    """An engine replica raised or exited; the rows it was running have no result."""


def _replica_main(
    index: int,
    config: EngineConfig,
    device: str,
    num_threads: int | None,
    inbox: mp.Queue,
    outbox: mp.Queue,
) -> None:
    """A replica process: starts its engine, then adds, aborts and steps as the parent says."""
    if device != "cpu":
        # Set before CUDA starts in this process: the replica then sees only its own GPUs.
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    try:
        import torch

        from llmbatch.runtime.local import start_one_engine

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        started = time.perf_counter()
        engine = start_one_engine(config.on_device("cpu" if device == "cpu" else "cuda"))
        startup_s = time.perf_counter() - started
        outbox.put(("ready", index, _ReplicaInfo(engine.config, engine.tokenizer, startup_s)))
        _serve(index, engine, inbox, outbox)
    except BaseException:
        outbox.put(("failed", index, traceback.format_exc()))


def _serve(index: int, engine: Any, inbox: mp.Queue, outbox: mp.Queue) -> None:
    while True:
        rejected: list[RequestRejected] = []
        block = not engine.has_unfinished()
        while True:
            try:
                message = inbox.get(block=block)
            except queue.Empty:
                break
            block = False
            kind, payload = message
            if kind == "close":
                engine.close()
                return
            if kind == "abort":
                for request_id in payload:
                    engine.abort_request(request_id)
            else:
                for request_id, prompt, params, images, lora in payload:
                    multi_modal = MultiModalInputs.from_record(images)
                    try:
                        engine.add_request(
                            request_id, prompt, params, multi_modal=multi_modal, lora_request=lora
                        )
                    except RequestRejected as exc:
                        rejected.append(exc)
        results: list[Any] = list(rejected)
        if engine.has_unfinished():
            results.extend(engine.step())
        if results:
            outbox.put(("outputs", index, results))


class ReplicatedEngine:
    """Engine replicas in worker processes, used like one LLMEngine by the engine stage.

    `step()` returns what any replica finished since the last call (RequestOutputs, and a
    RequestRejected for each request a replica refused); it raises ReplicaFailed when a replica
    fails or exits, naming how many requests it was running.
    """

    def __init__(self, config: EngineConfig, plan: ReplicaPlan) -> None:
        context = mp.get_context("spawn")
        self.plan = plan
        self._outbox: mp.Queue = context.Queue()
        self._inboxes: list[mp.Queue] = [context.Queue() for _ in plan.devices]
        self._processes = [
            context.Process(
                target=_replica_main,
                args=(i, config, device, plan.num_threads, self._inboxes[i], self._outbox),
                name=f"llmbatch-replica-{i}",
                daemon=True,
            )
            for i, device in enumerate(plan.devices)
        ]
        self._owner: dict[str, int] = {}
        self._unsent: list[list[tuple[str, Any, Any, dict[str, Any] | None, Any]]] = [
            [] for _ in plan.devices
        ]
        self._load = [0] * plan.num_replicas
        self._closed = False
        for process in self._processes:
            process.start()
        try:
            info = self._wait_until_ready()
        except BaseException:
            self.close()
            raise
        self.config: EngineConfig = info.config
        self.tokenizer = info.tokenizer
        self.startup_s = info.startup_s

    @property
    def num_replicas(self) -> int:
        return self.plan.num_replicas

    @property
    def pids(self) -> list[int | None]:
        """The replica processes' ids, in replica order."""
        return [process.pid for process in self._processes]

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | PoolingParams,
        multi_modal: MultiModalInputs | None = None,
        lora_request: LoRARequest | None = None,
    ) -> None:
        """Queues a request on the least-loaded replica (sent with the next `step`)."""
        if request_id in self._owner:
            raise RequestRejected(f"request_id {request_id!r} is already in the engine", request_id)
        replica = min(range(self.num_replicas), key=self._load.__getitem__)
        self._owner[request_id] = replica
        self._load[replica] += 1
        images = None if multi_modal is None else multi_modal.to_record()
        self._unsent[replica].append((request_id, prompt, params, images, lora_request))

    def abort_request(self, request_id: str) -> bool:
        replica = self._owner.pop(request_id, None)
        if replica is None:
            return False
        self._load[replica] -= 1
        unsent = self._unsent[replica]
        kept = [request for request in unsent if request[0] != request_id]
        if len(kept) < len(unsent):
            self._unsent[replica] = kept
        elif not self._closed:
            self._inboxes[replica].put(("abort", [request_id]))
        return True

    def has_unfinished(self) -> bool:
        return bool(self._owner)

    def num_unfinished(self) -> int:
        return len(self._owner)

    def step(self) -> list[RequestOutput | RequestRejected]:
        """Sends queued requests, then waits for at least one result (if any request is out)."""
        self._send_unsent()
        if not self._owner:
            return []
        results = []
        message = self._next_message(block=True)
        while message is not None:
            results.extend(self._take(message))
            message = self._next_message(block=False)
        return results

    def close(self) -> None:
        """Stops the replicas (their engines release their memory) and waits for them."""
        if self._closed:
            return
        self._closed = True
        for inbox, process in zip(self._inboxes, self._processes):
            if process.is_alive():
                inbox.put(("close", None))
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for process in self._processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for channel in [*self._inboxes, self._outbox]:
            channel.close()
            channel.cancel_join_thread()
        self._owner.clear()

    def __enter__(self) -> ReplicatedEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send_unsent(self) -> None:
        for replica, requests in enumerate(self._unsent):
            if requests:
                self._inboxes[replica].put(("add", requests))
                self._unsent[replica] = []

    def _take(self, message: tuple[str, int, Any]) -> list[RequestOutput | RequestRejected]:
        kind, replica, payload = message
        if kind == "failed":
            raise self._failure(replica, f"it raised:\n{payload}")
        taken = []
        for result in payload:
            if self._owner.pop(result.request_id, None) is not None:
                self._load[replica] -= 1
                taken.append(result)
        return taken

    def _next_message(self, block: bool) -> tuple[str, int, Any] | None:
        while True:
            try:
                return (
                    self._outbox.get(timeout=POLL_INTERVAL_S)
                    if block
                    else self._outbox.get_nowait()
                )
            except queue.Empty:
                if not block:
                    return None
            for replica, process in enumerate(self._processes):
                if not process.is_alive():
                    raise self._failure(replica, f"it exited with code {process.exitcode}")

    def _failure(self, replica: int, what: str) -> ReplicaFailed:
        lost = self._load[replica]
        return ReplicaFailed(
            f"engine replica {replica} (device {self.plan.devices[replica]}) failed with {lost} "
            f"request(s) in flight, which have no result: {what}"
        )

    def _wait_until_ready(self) -> _ReplicaInfo:
        infos: dict[int, _ReplicaInfo] = {}
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while len(infos) < self.num_replicas:
            if time.monotonic() > deadline:
                raise ReplicaFailed(f"engine replicas did not start in {STARTUP_TIMEOUT_S:.0f} s")
            kind, replica, payload = self._next_message(block=True)
            if kind == "failed":
                raise self._failure(replica, f"its engine did not start:\n{payload}")
            infos[replica] = payload
        first = infos[0]
        return dataclasses.replace(first, startup_s=max(i.startup_s for i in infos.values()))
