"""SiLU-and-mul: the gated activation of a fused gate/up projection."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(
    out_ptr, x_ptr, stride_out, stride_x, intermediate_size, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < intermediate_size
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + intermediate_size + cols, mask=mask, other=0.0)
    out = gate * tl.sigmoid(gate) * up.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` where ``x = [gate | up]`` along the last dimension (float32 math)."""
    if x.shape[-1] % 2 != 0:
        raise ValueError(f"last dimension must hold gate and up halves, got size {x.shape[-1]}")
    intermediate_size = x.shape[-1] // 2
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty((rows.shape[0], intermediate_size), dtype=x.dtype, device=x.device)
    if rows.shape[0] > 0 and intermediate_size > 0:
        grid = (rows.shape[0], triton.cdiv(intermediate_size, BLOCK))
        _silu_and_mul_kernel[grid](
            out, rows, out.stride(0), rows.stride(0), intermediate_size, BLOCK=BLOCK, num_warps=4
        )
    return out.view(*x.shape[:-1], intermediate_size)
