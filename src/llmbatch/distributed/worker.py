"""A tensor-parallel worker process: loads its shard, then runs what the driver runs, step by step."""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.distributed as dist

from llmbatch.distributed.group import TensorParallel, sharded_over
from llmbatch.distributed.protocol import Op, receive_forward_inputs
from llmbatch.engine.config import EngineConfig
from llmbatch.engine.model_runner import ModelRunner
from llmbatch.models import load_model


@dataclass(slots=True, frozen=True)
class WorkerSpec:
    rank: int
    size: int
    device: str
    init_method: str
    timeout: timedelta
    num_threads: int | None
    config: EngineConfig
    load_kwargs: dict[str, Any]


def run_worker(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a spawned worker; reports any failure to the driver before exiting."""
    try:
        conn.send(("started", None))
        _serve(spec, conn)
    except (EOFError, BrokenPipeError):
        pass  # the driver is gone: nothing is left to serve
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _serve(spec: WorkerSpec, conn: Connection) -> None:
    device = torch.device(spec.device)
    if spec.num_threads is not None:
        torch.set_num_threads(spec.num_threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=spec.init_method,
        rank=spec.rank,
        world_size=spec.size,
        timeout=spec.timeout,
        # NCCL communicators start eagerly on every rank or on none: the driver starts its own
        # at init, and a worker starting lazily (at its first collective) would never meet it.
        **({"device_id": device} if device.type == "cuda" else {}),
    )
    tp = TensorParallel(spec.rank, spec.size, dist.group.WORLD)
    with sharded_over(tp):
        loaded = load_model(spec.config.model, **{**spec.load_kwargs, "device": spec.device})
    model = loaded.model
    runner = ModelRunner(model, dataclasses.replace(spec.config, device=spec.device), loaded.dtype)
    conn.send(("loaded", None))
    with torch.inference_mode():
        while True:
            op, args = conn.recv()
            if op == Op.STOP:
                return
            if op == Op.ALLOCATE_KV_CACHE:
                runner.allocate_kv_cache(*args)
            elif op == Op.FORWARD:
                ids, positions, meta = receive_forward_inputs(tp, args, device)
                model(ids, positions, runner.kv_caches, meta)
            elif op == Op.LOGITS:
                hidden = torch.empty(args, dtype=loaded.dtype, device=device)
                dist.broadcast(hidden, src=0, group=tp.group)
                model.compute_logits(hidden)
