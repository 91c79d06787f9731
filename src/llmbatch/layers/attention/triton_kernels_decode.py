"""Paged attention for decode-only steps (one query token per sequence), with split-K.

One program owns one sequence, one KV head and one split of its keys; the cache may be stored in
the model's dtype or in fp8 (converted to the query's dtype as it is loaded). The query heads sharing the
KV head are the rows of a ``[BLOCK_H, head_dim]`` tile (padded to 16 rows) so that ``q @ k.T`` and
``p @ v`` run on tensor cores. When the batch is too small to fill the GPU, each sequence's keys
are cut into splits that run in parallel (flash-decoding) and a second kernel merges their
partial softmax results. Launch sizes depend only on host-side shapes, so the step can be
captured in a CUDA graph.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from llmbatch.layers.attention.base import AttentionMetadata
from llmbatch.layers.attention.triton_kernels_cache import cap_scores, load_paged_tile, score_scale

MIN_KEYS_PER_SPLIT = 256
MAX_SPLITS = 32
# Programs per multiprocessor that keep enough KV loads in flight to saturate HBM (seen on H200).
PROGRAMS_PER_SM = 4
# Integers that change from step to step: specializing on them (== 1, divisible by 16) would
# compile new variants in the middle of a job.
PER_STEP_ARGS = ["num_splits", "stride_block_table"]


@triton.jit(do_not_specialize=PER_STEP_ARGS)
def _decode_attention_kernel(
    out_ptr,
    partial_out_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    q_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    qk_scale,
    sliding_window,
    softcap,
    num_heads,
    num_splits,
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
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    WRITE_PARTIALS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    FP16_DOTS: tl.constexpr,
):
    # KV heads vary fastest across programs so that a sequence's heads run side by side and
    # read each cache block's rows together.
    kv_head = tl.program_id(0)
    seq = tl.program_id(1)
    split = tl.program_id(2)
    token = tl.load(query_start_loc_ptr + seq)
    if tl.load(query_start_loc_ptr + seq + 1) == token:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    kv_start = 0
    if USE_WINDOW:
        kv_start = tl.maximum(seq_len - sliding_window, 0)
    split_len = tl.cdiv(tl.cdiv(seq_len - kv_start, num_splits), BLOCK_N) * BLOCK_N
    split_start = kv_start + split * split_len
    split_end = tl.minimum(split_start + split_len, seq_len)

    rows = tl.arange(0, BLOCK_H)
    head = kv_head * QUERIES_PER_KV + rows
    row_valid = rows < QUERIES_PER_KV
    dims = tl.arange(0, BLOCK_D)
    dim_valid = dims < head_dim
    io_mask = row_valid[:, None] & dim_valid[None, :]
    q = tl.load(
        q_ptr + token * stride_q_token + head[:, None] * stride_q_head + dims[None, :],
        mask=io_mask,
        other=0.0,
    )
    if FP16_DOTS:
        # fp8 converts to fp16 natively but to bf16 only through more instructions, which
        # would bound the kernel; a bf16 query is clamped into fp16's range
        q = tl.minimum(tl.maximum(q.to(tl.float32), -65504.0), 65504.0).to(tl.float16)

    row_max = tl.full([BLOCK_H], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    block_table_row = block_tables_ptr + seq * stride_block_table
    for tile_start in range(split_start, split_end, BLOCK_N):
        keys = tile_start + tl.arange(0, BLOCK_N)
        key_valid = keys < split_end
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
        scores = tl.where(key_valid[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        probs = tl.exp2(scores - new_max[:, None])
        rescale = tl.exp2(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(probs, 1)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=DOT_PRECISION)
        row_max = new_max

    if WRITE_PARTIALS:
        partial = (seq * num_heads + head) * num_splits + split
        tl.store(partial_max_ptr + partial, row_max, mask=row_valid)
        tl.store(partial_sum_ptr + partial, row_sum, mask=row_valid)
        tl.store(partial_out_ptr + partial[:, None] * head_dim + dims[None, :], acc, mask=io_mask)
    else:
        out = acc / tl.where(row_sum == 0.0, 1.0, row_sum)[:, None]
        tl.store(
            out_ptr + token * stride_out_token + head[:, None] * stride_out_head + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=io_mask,
        )


@triton.jit(do_not_specialize=["num_splits"])
def _merge_splits_kernel(
    out_ptr,
    partial_out_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    query_start_loc_ptr,
    num_heads,
    num_splits,
    stride_out_token,
    stride_out_head,
    head_dim,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    token = tl.load(query_start_loc_ptr + seq)
    if tl.load(query_start_loc_ptr + seq + 1) == token:
        return
    splits = tl.arange(0, BLOCK_S)
    split_valid = splits < num_splits
    dims = tl.arange(0, BLOCK_D)
    dim_valid = dims < head_dim
    partial = (seq * num_heads + head) * num_splits + splits
    split_max = tl.load(partial_max_ptr + partial, mask=split_valid, other=float("-inf"))
    split_sum = tl.load(partial_sum_ptr + partial, mask=split_valid, other=0.0)
    split_out = tl.load(
        partial_out_ptr + partial[:, None] * head_dim + dims[None, :],
        mask=split_valid[:, None] & dim_valid[None, :],
        other=0.0,
    )
    total_max = tl.max(split_max, 0)
    # Splits past the end of a short sequence saw no key: their maximum is -inf, their weight 0.
    weight = tl.exp2(split_max - tl.where(total_max == float("-inf"), 0.0, total_max))
    total_sum = tl.sum(weight * split_sum, 0)
    out = tl.sum(split_out * weight[:, None], 0) / tl.where(total_sum == 0.0, 1.0, total_sum)
    tl.store(
        out_ptr + token * stride_out_token + head * stride_out_head + dims,
        out.to(out_ptr.dtype.element_ty),
        mask=dim_valid,
    )


def _tile_shape(
    device: torch.device, cache_dtype: torch.dtype, head_dim: int = 128
) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) on this device, for a cache of ``cache_dtype``."""
    if device.type != "cuda":
        # The interpreter: small tiles keep it quick and still cross tile boundaries in tests.
        return 16, 1, 1
    if head_dim > 128:
        # Gemma's 256-wide heads: half the keys per tile keep them in registers
        return 32, 4, 3
    if cache_dtype.itemsize == 1:
        # fp8 rows are bound by converting them, not by HBM: two warps a program (H100,
        # 480 x 1.5k tokens: 0.56 ms against 0.67 for the bf16 tile)
        return 64, 2, 3
    return 64, 4, 3


