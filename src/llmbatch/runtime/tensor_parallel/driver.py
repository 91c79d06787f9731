"""The driver of tensor parallelism: this process holds rank 0 and runs the engine; it starts the
workers of the other ranks and fronts its shard so that every forward and logits call runs on
all ranks at once."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import socket
from datetime import timedelta
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import torch
import torch.distributed as dist

from llmbatch.engine.config import EngineConfig
from llmbatch.engine.kv_cache import measure_num_blocks
from llmbatch.engine.llm_engine import LLMEngine, load_model_for
from llmbatch.layers.attention.base import AttentionMetadata
from llmbatch.layers.tensor_parallel import TensorParallel, sharded_over
from llmbatch.models import CausalLM
from llmbatch.runtime.replica_plan import host_cpu_count
from llmbatch.runtime.tensor_parallel.protocol import ForwardHeader, Op, send_forward_inputs
from llmbatch.runtime.tensor_parallel.worker import WorkerSpec, run_worker

logger = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = timedelta(minutes=5)
STOP_GRACE_SECONDS = 30.0


class TensorParallelEngine(LLMEngine):
    """An engine whose model is sharded over ``tensor_parallel_size`` ranks: this process runs
    the scheduler and rank 0, worker processes the other ranks. Steps run eagerly."""

    def __init__(self, config: EngineConfig) -> None:
        workers = TensorParallelWorkers(config)
        try:
            config = config.on_device(workers.devices[0])
            with sharded_over(workers.tp):
                loaded = load_model_for(config)
            workers.wait_for("loaded", "loading its shard of the model")
            workers.command(Op.ALLOCATE_KV_CACHE, None)
            num_blocks = workers.guarded(measure_num_blocks, loaded.model, config)
            driver = DriverModel(loaded.model, workers)
            super().__init__(
                config.with_kv_cache(num_blocks), dataclasses.replace(loaded, model=driver)
            )
        except BaseException:
            workers.close()
            raise
        self._workers = workers

    def close(self) -> None:
        super().close()
        self._workers.close()


def rank_devices(device: str, size: int) -> list[str]:
    """Rank r's device: the r-th GPU from the one ``device`` names, or the CPU for every rank."""
    if device == "cpu":
        return ["cpu"] * size
    first = torch.device(device).index or 0
    count = torch.cuda.device_count()
    if first + size > count:
        raise ValueError(
            f"tensor_parallel_size={size} from {device} needs GPUs {first}..{first + size - 1}, "
            f"but {count} are present; lower tensor_parallel_size"
        )
    return [f"cuda:{first + rank}" for rank in range(size)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TensorParallelWorkers:
    """Ranks 1..size-1 of a tensor-parallel group, each a spawned process; this process is rank 0."""

    def __init__(self, config: EngineConfig) -> None:
        if dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is already initialized in this process; a tensor-parallel "
                "engine starts its own process group (close the other engine first)"
            )
        size = config.tensor_parallel_size
        self.devices = rank_devices(config.device, size)
        on_cpu = self.devices[0] == "cpu"
        num_threads = max(1, host_cpu_count() // size) if on_cpu else None
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        context = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        for rank in range(1, size):
            spec = WorkerSpec(
                rank,
                size,
                init_method,
                COLLECTIVE_TIMEOUT,
                num_threads,
                config.on_device(self.devices[rank]),
            )
            ours, theirs = context.Pipe()
            process = context.Process(
                target=run_worker, args=(spec, theirs), name=f"llmbatch-tp{rank}", daemon=True
            )
            process.start()
            theirs.close()
            self._conns.append(ours)
            self._procs.append(process)
        self._driver_threads = torch.get_num_threads()
        try:
            self.wait_for("started", "starting")
            if num_threads is not None:
                torch.set_num_threads(num_threads)
            dist.init_process_group(
                "gloo" if on_cpu else "nccl",
                init_method=init_method,
                rank=0,
                world_size=size,
                timeout=COLLECTIVE_TIMEOUT,
                **({} if on_cpu else {"device_id": torch.device(self.devices[0])}),
            )
        except BaseException:
            self.close()
            raise
        self.tp = TensorParallel(0, size, dist.group.WORLD)
        if not on_cpu and not config.args.enforce_eager:
            logger.info("tensor_parallel_size=%d: steps run eagerly (no CUDA graphs)", size)

    def wait_for(self, reply: str, doing: str) -> None:
        """Waits for every worker's ``reply``; a worker that fails or dies first is an error."""
        for rank, (conn, process) in enumerate(zip(self._conns, self._procs), start=1):
            while not conn.poll(0.2):
                if not process.is_alive():
                    raise self._failure(rank, doing)
            kind, detail = conn.recv()
            if kind == "error":
                raise RuntimeError(f"tensor-parallel rank {rank} failed while {doing}:\n{detail}")

    def close(self) -> None:
        """Stops the workers (terminating any that do not stop in time) and the process group."""
        for conn in self._conns:
            try:
                conn.send((Op.STOP, None))
            except OSError:
                pass  # already gone
        for process in self._procs:
            process.join(STOP_GRACE_SECONDS)
            if process.is_alive():
                process.terminate()
                process.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(self._driver_threads)

    def command(self, op: Op, args: Any) -> None:
        """Sends every worker a command."""
        for rank, (conn, process) in enumerate(zip(self._conns, self._procs), start=1):
            if conn.poll() or not process.is_alive():
                raise self._failure(rank, "waiting for the next step")
            try:
                conn.send((op, args))
            except OSError:
                raise self._failure(rank, "receiving a step") from None

    def guarded(self, call: Any, *args: Any) -> Any:
        """Runs a collective call; a worker's failure during it is reported as that failure."""
        try:
            return call(*args)
        except RuntimeError as exc:
            for rank, (conn, process) in enumerate(zip(self._conns, self._procs), start=1):
                if conn.poll(1.0) or not process.is_alive():
                    raise self._failure(rank, "running a step") from exc
            raise

    def _failure(self, rank: int, doing: str) -> RuntimeError:
        conn, process = self._conns[rank - 1], self._procs[rank - 1]
        detail = ""
        try:
            if conn.poll():
                detail = ":\n" + str(conn.recv()[1])
        except (EOFError, OSError):
            pass
        process.join(1.0)
        state = f"exited with code {process.exitcode}" if process.exitcode is not None else "failed"
        return RuntimeError(f"tensor-parallel rank {rank} {state} while {doing}{detail}")

    def forward(
        self,
        model: CausalLM,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        self.command(Op.FORWARD, ForwardHeader.of(meta))

        def run() -> torch.Tensor:
            send_forward_inputs(self.tp, input_ids, positions, meta)
            return model(input_ids, positions, kv_caches, meta)

        return self.guarded(run)

    def compute_logits(self, model: CausalLM, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.contiguous()
        self.command(Op.LOGITS, tuple(hidden.shape))

        def run() -> torch.Tensor:
            dist.broadcast(hidden, src=0, group=self.tp.group)
            return model.compute_logits(hidden)

        return self.guarded(run)


class DriverModel:
    """The driver's shard, as the model runner sees it: each call runs on every rank."""

    def __init__(self, local: CausalLM, workers: TensorParallelWorkers) -> None:
        self.local = local
        self.workers = workers

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["local"], name)

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        return self.workers.forward(self.local, input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.workers.compute_logits(self.local, hidden)
