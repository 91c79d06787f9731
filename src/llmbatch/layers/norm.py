"""RMSNorm, alone or fused with the residual add that precedes it."""

from __future__ import annotations

import torch
from torch import nn

from llmbatch.layers.dispatch import triton_ops_for


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalizes in float32 and scales in the input dtype, exactly as transformers does."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = triton_ops_for(x)
        if ops is not None:
            return ops.rms_norm(x, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)

    def add_and_norm(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(norm(x + residual), x + residual)``: the new residual stream comes back too."""
        ops = triton_ops_for(x)
        if ops is not None:
            return ops.rms_norm(x, self.weight, self.eps, residual)
        summed = x + residual
        return rms_norm(summed, self.weight, self.eps), summed
