"""Whether a model's weights fit the GPU before they are loaded: a clear error with the numbers
and what to change, instead of an out-of-memory error halfway through loading."""

from __future__ import annotations

import math

import torch

from llmbatch.engine.config import EngineConfig
from llmbatch.models.loader import model_on_meta, read_config


def weight_bytes(config: EngineConfig) -> int:
    """The bytes of the model's weights as they will sit on the device (all ranks together; a
    quantized checkpoint's in their quantized form), counted on the model built on the meta
    device, which allocates nothing."""
    hf_config = read_config(config.model, config.trust_remote_code)
    model = model_on_meta(
        config.model,
        hf_config,
        config.dtype,
        config.attention_backend,
        config.model_impl,
        config.quantization,
        config.trust_remote_code,
    )
    return sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())


def check_model_fits(config: EngineConfig) -> None:
    """Raises ValueError when this GPU cannot hold its share of the weights within
    gpu_memory_utilization (nothing to check on a CPU)."""
    if not config.on_cuda:
        return
    device = torch.device(config.device)
    free, total = torch.cuda.mem_get_info(device)
    message = fit_problem(
        weight_bytes(config),
        config.tensor_parallel_size,
        total,
        total - free,
        config.gpu_memory_utilization,
        str(config.dtype).removeprefix("torch."),
    )
    if message is not None:
        raise ValueError(message)


def fit_problem(
    weights: int, tensor_parallel_size: int, total: int, in_use: int, utilization: float, dtype: str
) -> str | None:
    """Why weights of ``weights`` bytes split over ``tensor_parallel_size`` GPUs of ``total``
    bytes (``in_use`` already taken) do not fit, with remedies; None when they fit."""
    share = weights / tensor_parallel_size
    budget = total * utilization - in_use
    if share <= budget:
        return None
    needed_parallel = tensor_parallel_size * math.ceil(share / max(budget, 1))
    remedies = [
        f"shard the model over more GPUs with tensor_parallel_size={max(needed_parallel, 2)}",
    ]
    if utilization < 0.95:
        remedies.append(f"raise gpu_memory_utilization (now {utilization})")
    if in_use > 0.05 * total:
        remedies.append(f"free the {_gib(in_use)} other processes use on the GPU")
    if dtype == "float32":
        remedies.append("load in dtype='bfloat16' (half the bytes)")
    remedies.append("or use a smaller model")
    return (
        f"the model's weights do not fit the GPU: they need {_gib(weights)} in {dtype}"
        f"{f', {_gib(share)} per GPU over {tensor_parallel_size}' if tensor_parallel_size > 1 else ''}"
        f", and gpu_memory_utilization={utilization} of the GPU's {_gib(total)} leaves "
        f"{_gib(max(budget, 0))} ({_gib(in_use)} already in use), before any room for the KV "
        f"cache. To fit: {'; '.join(remedies)}"
    )


def _gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"
