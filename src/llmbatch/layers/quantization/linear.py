"""Quantized linear layers in place of a merged, row-parallel or replicated ``Linear``: what
they share, and FP8 weights (W8A8; 4-bit weights: int4_linear.py).

A layer is built holding its parameters in the checkpoint's form (names, shapes and dtypes as the
quantization tool wrote them, this rank's share of them), each with a ``ParamLayout`` saying how
a checkpoint tensor maps onto it, so that models/checkpoint.py fills them like any other
parameter. ``finish_loading`` then turns them into the form the matmul runs on, once: on CUDA
the quantized form the kernels read; elsewhere the dequantized weight in the model's dtype (the
CPU runs quantized checkpoints for their results, not their memory).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from llmbatch.layers.quantization import fp8
from llmbatch.layers.tensor_parallel import TensorParallel

Parallel = Literal["column", "row", "replicated"]


@dataclass(frozen=True, slots=True)
class LinearShape:
    """Where a linear layer sits: this rank's input features, this rank's output rows of each
    part (q, k and v; gate and up; one part for an unmerged layer), and how the ranks split it:
    ``column`` (each rank holds a share of every part's rows), ``row`` (a share of the input
    features; the partial products are summed) or ``replicated``. ``checkpoint_parts`` is how
    many tensors the checkpoint stores the layer as (one for a fused projection)."""

    in_features: int
    part_sizes: tuple[int, ...]
    parallel: Parallel
    tp: TensorParallel
    reduce_results: bool = True
    checkpoint_parts: int = 1

    @property
    def out_features(self) -> int:
        return sum(self.part_sizes)

    @property
    def full_in_features(self) -> int:
        return self.in_features * (self.tp.size if self.parallel == "row" else 1)


@dataclass(frozen=True, slots=True)
class ParamLayout:
    """How one checkpoint tensor maps onto a parameter: its dimension ``output_dim`` holds output
    features (possibly packed eight to an element; split into parts and sharded in a
    column-parallel layer), ``input_dim`` input features or groups of them (sharded in a
    row-parallel layer; None where every rank holds all of them). A ``per_part`` parameter holds
    one checkpoint tensor per part along an extra leading dimension (per-tensor scales, GPTQ's
    ``g_idx``); its dimensions count within one part."""

    output_dim: int | None = None
    input_dim: int | None = None
    per_part: bool = False


def frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


class QuantizedLinear(nn.Module, ABC):
    """``y = x W^T + b`` with a quantized ``W``; a row-parallel layer sums its ranks' partial
    products (before the bias), as ``RowParallelLinear`` does."""

    def __init__(self, shape: LinearShape, bias: bool) -> None:
        super().__init__()
        self.shape = shape
        self.dtype = torch.get_default_dtype()  # the model's, which it is built under
        self.dequantized = False
        self.param_layouts: dict[str, ParamLayout] = {}
        if bias:
            output_dim = 0 if shape.parallel == "column" else None
            self.add_checkpoint_param("bias", torch.empty(shape.out_features), output_dim)
        else:
            self.bias = None

    def add_checkpoint_param(
        self,
        name: str,
        tensor: torch.Tensor,
        output_dim: int | None = None,
        input_dim: int | None = None,
        per_part: bool = False,
    ) -> None:
        """A parameter the checkpoint fills (``input_dim`` counts only for a row-parallel
        layer)."""
        if self.shape.parallel != "row":
            input_dim = None
        self.register_parameter(name, frozen(tensor))
        self.param_layouts[name] = ParamLayout(output_dim, input_dim, per_part)

    def per_part(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """An empty tensor with one ``shape`` entry per checkpoint part."""
        return torch.empty((self.shape.checkpoint_parts, *shape), dtype=dtype)

    def rows_of_parts(self, per_part: torch.Tensor) -> torch.Tensor:
        """One value per checkpoint part ``[parts]`` -> one per output row ``[N]``."""
        if per_part.numel() == 1:
            return per_part.reshape(1).expand(self.shape.out_features).contiguous()
        sizes = torch.tensor(self.shape.part_sizes, device=per_part.device)
        return per_part.reshape(-1).repeat_interleave(sizes)

    def replace(self, name: str, tensor: torch.Tensor | None) -> None:
        """Swaps a checkpoint-form parameter for its runtime form (None: drops it)."""
        self.param_layouts.pop(name, None)
        delattr(self, name)
        if tensor is not None:
            self.register_parameter(name, frozen(tensor))

    def finish_loading(self) -> None:
        """Turns the loaded checkpoint-form parameters into the runtime form, once: off CUDA,
        into the dequantized ``weight`` ``[N, K]``."""
        self.to_runtime_form()
        self.param_layouts.clear()
        if next(self.parameters()).is_cuda:
            return
        weight = self.dequantize()
        for name, _ in list(self.named_parameters(recurse=False)):
            if name != "bias":
                delattr(self, name)
        for name, _ in list(self.named_buffers(recurse=False)):
            setattr(self, name, None)
        self.register_parameter("weight", frozen(weight))
        self.dequantized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dequantized:
            out = F.linear(x, self.weight)
        else:
            out = self.matmul(x)
        tp = self.shape.tp
        if self.shape.parallel == "row" and tp.size > 1:
            if not self.shape.reduce_results:
                return out
            out = tp.all_reduce(out)
        return out if self.bias is None else out + self.bias

    @abstractmethod
    def to_runtime_form(self) -> None:
        """Replaces the checkpoint-form parameters by those ``matmul`` reads."""

    @abstractmethod
    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T`` from the runtime form (this rank's partial product for a row-parallel
        layer)."""

    @abstractmethod
    def dequantize(self) -> torch.Tensor:
        """The runtime form's weight ``[N, K]`` in the model's dtype."""

    @abstractmethod
    def fill_dummy(self, generator: torch.Generator) -> None:
        """Random weights in the checkpoint form (for ``load_format="dummy"``), before
        ``finish_loading``: values a real checkpoint could hold, drawn per rank."""


