"""One engine replica in a worker process: the process's main loop, and the parent's handle on
it. Each replica has its own channels, so one that dies (killed, out of memory, a CUDA error)
cannot leave a shared channel half-written: the parent sees its pipe close and starts another.
"""

from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import queue
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from llmbatch.engine.config import EngineConfig
from llmbatch.engine.multimodal import MultiModalInputs
from llmbatch.engine.outputs import RequestRejected
from llmbatch.runtime import fault_injection

CLOSE_TIMEOUT_S = 30.0
# A replica with requests says it is alive at least this often, so the parent tells a slow
# engine from a stuck one.
HEARTBEAT_S = 1.0
# how often a busy replica sends its engine's stats (running, waiting, KV use, tokens)
STATS_INTERVAL_S = 0.5


@dataclass(slots=True)
class ReplicaInfo:
    """What a replica tells the parent once its engine has loaded."""

    config: EngineConfig
    tokenizer: Any
    startup_s: float


def replica_main(
    config: EngineConfig,
    device: str,
    num_threads: int | None,
    inbox: mp.Queue,
    outbox: Connection,
    stacks_path: str,
) -> None:
    """A replica process: starts its engine, then adds, aborts and steps as the parent says."""
    if device != "cpu":
        # Set before CUDA starts in this process: the replica then sees only its own GPUs.
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    with open(stacks_path, "w") as stacks:
        faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
        try:
            import torch

            from llmbatch.runtime.local import start_one_engine

            if num_threads is not None:
                torch.set_num_threads(num_threads)
            started = time.perf_counter()
            engine = start_one_engine(config.on_device("cpu" if device == "cpu" else "cuda"))
            startup_s = time.perf_counter() - started
            outbox.send(("ready", ReplicaInfo(engine.config, engine.tokenizer, startup_s)))
            _serve(engine, inbox, outbox)
        except BaseException:
            try:
                outbox.send(("failed", traceback.format_exc()))
            except OSError:
                pass  # the parent is gone


def _serve(engine: Any, inbox: mp.Queue, outbox: Connection) -> None:
    seeds: dict[str, int | None] = {}
    last_sent = stats_sent = time.monotonic()
    while True:
        rejected: list[RequestRejected] = []
        block = not engine.has_unfinished()
        while True:
            try:
                kind, payload = inbox.get(block=block)
            except queue.Empty:
                break
            block = False
            if kind == "close":
                engine.close()
                return
            if kind == "abort":
                for request_id in payload:
                    engine.abort_request(request_id)
                    seeds.pop(request_id, None)
                continue
            for request_id, prompt, params, images, lora in payload:
                multi_modal = MultiModalInputs.from_record(images)
                try:
                    engine.add_request(
                        request_id, prompt, params, multi_modal=multi_modal, lora_request=lora
                    )
                    seeds[request_id] = getattr(params, "seed", None)
                except RequestRejected as exc:
                    rejected.append(exc)
        results: list[Any] = list(rejected)
        if engine.has_unfinished():
            fault_injection.before_step(seeds.values(), in_replica_process=True)
            results.extend(engine.step())
        for result in results:
            seeds.pop(result.request_id, None)
        now = time.monotonic()
        # also when going idle, so the last word is that nothing runs; sent before the
        # outputs, so the parent has it when it has the last of them
        if now - stats_sent >= STATS_INTERVAL_S or not engine.has_unfinished():
            outbox.send(("stats", engine.stats))
            stats_sent = now
        if results or now - last_sent >= HEARTBEAT_S:
            outbox.send(("outputs", results))
            last_sent = now


class ReplicaProcess:
    """The parent's handle on one replica process."""

    def __init__(
        self, config: EngineConfig, device: str, num_threads: int | None, name: str
    ) -> None:
        context = mp.get_context("spawn")
        self.device = device
        self.inbox: mp.Queue = context.Queue()
        reader, writer = context.Pipe(duplex=False)
        descriptor, self._stacks_path = tempfile.mkstemp(prefix="llmbatch-replica-stacks-")
        os.close(descriptor)
        self.process = context.Process(
            target=replica_main,
            args=(config, device, num_threads, self.inbox, writer, self._stacks_path),
            name=name,
            daemon=True,
        )
        self.process.start()
        writer.close()  # only the replica writes: its death closes the pipe
        self.outbox = reader
        self.last_heard = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def send(self, kind: str, payload: Any) -> None:
        self.inbox.put((kind, payload))

    def receive(self) -> tuple[str, Any] | None:
        """The next message; None when the replica is gone (its pipe closed)."""
        try:
            message = self.outbox.recv()
        except (EOFError, OSError):
            return None
        self.last_heard = time.monotonic()
        return message

    def wait_ready(self, timeout_s: float) -> ReplicaInfo:
        """Blocks until the replica's engine has loaded; RuntimeError saying why it did not."""
        if not self.outbox.poll(timeout_s):
            raise RuntimeError(f"its engine did not start in {timeout_s:.0f} s")
        message = self.receive()
        if message is None:
            raise RuntimeError(f"it exited with code {self.exit_code()} while starting")
        kind, payload = message
        if kind != "ready":
            raise RuntimeError(f"its engine did not start:\n{payload}")
        return payload

    def exit_code(self) -> int | None:
        self.process.join(timeout=1.0)
        return self.process.exitcode

    def stacks(self) -> str:
        """The replica's threads' stacks, dumped by the replica itself on SIGUSR1."""
        if not self.process.is_alive():
            return "(the replica process has exited)"
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if os.path.getsize(self._stacks_path):
                time.sleep(0.2)  # let the dump finish
                with open(self._stacks_path) as dump:
                    return dump.read()
            time.sleep(0.05)
        return "(the replica did not dump its stacks)"

    def stop(self, kill: bool = False) -> None:
        """Stops the process (asking it first unless ``kill``) and releases its channels."""
        if self.process.is_alive() and not kill:
            self.inbox.put(("close", None))
            self.process.join(timeout=CLOSE_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.inbox.close()
        self.inbox.cancel_join_thread()
        self.outbox.close()
        if os.path.exists(self._stacks_path):
            os.unlink(self._stacks_path)