@functools.cache
def _num_multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_decode_splits(
    num_seqs: int, num_kv_heads: int, max_seq_len: int, device: torch.device
) -> int:
    """How many key splits per sequence fill the GPU for this batch (1: no split)."""
    if device.type != "cuda":
        return 1
    programs = num_seqs * num_kv_heads
    target = PROGRAMS_PER_SM * _num_multiprocessors(device.index if device.index is not None else 0)
    if programs >= target:
        return 1
    by_occupancy = triton.cdiv(target, programs)
    by_length = triton.cdiv(max_seq_len, MIN_KEYS_PER_SPLIT)
    return max(1, min(by_occupancy, by_length, MAX_SPLITS))


def decode_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
    num_splits: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention of each sequence's single query token over its cached keys.

    ``num_splits`` fixes how many parts each sequence's keys are cut into; by default it is chosen
    from the batch shape (fix it when capturing a CUDA graph that must serve longer contexts).
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[3]
    queries_per_kv = num_heads // num_kv_heads
    num_seqs = meta.num_seqs
    out = torch.empty_like(q) if num_tokens == num_seqs else torch.zeros_like(q)
    if num_seqs == 0:
        return out
    if num_splits is None:
        num_splits = choose_decode_splits(num_seqs, num_kv_heads, meta.max_seq_len, q.device)
    block_n, num_warps, num_stages = _tile_shape(q.device, kv_cache.dtype, head_dim)
    block_d = max(16, triton.next_power_of_2(head_dim))
    write_partials = num_splits > 1
    partial_shape = (num_seqs, num_heads, num_splits) if write_partials else (0, 0, 0)
    partial_out = torch.empty((*partial_shape, head_dim), dtype=torch.float32, device=q.device)
    partial_max = torch.empty(partial_shape, dtype=torch.float32, device=q.device)
    partial_sum = torch.empty(partial_shape, dtype=torch.float32, device=q.device)
    key_cache, value_cache = kv_cache[0], kv_cache[1]
    _decode_attention_kernel[(num_kv_heads, num_seqs, num_splits)](
        out,
        partial_out,
        partial_max,
        partial_sum,
        q,
        key_cache,
        value_cache,
        meta.block_tables,
        meta.query_start_loc,
        meta.seq_lens,
        score_scale(scale, softcap),
        sliding_window or 0,
        softcap or 0.0,
        num_heads,
        num_splits,
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
        BLOCK_H=max(16, triton.next_power_of_2(queries_per_kv)),
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        USE_WINDOW=sliding_window is not None,
        SOFTCAP=softcap is not None,
        WRITE_PARTIALS=write_partials,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        FP16_DOTS=q.dtype == torch.bfloat16 and kv_cache.dtype.itemsize == 1,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if write_partials:
        _merge_splits_kernel[(num_seqs, num_heads)](
            out,
            partial_out,
            partial_max,
            partial_sum,
            meta.query_start_loc,
            num_heads,
            num_splits,
            out.stride(0),
            out.stride(1),
            head_dim,
            # one variant for every split count up to MAX_SPLITS: none compiles in mid-job
            BLOCK_S=triton.next_power_of_2(max(num_splits, MAX_SPLITS)),
            BLOCK_D=block_d,
        )
    return out
