"""Paged KV cache access in Triton: writing a step's K/V into its slots, reading a tile of keys
back; and the score soft-capping both attention kernels share."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_cache_kernel(
    key_ptr,
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    slot_mapping_ptr,
    stride_key_token,
    stride_key_head,
    stride_value_token,
    stride_value_head,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    num_kv_heads,
    head_dim,
    PAGE_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < num_kv_heads) & (dims < head_dim)
    cache_offsets = (
        (slot // PAGE_SIZE) * stride_cache_block
        + (slot % PAGE_SIZE) * stride_cache_slot
        + heads * stride_cache_head
        + dims
    )
    key = tl.load(key_ptr + token * stride_key_token + heads * stride_key_head + dims, mask=mask)
    tl.store(key_cache_ptr + cache_offsets, key.to(key_cache_ptr.dtype.element_ty), mask=mask)
    value = tl.load(
        value_ptr + token * stride_value_token + heads * stride_value_head + dims, mask=mask
    )
    tl.store(value_cache_ptr + cache_offsets, value.to(value_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store ``key``/``value`` ``[num_tokens, num_kv_heads, head_dim]`` at their cache slots.

    Tokens whose slot is negative are padding and are not written. An fp8 cache gets the values
    rounded to nearest, saturating at the format's largest finite number.
    """
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    key_cache, value_cache = kv_cache[0], kv_cache[1]
    _write_kv_cache_kernel[(num_tokens,)](
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        num_kv_heads,
        head_dim,
        PAGE_SIZE=key_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(num_kv_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
    )


@triton.jit
def load_paged_tile(
    cache_ptr,
    block_table_row_ptr,
    keys,
    key_valid,
    kv_head,
    dims,
    dim_valid,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    PAGE_SIZE: tl.constexpr,
):
    """Rows ``keys`` of one sequence's cache for one KV head, as ``[len(keys), len(dims)]``."""
    blocks = tl.load(block_table_row_ptr + keys // PAGE_SIZE, mask=key_valid, other=0)
    offsets = (
        blocks.to(tl.int64)[:, None] * stride_cache_block
        + (keys % PAGE_SIZE)[:, None] * stride_cache_slot
        + kv_head * stride_cache_head
        + dims[None, :]
    )
    return tl.load(cache_ptr + offsets, mask=key_valid[:, None] & dim_valid[None, :], other=0.0)


LOG2_E = 1.4426950408889634


def score_scale(scale: float, softcap: float | None) -> float:
    """What the kernels multiply ``q.k`` by: the softmax runs in base 2, so ``log2(e)`` is folded
    in here, or applied after capping when scores are soft-capped."""
    return scale if softcap is not None else scale * LOG2_E


@triton.jit
def cap_scores(scores, softcap):
    """``softcap * tanh(scores / softcap)``, in the base-2 units of the softmax."""
    # tanh(x) = 2 sigmoid(2x) - 1: one formula the interpreter and every GPU run the same way
    capped = softcap * (2.0 * tl.sigmoid(2.0 * scores / softcap) - 1.0)
    return capped * 1.4426950408889634
