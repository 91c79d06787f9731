"""Gated activations (SiLU or tanh-GELU, times up) of a fused gate/up projection."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

BLOCK = 1024
_ACTIVATION_IDS = {"silu": 0, "gelu_pytorch_tanh": 1}


@triton.jit
def _act_and_mul_kernel(
    out_ptr,
    x_ptr,
    stride_out,
    stride_x,
    intermediate_size,
    ACTIVATION: tl.constexpr,
    GELU_SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < intermediate_size
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + intermediate_size + cols, mask=mask, other=0.0)
    if ACTIVATION == 0:
        activated = gate * tl.sigmoid(gate)
    else:
        # 0.5 x (1 + tanh(y)) = x sigmoid(2y), y = sqrt(2 / pi) (x + 0.044715 x^3)
        activated = gate * tl.sigmoid(GELU_SCALE * (gate + 0.044715 * gate * gate * gate))
    out = activated * up.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def act_and_mul(x: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """``act(gate) * up`` where ``x = [gate | up]`` along the last dimension (float32 math);
    ``activation`` is "silu" or "gelu_pytorch_tanh"."""
    if x.shape[-1] % 2 != 0:
        raise ValueError(f"last dimension must hold gate and up halves, got size {x.shape[-1]}")
    if activation not in _ACTIVATION_IDS:
        raise ValueError(f"activation must be one of {list(_ACTIVATION_IDS)}, got {activation!r}")
    intermediate_size = x.shape[-1] // 2
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty((rows.shape[0], intermediate_size), dtype=x.dtype, device=x.device)
    if rows.shape[0] > 0 and intermediate_size > 0:
        grid = (rows.shape[0], triton.cdiv(intermediate_size, BLOCK))
        _act_and_mul_kernel[grid](
            out,
            rows,
            out.stride(0),
            rows.stride(0),
            intermediate_size,
            ACTIVATION=_ACTIVATION_IDS[activation],
            GELU_SCALE=2 * math.sqrt(2 / math.pi),
            BLOCK=BLOCK,
            num_warps=4,
        )
    return out.view(*x.shape[:-1], intermediate_size)
