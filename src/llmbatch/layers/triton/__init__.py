"""Fused Triton kernels for the layers around attention, and for sampling, for CUDA tensors."""

from llmbatch.layers.triton.activation import silu_and_mul
from llmbatch.layers.triton.bitmask import apply_token_bitmask_
from llmbatch.layers.triton.gumbel import gumbel_argmax
from llmbatch.layers.triton.rms_norm import rms_norm
from llmbatch.layers.triton.rotary import apply_rotary

__all__ = ["apply_rotary", "apply_token_bitmask_", "gumbel_argmax", "rms_norm", "silu_and_mul"]
