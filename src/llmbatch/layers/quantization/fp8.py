"""FP8 (e4m3) weights: quantising them, and the matmul with them.

A weight holds one float32 scale per output row (a checkpoint's per-tensor scales are spread over
the rows they cover). On a GPU with FP8 tensor cores (compute capability 8.9 or newer) the
activations are quantised too, per token (or with the static scale a checkpoint gives), and the
product runs on the tensor cores through ``torch._scaled_mm`` (W8A8). Elsewhere (the CPU, older
GPUs, shapes the tensor cores do not take) the weight is dequantised and the activations stay as
they are (W8A16), which is also the reference the W8A8 path is checked against.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

from llmbatch.layers.dispatch import triton_ops_for

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
# the smallest scale: an all-zero row quantises to zeros instead of dividing by zero
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` ``[N, K]`` -> (e4m3 ``[N, K]``, float32 scales ``[N]``), one scale per row:
    the row's largest magnitude maps to the format's largest value."""
    rows = weight.float()
    scale = (rows.abs().amax(dim=-1) / FP8_MAX).clamp(min=MIN_SCALE)
    return (rows / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize_weight(
    weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """e4m3 ``[..., N, K]`` with float32 scales ``[..., N]`` -> ``[..., N, K]`` in ``dtype``."""
    return (weight.float() * scale.unsqueeze(-1)).to(dtype)


def quantize_per_token(
    x: torch.Tensor, scale_ub: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[M, K]`` -> (e4m3 ``[M, K]``, float32 scales ``[M, 1]``), one scale per row
    (token); ``scale_ub`` caps the magnitude a scale covers (FBGEMM's activation bound), so an
    outlier token saturates instead of flattening the rest of its row."""
    ops = triton_ops_for(x)
    if ops is not None:
        return ops.quantize_fp8_per_token(x, scale_ub)
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    if scale_ub is not None:
        amax = amax.clamp(max=scale_ub)
    scale = (amax / FP8_MAX).clamp(min=MIN_SCALE)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def quantize_static(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[M, K]`` quantised with one float32 scale ``[1]``; the scale repeated per row."""
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale.view(1, 1).expand(x.shape[0], 1).contiguous()


@cache
def has_fp8_tensor_cores(device: torch.device) -> bool:
    """A CUDA device of compute capability 8.9 or newer (Ada, Hopper, Blackwell)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def uses_fp8_tensor_cores(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x @ weight.T`` runs as W8A8 on this device and shape (``torch._scaled_mm`` takes
    inner and output sizes that are multiples of 16)."""
    n, k = weight.shape
    return has_fp8_tensor_cores(x.device) and n % 16 == 0 and k % 16 == 0


def scaled_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None = None,
    scale_ub: float | None = None,
) -> torch.Tensor:
    """W8A8: ``x`` ``[M, K]`` quantised per token (or with ``input_scale``), times the e4m3
    ``weight`` ``[N, K]`` with its row scales ``[N]``, on FP8 tensor cores; ``[M, N]`` in
    ``x``'s dtype. (Row-wise scaling produces bfloat16, rounded to ``x``'s dtype when it
    differs.)"""
    if input_scale is None:
        q, x_scale = quantize_per_token(x, scale_ub)
    else:
        q, x_scale = quantize_static(x, input_scale)
    out = torch._scaled_mm(
        q,
        weight.t(),
        scale_a=x_scale,
        scale_b=weight_scale.view(1, -1),
        out_dtype=torch.bfloat16,
    )
    return out if out.dtype == x.dtype else out.to(x.dtype)


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None = None,
    scale_ub: float | None = None,
) -> torch.Tensor:
    """``x @ dequantize(weight).T`` for ``x`` ``[..., K]``: W8A8 where FP8 tensor cores take it,
    else the dequantised weight in ``x``'s dtype."""
    if not uses_fp8_tensor_cores(x, weight):
        return F.linear(x, dequantize_weight(weight, weight_scale, x.dtype))
    flat = x.reshape(-1, x.shape[-1])
    out = scaled_matmul(flat, weight, weight_scale, input_scale, scale_ub)
    return out.view(*x.shape[:-1], weight.shape[0])
