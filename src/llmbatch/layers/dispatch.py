"""Which implementation a layer op runs: fused Triton kernels on CUDA, PyTorch elsewhere."""

from __future__ import annotations

from functools import cache
from types import ModuleType

import torch


@cache
def _triton_ops() -> ModuleType | None:
    try:
        import llmbatch.layers.triton as ops
    except ImportError:  # Triton is not installed: the PyTorch versions run everywhere
        return None
    return ops


def triton_ops_for(x: torch.Tensor) -> ModuleType | None:
    """The Triton ops module (rms_norm, act_and_mul, apply_rotary) when ``x`` lives on CUDA."""
    return _triton_ops() if x.is_cuda else None
