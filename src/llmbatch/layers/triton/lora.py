"""The batched LoRA products of a step (layers/lora.py): tokens grouped by adapter slot into row
blocks of one slot (the host's plan), then for each block ``h = x A_s^T`` (shrink) and
``out += h B_s^T`` (expand). One launch each for every adapter of the step; the grid depends
only on the number of tokens and slots, so steps replay in CUDA graphs."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _shrink_kernel(
    x_ptr,
    a_ptr,
    h_ptr,
    token_ids_ptr,
    block_slot_ptr,
    num_tokens,
    in_size,
    rank,
    stride_x,
    stride_a_slot,
    stride_a_row,
    stride_h,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    slot = tl.load(block_slot_ptr + block)
    if slot < 0:
        return
    tokens = tl.load(token_ids_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = tokens < num_tokens
    rows = tokens.to(tl.int64)
    ranks = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    rank_valid = ranks < rank
    a_base = a_ptr + slot.to(tl.int64) * stride_a_slot
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for k_start in range(0, in_size, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_valid = ks < in_size
        x = tl.load(
            x_ptr + rows[:, None] * stride_x + ks[None, :],
            mask=valid[:, None] & k_valid[None, :],
            other=0.0,
        )
        a = tl.load(
            a_base + ranks[None, :] * stride_a_row + ks[:, None],
            mask=rank_valid[None, :] & k_valid[:, None],
            other=0.0,
        )
        acc = tl.dot(x, a, acc, input_precision=DOT_PRECISION)
    tl.store(
        h_ptr + rows[:, None] * stride_h + ranks[None, :],
        acc,
        mask=valid[:, None] & rank_valid[None, :],
    )


@triton.jit
def _expand_kernel(
    h_ptr,
    b_ptr,
    out_ptr,
    token_ids_ptr,
    block_slot_ptr,
    num_tokens,
    out_size,
    rank,
    stride_h,
    stride_b_slot,
    stride_b_row,
    stride_out,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    slot = tl.load(block_slot_ptr + block)
    if slot < 0:
        return
    tokens = tl.load(token_ids_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = tokens < num_tokens
    rows = tokens.to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_valid = cols < out_size
    b_base = b_ptr + slot.to(tl.int64) * stride_b_slot
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for r_start in range(0, rank, BLOCK_R):
        rs = r_start + tl.arange(0, BLOCK_R)
        r_valid = rs < rank
        h = tl.load(
            h_ptr + rows[:, None] * stride_h + rs[None, :],
            mask=valid[:, None] & r_valid[None, :],
            other=0.0,
        )
        b = tl.load(
            b_base + rs[:, None] * stride_b_row + cols[None, :],
            mask=r_valid[:, None] & col_valid[None, :],
            other=0.0,
        )
        # the shrunk values in the weights' dtype, as the adapter runs in it
        acc = tl.dot(h.to(b_ptr.dtype.element_ty), b, acc, input_precision=DOT_PRECISION)
    mask = valid[:, None] & col_valid[None, :]
    pointers = out_ptr + rows[:, None] * stride_out + cols[None, :]
    # a token is in exactly one block: no other program writes these elements
    current = tl.load(pointers, mask=mask, other=0.0)
    tl.store(pointers, (current.to(tl.float32) + acc).to(out_ptr.dtype.element_ty), mask=mask)


def _tiles(device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_K of the shrink, BLOCK_N of the expand, num_warps)."""
    if device.type != "cuda":
        return 32, 32, 1  # the interpreter: small tiles, still crossing tile edges in tests
    return 64, 128, 4


def add_lora_(
    out: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    token_ids: torch.Tensor,
    block_slot: torch.Tensor,
    block_m: int,
) -> None:
    """``out[t] += (x[t] @ a[s].T) @ b[s]`` for the tokens of each block's slot ``s``: ``x``
    ``[T, in]``, ``out`` ``[T, out]``, ``a`` ``[L, R, in]``, ``b`` ``[L, R, out]``; the plan
    (`layers.lora.plan_blocks`) lists token ids (>= T: none) per block of ``block_m``."""
    num_tokens, in_size = x.shape
    num_slots, rank, out_size = b.shape
    if a.shape != (num_slots, rank, in_size) or out.shape != (num_tokens, out_size):
        raise ValueError(
            f"LoRA shapes do not fit: x {tuple(x.shape)}, out {tuple(out.shape)}, "
            f"a {tuple(a.shape)}, b {tuple(b.shape)}"
        )
    if num_tokens == 0:
        return
    for name, tensor in (("x", x), ("out", out), ("a", a), ("b", b)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension")
    # blocks that can hold this many tokens (the plan fills them from the first)
    num_blocks = min(block_slot.shape[0], triton.cdiv(num_tokens, block_m) + num_slots)
    block_k, block_n, num_warps = _tiles(x.device)
    block_r = min(128, max(16, triton.next_power_of_2(rank)))
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    shrunk = torch.empty((num_tokens, rank), dtype=torch.float32, device=x.device)
    _shrink_kernel[(num_blocks, triton.cdiv(rank, block_r))](
        x,
        a,
        shrunk,
        token_ids,
        block_slot,
        num_tokens,
        in_size,
        rank,
        x.stride(0),
        a.stride(0),
        a.stride(1),
        shrunk.stride(0),
        BLOCK_M=block_m,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        DOT_PRECISION=precision,
        num_warps=num_warps,
    )
    _expand_kernel[(num_blocks, triton.cdiv(out_size, block_n))](
        shrunk,
        b,
        out,
        token_ids,
        block_slot,
        num_tokens,
        out_size,
        rank,
        shrunk.stride(0),
        b.stride(0),
        b.stride(1),
        out.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_R=min(block_r, 64),
        DOT_PRECISION=precision,
        num_warps=num_warps,
    )
