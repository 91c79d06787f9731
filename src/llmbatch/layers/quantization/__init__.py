"""Quantized weights: FP8 (W8A8 on FP8 tensor cores) and 4-bit integers (W4A16), as linear
layers and mixture-of-experts stacks that the model's own layers are swapped for at load."""

from llmbatch.layers.quantization.int4_linear import Int4Linear
from llmbatch.layers.quantization.linear import (
    Fp8Linear,
    LinearShape,
    ParamLayout,
    QuantizedLinear,
)
from llmbatch.layers.quantization.moe import Fp8MoEExperts

__all__ = [
    "Fp8Linear",
    "Fp8MoEExperts",
    "Int4Linear",
    "LinearShape",
    "ParamLayout",
    "QuantizedLinear",
]
