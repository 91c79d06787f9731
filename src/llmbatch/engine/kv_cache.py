"""The paged KV cache's size (measured once the model is loaded) and its one allocation."""

from __future__ import annotations

import gc
import logging
import os

import torch

from llmbatch.engine.block_manager import cdiv
from llmbatch.engine.config import EngineConfig
from llmbatch.layers.attention.base import AttentionMetadata
from llmbatch.models import CausalLM

logger = logging.getLogger(__name__)

CPU_KV_CACHE_CAP_BYTES = 1 << 30
CPU_KV_CACHE_RAM_SHARE = 0.1


def bytes_per_block(model: CausalLM, block_size: int, dtype: torch.dtype) -> int:
    element_size = torch.empty((), dtype=dtype).element_size()
    return 2 * model.num_layers * block_size * model.num_kv_heads * model.head_dim * element_size


def default_cpu_kv_cache_bytes() -> int:
    """A share of physical RAM, capped, so the KV cache never crowds out the rest of the process."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return CPU_KV_CACHE_CAP_BYTES
    return min(CPU_KV_CACHE_CAP_BYTES, int(ram * CPU_KV_CACHE_RAM_SHARE))


def measure_num_blocks(model: CausalLM, config: EngineConfig) -> int:
    """The KV cache blocks this rank can hold: num_gpu_blocks_override, kv_cache_memory_bytes,
    or on a GPU what gpu_memory_utilization leaves after the model and a full step's
    activations. Tensor-parallel ranks agree on the smallest (a collective: every rank calls it)."""
    per_block = bytes_per_block(model, config.block_size, config.kv_cache_dtype)
    if config.num_gpu_blocks_override is not None:
        num_blocks = config.num_gpu_blocks_override
    else:
        budget = config.kv_cache_memory_bytes
        if budget is None:
            budget = (
                _profile_free_gpu_memory(model, config)
                if config.on_cuda
                else default_cpu_kv_cache_bytes()
            )
        num_blocks = budget // per_block
    # every tensor-parallel rank indexes the same block ids into its own shard of the cache
    num_blocks = model.tensor_parallel.min_over_ranks(num_blocks, config.torch_device)
    if num_blocks < 1:
        raise ValueError(
            f"no memory is left for the KV cache (one block of {config.block_size} tokens needs "
            f"{per_block} bytes). To fit: {_remedies(config, per_block, None)}"
        )
    capacity = num_blocks * config.block_size
    wanted = config.args.max_model_len
    if wanted is not None and capacity < wanted:
        per_token = per_block // config.block_size
        raise ValueError(
            f"the KV cache holds {capacity} tokens ({num_blocks} blocks, "
            f"{_gib(num_blocks * per_block)} at {per_token} bytes per token), fewer than one "
            f"request of max_model_len={wanted}, which needs {_gib(wanted * per_token)}. To fit: "
            f"{_remedies(config, per_block, capacity)}"
        )
    return num_blocks


def _gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"


def _remedies(config: EngineConfig, per_block: int, capacity: int | None) -> str:
    """What would make the KV cache large enough, for this config."""
    remedies = []
    if capacity is not None:
        remedies.append(f"lower max_model_len to at most {capacity}")
    if torch.empty((), dtype=config.kv_cache_dtype).element_size() > 1:
        remedies.append("use kv_cache_dtype='fp8' (half the bytes per token)")
    if config.num_gpu_blocks_override is not None:
        remedies.append(f"raise num_gpu_blocks_override (now {config.num_gpu_blocks_override})")
    elif config.kv_cache_memory_bytes is not None:
        remedies.append(f"raise kv_cache_memory_bytes (now {config.kv_cache_memory_bytes})")
    elif config.on_cuda:
        remedies.append(f"raise gpu_memory_utilization (now {config.gpu_memory_utilization})")
    else:
        remedies.append("set kv_cache_memory_bytes (on a CPU the default is at most 1 GiB)")
    if config.on_cuda:
        remedies.append(
            f"shard the model with tensor_parallel_size={2 * config.tensor_parallel_size} "
            "(each GPU then holds part of the weights and of the cache)"
        )
    return "; ".join(remedies)


def allocate_kv_cache(model: CausalLM, config: EngineConfig) -> list[torch.Tensor]:
    """Each layer's ``[2, num_kv_blocks, block_size, num_kv_heads, head_dim]`` cache, views of
    one zeroed allocation: attention may read (and mask out) padding slots, which must hold
    finite values."""
    assert config.num_kv_blocks is not None, "measure the KV cache first (with_kv_cache)"
    storage = torch.zeros(
        (model.num_layers, 2, config.num_kv_blocks, config.block_size)
        + (model.num_kv_heads, model.head_dim),
        dtype=config.kv_cache_dtype,
        device=config.torch_device,
    )
    per_block = bytes_per_block(model, config.block_size, config.kv_cache_dtype)
    logger.info(
        "KV cache: %d blocks of %d tokens in %s (%.2f GiB)",
        config.num_kv_blocks,
        config.block_size,
        str(config.kv_cache_dtype).removeprefix("torch."),
        config.num_kv_blocks * per_block / 2**30,
    )
    return list(storage.unbind(0))


def _profile_free_gpu_memory(model: CausalLM, config: EngineConfig) -> int:
    """Bytes left for the KV cache under gpu_memory_utilization, after a forward pass of a full
    token budget (plus the logits and sampler sort of a full batch) shows the peak activation
    memory."""
    device = config.torch_device
    seq_len = min(config.max_model_len, config.max_num_batched_tokens)
    num_seqs = max(1, min(config.max_num_seqs, config.max_num_batched_tokens // seq_len))
    num_tokens = num_seqs * seq_len
    scratch_cache = [
        torch.zeros(
            (2, 1, config.block_size, model.num_kv_heads, model.head_dim),
            dtype=config.kv_cache_dtype,
            device=device,
        )
        for _ in range(model.num_layers)
    ]
    meta = AttentionMetadata(
        num_seqs=num_seqs,
        num_tokens=num_tokens,
        query_start_loc=torch.arange(0, num_tokens + 1, seq_len, dtype=torch.int32, device=device),
        seq_lens=torch.full((num_seqs,), seq_len, dtype=torch.int32, device=device),
        block_tables=torch.zeros(
            (num_seqs, cdiv(seq_len, config.block_size)), dtype=torch.int32, device=device
        ),
        # -1: the scratch cache holds one block; nothing is written to it.
        slot_mapping=torch.full((num_tokens,), -1, dtype=torch.int64, device=device),
        max_query_len=seq_len,
        max_seq_len=seq_len,
        query_lens_cpu=[seq_len] * num_seqs,
        seq_lens_cpu=[seq_len] * num_seqs,
    )
    generator = torch.Generator(device=device).manual_seed(0)
    input_ids = torch.randint(
        0, model.vocab_size, (num_tokens,), device=device, generator=generator
    )
    positions = torch.arange(seq_len, device=device).repeat(num_seqs)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        hidden = model(input_ids, positions, scratch_cache, meta)
        if model.pooler is None:  # a pooling model computes no logits
            rows = min(config.max_num_seqs, num_tokens)
            model.compute_logits(hidden[:rows]).sort(dim=-1)
    torch.cuda.synchronize(device)
    activation_peak = torch.cuda.max_memory_allocated(device) - baseline
    del hidden, scratch_cache
    gc.collect()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    available = int(total * config.gpu_memory_utilization) - (total - free) - activation_peak
    logger.info(
        "GPU memory: %.2f GiB total, %.2f GiB in use, %.2f GiB activation peak, "
        "%.2f GiB for the KV cache",
        total / 2**30,
        (total - free) / 2**30,
        activation_peak / 2**30,
        max(available, 0) / 2**30,
    )
    return max(available, 0)
