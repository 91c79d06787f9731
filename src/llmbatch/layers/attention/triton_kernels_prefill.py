"""Varlen flash attention over the paged cache, for steps with prefills (and decodes mixed in).

Every key, including this step's, is read from the paged cache, so prefix-cache hits and earlier
chunks need no special path. One program owns one KV head and a tile of ``BLOCK_Q`` consecutive
query tokens of one sequence, with all ``QUERIES_PER_KV`` query heads of that KV head stacked into
the tile's rows: each K/V tile is loaded once for the whole GQA group, and a decode row mixed into
the batch still fills ``QUERIES_PER_KV`` rows of the tensor-core product.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmbatch.layers.attention.base import AttentionMetadata
from llmbatch.layers.attention.triton_kernels_cache import cap_scores, load_paged_tile, score_scale

# Integers that change from step to step: specializing on them (== 1, divisible by 16) would
# compile new variants in the middle of a job.
PER_STEP_ARGS = ["num_seqs", "stride_block_table"]


@triton.jit
def _find_sequence(query_start_loc_ptr, num_seqs, tile, BLOCK_Q: tl.constexpr):
    # Sequence i owns tiles [query_start_loc[i] // BLOCK_Q + i, ...): disjoint ranges, increasing
    # in i, so a binary search finds the owner of ``tile`` without a host-side tile table.
    # Loop-carried bounds must start as int32 tensors, not Python constants.
    low = tile * 0
    high = num_seqs + tile * 0
    while low < high:
        middle = (low + high) // 2
        first_tile = tl.load(query_start_loc_ptr + middle) // BLOCK_Q + middle
        if first_tile <= tile:
            low = middle + 1
        else:
            high = middle
    return low - 1


@triton.jit
def _attend_key_tile(
    acc, row_max, row_sum, q, positions, tile_start, kv_end, sliding_window, qk_scale, softcap,
    key_cache_ptr, value_cache_ptr, block_table_row, kv_head, dims, dim_valid,
    stride_cache_block, stride_cache_slot, stride_cache_head,
    PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
    USE_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One online-softmax step of the query rows over keys ``tile_start + [0, BLOCK_N)``."""
    keys = tile_start + tl.arange(0, BLOCK_N)
    key_valid = keys < kv_end
    k = load_paged_tile(
        key_cache_ptr, block_table_row, keys, key_valid, kv_head, dims, dim_valid,
        stride_cache_block, stride_cache_slot, stride_cache_head, PAGE_SIZE,
    ).to(q.dtype)  # fmt: skip
    v = load_paged_tile(
        value_cache_ptr, block_table_row, keys, key_valid, kv_head, dims, dim_valid,
        stride_cache_block, stride_cache_slot, stride_cache_head, PAGE_SIZE,
    ).to(q.dtype)  # fmt: skip
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if SOFTCAP:
        scores = cap_scores(scores, softcap)
    if MASKED:
        allowed = key_valid[None, :] & (keys[None, :] <= positions[:, None])
        if USE_WINDOW:
            allowed = allowed & (keys[None, :] > positions[:, None] - sliding_window)
        scores = tl.where(allowed, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, 1))
    # A row may see no allowed key in a tile (padding rows, rows whose window starts later).
    safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
    probs = tl.exp2(scores - safe_max[:, None])
    rescale = tl.exp2(row_max - safe_max)
    row_sum = row_sum * rescale + tl.sum(probs, 1)
    acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, new_max, row_sum


