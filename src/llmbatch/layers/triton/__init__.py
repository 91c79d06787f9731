"""Fused Triton kernels for the layers around attention, mixture-of-experts, quantized weights
and sampling, for CUDA tensors."""

from llmbatch.layers.triton.activation import act_and_mul
from llmbatch.layers.triton.bitmask import apply_token_bitmask_
from llmbatch.layers.triton.fp8_quant import quantize_fp8_per_token
from llmbatch.layers.triton.gumbel import gumbel_argmax
from llmbatch.layers.triton.moe import fused_experts
from llmbatch.layers.triton.rms_norm import rms_norm
from llmbatch.layers.triton.rotary import apply_rotary
from llmbatch.layers.triton.w4a16 import w4a16_matmul

__all__ = [
    "act_and_mul",
    "apply_rotary",
    "apply_token_bitmask_",
    "fused_experts",
    "gumbel_argmax",
    "quantize_fp8_per_token",
    "rms_norm",
    "w4a16_matmul",
]
