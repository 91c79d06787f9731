"""Fused Triton kernels for the layers around attention, for CUDA tensors."""

from llmbatch.layers.triton.activation import silu_and_mul
from llmbatch.layers.triton.rms_norm import rms_norm
from llmbatch.layers.triton.rotary import apply_rotary

__all__ = ["apply_rotary", "rms_norm", "silu_and_mul"]
