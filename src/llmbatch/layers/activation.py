"""The gated activation of Llama-style MLPs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmbatch.layers.dispatch import triton_ops_for


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``x = [gate | up]`` along the last dimension."""
    ops = triton_ops_for(x)
    if ops is not None:
        return ops.silu_and_mul(x)
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
