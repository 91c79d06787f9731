"""Rotary position embedding applied in place to q and k (the rotate-half layout of Llama)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(
    x_ptr,
    token,
    stride_token,
    stride_head,
    num_heads,
    cos,
    sin,
    half,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < num_heads) & (dims < half)
    first_ptr = x_ptr + token * stride_token + heads * stride_head + dims
    first = tl.load(first_ptr, mask=mask, other=0.0).to(tl.float32)
    second = tl.load(first_ptr + half, mask=mask, other=0.0).to(tl.float32)
    tl.store(first_ptr, (first * cos - second * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(first_ptr + half, (second * cos + first * sin).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr,
    k_ptr,
    cos_ptr,
    sin_ptr,
    positions_ptr,
    stride_q_token,
    stride_q_head,
    stride_k_token,
    stride_k_head,
    stride_cos,
    stride_sin,
    num_q_heads,
    num_k_heads,
    half,
    BLOCK_QH: tl.constexpr,
    BLOCK_KH: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    token = tl.program_id(0)
    position = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, BLOCK_HALF)
    cos = tl.load(cos_ptr + position * stride_cos + dims, mask=dims < half, other=0.0)
    sin = tl.load(sin_ptr + position * stride_sin + dims, mask=dims < half, other=0.0)
    cos = cos.to(tl.float32)[None, :]
    sin = sin.to(tl.float32)[None, :]
    _rotate_heads(
        q_ptr,
        token,
        stride_q_token,
        stride_q_head,
        num_q_heads,
        cos,
        sin,
        half,
        BLOCK_QH,
        BLOCK_HALF,
    )
    _rotate_heads(
        k_ptr,
        token,
        stride_k_token,
        stride_k_head,
        num_k_heads,
        cos,
        sin,
        half,
        BLOCK_KH,
        BLOCK_HALF,
    )


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
) -> None:
    """Rotate ``q`` ``[T, num_heads, head_dim]`` and ``k`` ``[T, num_kv_heads, head_dim]`` in place.

    ``cos``/``sin`` are ``[max_position, rotary_dim // 2]`` tables (one angle per pair of dims);
    the first ``rotary_dim`` dims of each head are rotated as ``(x1, x2) -> (x1 cos - x2 sin,
    x2 cos + x1 sin)`` with ``x1, x2`` its two halves, in float32; the rest are left as they are.
    ``positions`` (``[T]``, integer) index the tables and must be below ``max_position``.
    """
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(
            "q must be [T, num_heads, head_dim] and k [T, num_kv_heads, head_dim]; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if cos.dim() != 2 or cos.shape != sin.shape or 2 * cos.shape[1] > q.shape[2]:
        raise ValueError(
            "cos and sin must both be [max_position, rotary_dim // 2] with rotary_dim <= "
            f"head_dim {q.shape[2]}; got cos {tuple(cos.shape)}, sin {tuple(sin.shape)}"
        )
    if positions.shape != (q.shape[0],) or positions.is_floating_point():
        raise ValueError(
            f"positions must be integers of shape ({q.shape[0]},), got "
            f"{tuple(positions.shape)} {positions.dtype}"
        )
    if q.stride(-1) != 1 or k.stride(-1) != 1 or cos.stride(-1) != 1 or sin.stride(-1) != 1:
        raise ValueError("q, k, cos and sin must be contiguous in their last dimension")
    if q.shape[0] == 0:
        return
    half = cos.shape[1]
    _rotary_kernel[(q.shape[0],)](
        q,
        k,
        cos,
        sin,
        positions,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos.stride(0),
        sin.stride(0),
        q.shape[1],
        k.shape[1],
        half,
        BLOCK_QH=triton.next_power_of_2(q.shape[1]),
        BLOCK_KH=triton.next_power_of_2(k.shape[1]),
        BLOCK_HALF=triton.next_power_of_2(half),
        num_warps=4,
    )
