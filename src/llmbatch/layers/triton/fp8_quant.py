"""Activations quantised to FP8 e4m3 per token, in one kernel: each program finds its row's
largest magnitude, then writes the row scaled into e4m3 and the row's float32 scale."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)  # as layers/quantization/fp8.py: zero rows stay zero


@triton.jit
def _per_token_kernel(
    x_ptr,
    out_ptr,
    scale_ptr,
    k_size,
    stride_x_row,
    stride_out_row,
    scale_ub,
    HAS_UB: tl.constexpr,
    FP8_MAX: tl.constexpr,
    MIN_SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_row
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, k_size, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols, mask=cols < k_size, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    largest = tl.max(amax, axis=0)
    if HAS_UB:
        largest = tl.minimum(largest, scale_ub)
    scale = tl.maximum(largest / FP8_MAX, MIN_SCALE)
    tl.store(scale_ptr + row, scale)
    for start in range(0, k_size, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols, mask=cols < k_size, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(x / scale, -FP8_MAX), FP8_MAX)
        tl.store(
            out_ptr + row * stride_out_row + cols,
            q.to(out_ptr.dtype.element_ty),
            mask=cols < k_size,
        )


def quantize_fp8_per_token(
    x: torch.Tensor, scale_ub: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[M, K]`` -> (e4m3 ``[M, K]``, float32 scales ``[M, 1]``); see
    layers/quantization/fp8.py: quantize_per_token."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k = x.shape
    out = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m == 0:
        return out, scales
    block = min(triton.next_power_of_2(k), 4096 if x.is_cuda else 64)
    _per_token_kernel[(m,)](
        x,
        out,
        scales,
        k,
        x.stride(0),
        out.stride(0),
        scale_ub if scale_ub is not None else 0.0,
        HAS_UB=scale_ub is not None,
        FP8_MAX=FP8_MAX,
        MIN_SCALE=MIN_SCALE,
        BLOCK=block,
        num_warps=8 if block >= 2048 else 4,
    )
    return out, scales
