"""Fused mixture-of-experts: the (token, expert) pairs sorted by expert, one grouped GEMM per
projection.

Each expert's pairs are padded to whole row blocks, so a row block belongs to one expert: a
program multiplies up to ``BLOCK_M`` gathered rows by a tile of that expert's weights. The gate/up
product and the down product are one launch each, whatever the number of experts; the sort and
the launch sizes depend only on tensor shapes (no host sync), so the step can be captured in a
CUDA graph. FP8 expert weights (one float32 scale per expert and output row) are converted to
the activations' dtype tile by tile and their scales applied to the product (W8A16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmbatch.layers.triton.activation import act_and_mul


@triton.jit
def _grouped_gemm_kernel(
    a_ptr,
    w_ptr,
    w_scale_ptr,
    out_ptr,
    pair_ids_ptr,
    block_expert_ptr,
    pair_weights_ptr,
    num_pairs,
    n_size,
    k_size,
    stride_a_row,
    stride_w_expert,
    stride_w_row,
    stride_scale_expert,
    stride_out_row,
    A_ROW_DIVISOR: tl.constexpr,
    MUL_WEIGHTS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block)
    if expert < 0:
        return
    pairs = tl.load(pair_ids_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    pair_valid = pairs < num_pairs
    # The first product reads token rows (pair // top_k), the second the pairs' own rows.
    a_rows = (pairs // A_ROW_DIVISOR).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_valid = cols < n_size
    w_base = w_ptr + expert.to(tl.int64) * stride_w_expert
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k_start in range(0, k_size, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_valid = ks < k_size
        a = tl.load(
            a_ptr + a_rows[:, None] * stride_a_row + ks[None, :],
            mask=pair_valid[:, None] & k_valid[None, :],
            other=0.0,
        )
        w = tl.load(
            w_base + cols[None, :] * stride_w_row + ks[:, None],
            mask=col_valid[None, :] & k_valid[:, None],
            other=0.0,
        )
        acc = tl.dot(a, w.to(a.dtype), acc, input_precision=DOT_PRECISION)
    if HAS_SCALE:
        at = w_scale_ptr + expert.to(tl.int64) * stride_scale_expert + cols
        acc = acc * tl.load(at, mask=col_valid, other=0.0)[None, :]
    if MUL_WEIGHTS:
        acc = acc * tl.load(pair_weights_ptr + pairs, mask=pair_valid, other=0.0)[:, None]
    tl.store(
        out_ptr + pairs.to(tl.int64)[:, None] * stride_out_row + cols[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=pair_valid[:, None] & col_valid[None, :],
    )


def sort_pairs_by_expert(
    ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs ``t * top_k + k`` grouped by expert, each group padded to whole blocks of
    ``block_m`` with the id ``num_pairs``; and each block's expert (-1: a block past the end).

    Sizes are upper bounds that depend only on ``ids.shape`` and ``num_experts``."""
    flat = ids.reshape(-1)
    num_pairs = flat.numel()
    device = flat.device
    # scatter_add rather than bincount: bincount syncs with the host to size its output
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    order = torch.argsort(flat, stable=True)
    sorted_experts = flat[order]
    rank_in_expert = (
        torch.arange(num_pairs, device=device) - (counts.cumsum(0) - counts)[sorted_experts]
    )
    destination = (padded_end - padded)[sorted_experts] + rank_in_expert
    num_blocks = triton.cdiv(num_pairs + num_experts * (block_m - 1), block_m)
    pair_ids = torch.full((num_blocks * block_m,), num_pairs, dtype=torch.int32, device=device)
    pair_ids[destination] = order.to(torch.int32)
    block_starts = torch.arange(num_blocks, device=device) * block_m
    block_expert = torch.searchsorted(padded_end, block_starts, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return pair_ids, block_expert


def _tile_shape(
    num_pairs: int, num_experts: int, device: torch.device
) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)."""
    if device.type != "cuda":
        # The interpreter: small tiles keep it quick and still cross tile boundaries in tests.
        return 16, 32, 32, 1, 1
    if num_pairs <= 16 * num_experts:
        # decode: a handful of rows per expert, bound by reading the weights once
        return 16, 64, 128, 4, 4
    return 64, 128, 64, 8, 3


def _grouped_gemm(
    a: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor | None,
    out: torch.Tensor,
    pair_ids: torch.Tensor,
    block_expert: torch.Tensor,
    pair_weights: torch.Tensor | None,
    a_row_divisor: int,
    tile: tuple[int, int, int, int, int],
) -> None:
    block_m, block_n, block_k, num_warps, num_stages = tile
    num_pairs, n_size = out.shape
    grid = (block_expert.shape[0], triton.cdiv(n_size, block_n))
    _grouped_gemm_kernel[grid](
        a,
        w,
        w_scale if w_scale is not None else out,
        out,
        pair_ids,
        block_expert,
        pair_weights if pair_weights is not None else out,
        num_pairs,
        n_size,
        w.shape[2],
        a.stride(0),
        w.stride(0),
        w.stride(1),
        w_scale.stride(0) if w_scale is not None else 0,
        out.stride(0),
        A_ROW_DIVISOR=a_row_divisor,
        MUL_WEIGHTS=pair_weights is not None,
        HAS_SCALE=w_scale is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        DOT_PRECISION="ieee" if a.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
        num_stages=num_stages,
    )


def fused_experts(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    activation: str = "silu",
    w13_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum_k weights[t, k] * expert_{ids[t, k]}(hidden[t])`` (see layers/moe.py:
    experts_reference): hidden ``[T, H]``, ``w13`` ``[E, 2I, H]``, ``w2`` ``[E, H, I]``,
    weights and ids ``[T, top_k]``. FP8 weights come with float32 row scales ``w13_scale``
    ``[E, 2I]`` and ``w2_scale`` ``[E, H]``."""
    num_tokens, hidden_size = hidden.shape
    num_experts, gate_up_size, _ = w13.shape
    if w13.shape[2] != hidden_size or w2.shape != (num_experts, hidden_size, gate_up_size // 2):
        raise ValueError(
            f"expert weights do not fit hidden {tuple(hidden.shape)}: w13 {tuple(w13.shape)} "
            f"must be [E, 2I, {hidden_size}] and w2 {tuple(w2.shape)} [E, {hidden_size}, I]"
        )
    if weights.shape != ids.shape or ids.shape[0] != num_tokens:
        raise ValueError(
            f"weights {tuple(weights.shape)} and ids {tuple(ids.shape)} must both be "
            f"[{num_tokens}, top_k]"
        )
    for name, tensor in (("hidden", hidden), ("w13", w13), ("w2", w2)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension")
    top_k = ids.shape[1]
    num_pairs = num_tokens * top_k
    if num_pairs == 0:
        return torch.zeros_like(hidden)
    tile = _tile_shape(num_pairs, num_experts, hidden.device)
    pair_ids, block_expert = sort_pairs_by_expert(ids, num_experts, tile[0])
    gate_up = torch.empty((num_pairs, gate_up_size), dtype=hidden.dtype, device=hidden.device)
    _grouped_gemm(hidden, w13, w13_scale, gate_up, pair_ids, block_expert, None, top_k, tile)
    activated = act_and_mul(gate_up, activation)
    expert_out = torch.empty((num_pairs, hidden_size), dtype=hidden.dtype, device=hidden.device)
    pair_weights = weights.reshape(-1).to(torch.float32).contiguous()
    _grouped_gemm(
        activated, w2, w2_scale, expert_out, pair_ids, block_expert, pair_weights, 1, tile
    )
    return expert_out.view(num_tokens, top_k, hidden_size).sum(dim=1)
