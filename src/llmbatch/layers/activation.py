"""The gated activations of Llama- and Gemma-style MLPs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmbatch.layers.dispatch import triton_ops_for

# as configs name them (hidden_act / hidden_activation)
GATED_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


def check_activation(name: str) -> None:
    if name not in GATED_ACTIVATIONS:
        raise ValueError(
            f"activation {name!r} is not supported; supported: {', '.join(GATED_ACTIVATIONS)}"
        )


def act_and_mul(x: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """``act(gate) * up`` for ``x = [gate | up]`` along the last dimension; ``activation`` is
    ``"silu"`` or ``"gelu_pytorch_tanh"`` (GELU's tanh approximation)."""
    ops = triton_ops_for(x)
    if ops is not None:
        return ops.act_and_mul(x, activation)
    gate, up = x.chunk(2, dim=-1)
    if activation == "silu":
        return F.silu(gate) * up
    return F.gelu(gate, approximate="tanh") * up
