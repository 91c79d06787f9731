"""RMSNorm with an optional fused residual add, in one pass over each row."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    out_ptr,
    residual_out_ptr,
    x_ptr,
    residual_ptr,
    weight_ptr,
    stride_out,
    stride_residual_out,
    stride_x,
    stride_residual,
    hidden_size,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    ROUND_BEFORE_WEIGHT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden_size
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        summed = x + tl.load(residual_ptr + row * stride_residual + cols, mask=mask, other=0.0).to(
            tl.float32
        )
        # The residual stream stays in the model dtype, exactly as an unfused `x + residual`.
        summed = summed.to(residual_out_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * stride_residual_out + cols, summed, mask=mask)
        x = summed.to(tl.float32)
    variance = tl.sum(x * x, 0) / hidden_size
    normed = x * tl.rsqrt(variance + eps)
    if ROUND_BEFORE_WEIGHT:
        # rounded to the model dtype before the weight, as transformers' Llama RMSNorm does
        normed = normed.to(out_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(
        out_ptr + row * stride_out + cols,
        (normed * weight).to(out_ptr.dtype.element_ty),
        mask=mask,
    )


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    round_before_weight: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of ``x`` over its last dimension, computed in float32; the normalized row is
    rounded to ``x``'s dtype before the weight multiplies it (Llama) or after (Gemma:
    ``round_before_weight=False``).

    With ``residual``, normalizes ``x + residual`` and returns ``(normed, x + residual)``, the
    second being the residual stream for the next layer; without it, returns ``normed``.
    """
    hidden_size = x.shape[-1]
    if weight.shape != (hidden_size,):
        raise ValueError(f"weight must have shape ({hidden_size},), got {tuple(weight.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"residual must match x: x is {tuple(x.shape)} {x.dtype}, "
            f"residual {tuple(residual.shape)} {residual.dtype}"
        )
    rows = x.reshape(-1, hidden_size)
    out = torch.empty_like(rows)
    residual_rows = residual.reshape(-1, hidden_size) if residual is not None else rows
    residual_out = torch.empty_like(rows) if residual is not None else out
    if rows.shape[0] > 0:
        block = triton.next_power_of_2(hidden_size)
        _rms_norm_kernel[(rows.shape[0],)](
            out,
            residual_out,
            rows,
            residual_rows,
            weight,
            out.stride(0),
            residual_out.stride(0),
            rows.stride(0),
            residual_rows.stride(0),
            hidden_size,
            eps,
            HAS_RESIDUAL=residual is not None,
            ROUND_BEFORE_WEIGHT=round_before_weight,
            BLOCK=block,
            num_warps=min(max(block // 256, 1), 16),
        )
    if residual is None:
        return out.view(x.shape)
    return out.view(x.shape), residual_out.view(x.shape)