@triton.jit(do_not_specialize=PER_STEP_ARGS)
def _prefill_attention_kernel(
    out_ptr,
    q_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    qk_scale,
    sliding_window,
    softcap,
    num_seqs,
    stride_q_token,
    stride_q_head,
    stride_out_token,
    stride_out_head,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    stride_block_table,
    head_dim,
    QUERIES_PER_KV: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    FP16_DOTS: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_sequence(query_start_loc_ptr, num_seqs, tile, BLOCK_Q)
    query_start = tl.load(query_start_loc_ptr + seq)
    query_len = tl.load(query_start_loc_ptr + seq + 1) - query_start
    first_query = (tile - (query_start // BLOCK_Q + seq)) * BLOCK_Q
    if first_query >= query_len:
        return
    context_len = tl.load(seq_lens_ptr + seq) - query_len

    rows = tl.arange(0, BLOCK_M)
    query_idx = first_query + rows // QUERIES_PER_KV
    head = kv_head * QUERIES_PER_KV + rows % QUERIES_PER_KV
    row_valid = (rows < BLOCK_Q * QUERIES_PER_KV) & (query_idx < query_len)
    positions = context_len + query_idx
    dims = tl.arange(0, BLOCK_D)
    dim_valid = dims < head_dim
    token = query_start + query_idx
    io_mask = row_valid[:, None] & dim_valid[None, :]
    q = tl.load(
        q_ptr + token[:, None] * stride_q_token + head[:, None] * stride_q_head + dims[None, :],
        mask=io_mask,
        other=0.0,
    )
    if FP16_DOTS:
        # as in the decode kernel: fp8 keys and values convert to fp16 natively
        q = tl.minimum(tl.maximum(q.to(tl.float32), -65504.0), 65504.0).to(tl.float16)

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    kv_end = context_len + tl.minimum(first_query + BLOCK_Q, query_len)
    kv_start = 0
    if USE_WINDOW:
        kv_start = tl.maximum(context_len + first_query - sliding_window + 1, 0)
    block_table_row = block_tables_ptr + seq * stride_block_table
    # Key tiles wholly at or before the tile's first query position need no causal mask.
    unmasked_end = kv_start
    if not USE_WINDOW:
        unmasked_end = (context_len + first_query + 1) // BLOCK_N * BLOCK_N
    for tile_start in range(kv_start, unmasked_end, BLOCK_N):
        acc, row_max, row_sum = _attend_key_tile(
            acc, row_max, row_sum, q, positions, tile_start, kv_end, sliding_window, qk_scale,
            softcap, key_cache_ptr, value_cache_ptr, block_table_row, kv_head, dims, dim_valid,
            stride_cache_block, stride_cache_slot, stride_cache_head,
            PAGE_SIZE, BLOCK_N, False, USE_WINDOW, SOFTCAP, DOT_PRECISION,
        )  # fmt: skip
    for tile_start in range(unmasked_end, kv_end, BLOCK_N):
        acc, row_max, row_sum = _attend_key_tile(
            acc, row_max, row_sum, q, positions, tile_start, kv_end, sliding_window, qk_scale,
            softcap, key_cache_ptr, value_cache_ptr, block_table_row, kv_head, dims, dim_valid,
            stride_cache_block, stride_cache_slot, stride_cache_head,
            PAGE_SIZE, BLOCK_N, True, USE_WINDOW, SOFTCAP, DOT_PRECISION,
        )  # fmt: skip

    out = acc / tl.where(row_sum == 0.0, 1.0, row_sum)[:, None]
    tl.store(
        out_ptr
        + token[:, None] * stride_out_token
        + head[:, None] * stride_out_head
        + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=io_mask,
    )


def _tile_shape(
    queries_per_kv: int, device: torch.device, head_dim: int = 128
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for this GQA group size on this device."""
    group_rows = max(16, triton.next_power_of_2(queries_per_kv))
    if device.type != "cuda":
        # The interpreter: small tiles keep it quick and still cross tile boundaries in tests.
        return group_rows, 16, 1, 1
    if head_dim > 128:
        # Gemma's 256-wide heads: half the rows and keys keep the tiles in registers
        return max(32, group_rows), 32, 4, 2
    return max(64, group_rows), 64, 4, 2


def prefill_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention of every query row over its sequence's cached keys (see base.py)."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[3]
    queries_per_kv = num_heads // num_kv_heads
    out = torch.zeros_like(q)
    if num_tokens == 0 or meta.num_seqs == 0:
        return out
    block_m, block_n, num_warps, num_stages = _tile_shape(queries_per_kv, q.device, head_dim)
    block_q = block_m // queries_per_kv
    key_cache, value_cache = kv_cache[0], kv_cache[1]
    grid = (num_tokens // block_q + meta.num_seqs, num_kv_heads)
    _prefill_attention_kernel[grid](
        out,
        q,
        key_cache,
        value_cache,
        meta.block_tables,
        meta.query_start_loc,
        meta.seq_lens,
        score_scale(scale, softcap),
        sliding_window or 0,
        softcap or 0.0,
        meta.num_seqs,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        meta.block_tables.stride(0),
        head_dim,
        QUERIES_PER_KV=queries_per_kv,
        PAGE_SIZE=key_cache.shape[1],
        BLOCK_M=block_m,
        BLOCK_Q=block_q,
        BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        USE_WINDOW=sliding_window is not None,
        SOFTCAP=softcap is not None,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        FP16_DOTS=q.dtype == torch.bfloat16 and kv_cache.dtype.itemsize == 1,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
