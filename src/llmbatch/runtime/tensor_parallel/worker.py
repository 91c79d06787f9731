"""A tensor-parallel worker process: loads its shard, then runs what the driver runs, step by step."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from llmbatch.engine.config import EngineConfig
from llmbatch.engine.kv_cache import allocate_kv_cache, measure_num_blocks
from llmbatch.engine.llm_engine import load_model_for
from llmbatch.layers.tensor_parallel import TensorParallel, sharded_over
from llmbatch.runtime.tensor_parallel.protocol import Op, receive_forward_inputs


@dataclass(slots=True, frozen=True)
class WorkerSpec:
    rank: int
    size: int
    init_method: str
    timeout: timedelta
    num_threads: int | None
    config: EngineConfig
    """The engine's config, on this rank's device."""


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
    config = spec.config
    device = config.torch_device
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
        loaded = load_model_for(config)
    model = loaded.model
    conn.send(("loaded", None))
    kv_caches: list[torch.Tensor] = []
    with torch.inference_mode():
        while True:
            op, args = conn.recv()
            if op == Op.STOP:
                return
            if op == Op.ALLOCATE_KV_CACHE:
                # the same measurement as the driver's: its minimum over ranks is a collective
                num_blocks = measure_num_blocks(model, config)
                kv_caches = allocate_kv_cache(model, config.with_kv_cache(num_blocks))
            elif op == Op.FORWARD:
                ids, positions, meta = receive_forward_inputs(tp, args, device)
                model(ids, positions, kv_caches, meta)
            elif op == Op.LOGITS:
                hidden = torch.empty(args, dtype=loaded.dtype, device=device)
                dist.broadcast(hidden, src=0, group=tp.group)
                model.compute_logits(hidden)
