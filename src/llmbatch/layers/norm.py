"""RMSNorm, alone or fused with the residual add that precedes it."""

from __future__ import annotations

import torch
from torch import nn

from llmbatch.layers.dispatch import triton_ops_for


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, float32_weight: bool = False
) -> torch.Tensor:
    """Normalizes in float32, as transformers does: Llama's form scales in the input dtype
    (``weight * normed.to(dtype)``), Gemma's (``float32_weight``) in float32 before rounding."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if float32_weight:
        return (x32 * weight.float()).to(x.dtype)
    return weight * x32.to(x.dtype)


class RMSNorm(nn.Module):
    """``float32_weight``: the scale is held in float32 and applied before rounding to the model's
    dtype (Gemma, whose checkpoints store ``scale - 1``: the loader adds the 1 in float32)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, float32_weight: bool = False) -> None:
        super().__init__()
        dtype = torch.float32 if float32_weight else None
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        self.eps = eps
        self.float32_weight = float32_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = triton_ops_for(x)
        if ops is not None:
            return ops.rms_norm(
                x, self.weight, self.eps, round_before_weight=not self.float32_weight
            )
        return rms_norm(x, self.weight, self.eps, self.float32_weight)

    def add_and_norm(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(norm(x + residual), x + residual)``: the new residual stream comes back too."""
        ops = triton_ops_for(x)
        if ops is not None:
            return ops.rms_norm(
                x, self.weight, self.eps, residual, round_before_weight=not self.float32_weight
            )
        summed = x + residual
        return rms_norm(summed, self.weight, self.eps, self.float32_weight), summed