class Fp8Linear(QuantizedLinear):
    """FP8 e4m3 weights with one scale per tensor (``weight_scale="tensor"``, one per checkpoint
    part) or per output row (``"channel"``, stored ``[N, 1]`` or, with ``channel_scale_2d``
    False, ``[N]``); activations quantised per token (capped at ``scale_ub``) or with the static
    ``input_scale`` the checkpoint gives. ``online``: the checkpoint holds full-precision
    weights, quantised here per row."""

    def __init__(
        self,
        shape: LinearShape,
        bias: bool,
        *,
        weight_scale: Literal["tensor", "channel"] = "channel",
        channel_scale_2d: bool = True,
        static_input: bool = False,
        scale_ub: float | None = None,
        online: bool = False,
    ) -> None:
        super().__init__(shape, bias)
        self.online = online
        self.scale_ub = scale_ub
        self.weight_scale_kind = weight_scale
        n, k = shape.out_features, shape.in_features
        weight_dtype = None if online else fp8.FP8  # online: the model's dtype, until loaded
        weight = torch.empty(n, k, dtype=weight_dtype)
        self.add_checkpoint_param("weight", weight, output_dim=0, input_dim=1)
        if not online and weight_scale == "tensor":
            self.add_checkpoint_param("weight_scale", self.per_part(1), per_part=True)
        elif not online:
            scale = torch.empty((n, 1) if channel_scale_2d else (n,), dtype=torch.float32)
            self.add_checkpoint_param("weight_scale", scale, output_dim=0)
        if static_input and not online:
            self.add_checkpoint_param("input_scale", self.per_part(1), per_part=True)
        else:
            self.input_scale = None

    def to_runtime_form(self) -> None:
        if self.online:
            weight, scale = fp8.quantize_weight(self.weight)
            self.replace("weight", weight)
        else:
            scale = self.weight_scale.reshape(-1)
            if self.weight_scale_kind == "tensor":
                scale = self.rows_of_parts(scale)
            self.replace("weight_scale", None)
            if self.input_scale is not None:
                # one scale for the merged input: the largest of its parts' (as vLLM does)
                self.replace("input_scale", self.input_scale.max().reshape(1))
        self.register_parameter("weight_scale", frozen(scale.float().contiguous()))

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return fp8.fp8_linear(x, self.weight, self.weight_scale, self.input_scale, self.scale_ub)

    def dequantize(self) -> torch.Tensor:
        return fp8.dequantize_weight(self.weight, self.weight_scale, self.dtype)

    def fill_dummy(self, generator: torch.Generator) -> None:
        # the weight was drawn from N(0, 0.02) like every other; unit scales keep it so
        if not self.online:
            self.weight_scale.fill_(1.0)
            if self.input_scale is not None:
                self.input_scale.fill_(0.01)
