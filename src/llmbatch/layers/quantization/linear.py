"""Quantized linear layers: FP8 (W8A8) and 4-bit integer (W4A16) weights in place of a merged,
row-parallel or replicated ``Linear``.

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

from llmbatch.layers.quantization import fp8, int4
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


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
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
        self.register_parameter(name, _frozen(tensor))
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
            self.register_parameter(name, _frozen(tensor))

    def finish_loading(self) -> None:
        """Turns the loaded checkpoint-form parameters into the runtime form, once: off CUDA,
        into the dequantized ``weight`` ``[N, K]``."""
        self.to_runtime_form()
        self.param_layouts.clear()
        if self.bias is not None and self.bias.dtype != self.dtype:
            self.replace("bias", self.bias.to(self.dtype))
        if next(self.parameters()).is_cuda:
            return
        weight = self.dequantize()
        for name, _ in list(self.named_parameters(recurse=False)):
            if name != "bias":
                delattr(self, name)
        for name, _ in list(self.named_buffers(recurse=False)):
            setattr(self, name, None)
        self.register_parameter("weight", _frozen(weight))
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
        self.register_parameter("weight_scale", _frozen(scale.float().contiguous()))

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


Int4Format = Literal["awq", "gptq", "gptq_v2", "compressed"]


class Int4Linear(QuantizedLinear):
    """4-bit weights with a scale and a zero point per group of ``group_size`` input features
    (-1: one group), from an AWQ (GEMM), GPTQ (v1, whose stored zero points are one less, or
    v2) or compressed-tensors ``pack-quantized`` checkpoint. ``act_order``: the checkpoint's
    ``g_idx`` may assign input features to groups in any order (its scales then stay whole on
    every rank of a row-parallel layer). ``zero_point``: compressed-tensors stores zero points
    only for asymmetric weights (8 otherwise); AWQ and GPTQ always store them."""

    def __init__(
        self,
        shape: LinearShape,
        bias: bool,
        *,
        layout: Int4Format,
        group_size: int,
        act_order: bool = False,
        zero_point: bool = True,
    ) -> None:
        super().__init__(shape, bias)
        self.layout = layout
        self.group_size = shape.full_in_features if group_size == -1 else group_size
        k, n = shape.in_features, shape.out_features
        if k % int4.PACK or n % int4.PACK or any(p % int4.PACK for p in shape.part_sizes):
            raise ValueError(
                f"a 4-bit layer of {k} input and {shape.part_sizes} output features (on this "
                f"rank) cannot hold 4-bit values packed {int4.PACK} to an int32: use a "
                "tensor_parallel_size that leaves multiples of 8"
            )
        if shape.full_in_features % self.group_size:
            raise ValueError(
                f"{shape.full_in_features} input features are not a whole number of groups of "
                f"{self.group_size}"
            )
        # a row-parallel shard holds whole groups, unless the groups are in act order (or one
        # group spans several ranks): then each rank keeps every group's scales
        self.sharded_groups = not act_order and self.group_size <= k
        if self.sharded_groups and k % self.group_size:
            raise ValueError(
                f"a shard of {k} input features is not a whole number of groups of "
                f"{self.group_size}: use a tensor_parallel_size that splits the groups evenly"
            )
        groups = (k if self.sharded_groups else shape.full_in_features) // self.group_size

        def group_dim(dim: int) -> int | None:
            return dim if self.sharded_groups else None

        packed = n // int4.PACK
        add = self.add_checkpoint_param
        int32, float32 = torch.int32, torch.float32  # scales stay exact until finish_loading
        if layout == "awq":
            add("qweight", torch.empty(k, packed, dtype=int32), 1, 0)
            add("qzeros", torch.empty(groups, packed, dtype=int32), 1, group_dim(0))
            add("scales", torch.empty(groups, n, dtype=float32), 1, group_dim(0))
        elif layout in ("gptq", "gptq_v2"):
            add("qweight", torch.empty(k // int4.PACK, n, dtype=int32), 1, 0)
            add("qzeros", torch.empty(groups, packed, dtype=int32), 1, group_dim(0))
            add("scales", torch.empty(groups, n, dtype=float32), 1, group_dim(0))
            add("g_idx", self.per_part(k, dtype=int32), None, 0, per_part=True)
        else:
            add("weight_packed", torch.empty(n, k // int4.PACK, dtype=int32), 0, 1)
            add("weight_scale", torch.empty(n, groups, dtype=float32), 0, group_dim(1))
            if zero_point:
                zeros = torch.empty(packed, groups, dtype=int32)
                add("weight_zero_point", zeros, 0, group_dim(1))
            if act_order:
                add("weight_g_idx", self.per_part(k, dtype=int32), None, 0, per_part=True)
        self.register_buffer("perm", None, persistent=False)
        self.register_buffer("group_index", None, persistent=False)

    def _checkpoint_values(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(uint8 values ``[K, N]``, float zero points ``[G, N]``, scales ``[G, N]``)."""
        if self.layout == "awq":
            values = int4.awq_unpack(self.qweight)
            zeros = int4.awq_unpack(self.qzeros).float()
            return values, zeros, self.scales
        if self.layout in ("gptq", "gptq_v2"):
            values = int4.unpack_int4(self.qweight, dim=0)
            zeros = int4.unpack_int4(self.qzeros, dim=1).float()
            # GPTQ (v1) stores each zero point minus one
            return values, zeros + 1 if self.layout == "gptq" else zeros, self.scales
        values = int4.unpack_int4(self.weight_packed, dim=1).t()
        scales = self.weight_scale.t()
        if hasattr(self, "weight_zero_point"):
            zeros = int4.unpack_int4(self.weight_zero_point, dim=0).t().float()
        else:
            zeros = torch.full_like(scales, 8.0, dtype=torch.float32)
        return values, zeros, scales

    def _group_of_rows(self) -> torch.Tensor:
        """Each of this rank's input rows' group, as an index into its scales."""
        k = self.shape.in_features
        g_idx = getattr(self, "g_idx", None)
        if g_idx is None:
            g_idx = getattr(self, "weight_g_idx", None)
        if g_idx is None:
            rows = torch.arange(k, device=self.scales_device)
            if not self.sharded_groups and self.shape.parallel == "row":
                rows = rows + self.shape.tp.rank * k  # this rank's rows of the whole groups
            return rows // self.group_size
        if not torch.equal(g_idx, g_idx[:1].expand_as(g_idx)):
            raise ValueError(
                "the projections merged into one layer have different g_idx (act orders); "
                "llmbatch merges q/k/v and gate/up, whose inputs and so act orders are the same"
            )
        group_of_row = g_idx[0].long()
        if self.sharded_groups and self.shape.parallel == "row":
            group_of_row = group_of_row - self.shape.tp.rank * (k // self.group_size)
        groups = self.scales_rows
        if group_of_row.min() < 0 or group_of_row.max() >= groups:
            raise ValueError(
                f"g_idx names groups outside this layer's {groups}: the checkpoint's act order "
                "does not fit its config (desc_act / actorder)"
            )
        return group_of_row

    @property
    def scales_device(self) -> torch.device:
        return (self.scales if hasattr(self, "scales") else self.weight_scale).device

    @property
    def scales_rows(self) -> int:
        return self.scales.shape[0] if hasattr(self, "scales") else self.weight_scale.shape[1]

    def to_runtime_form(self) -> None:
        values, zeros, scales = self._checkpoint_values()
        group_of_row = self._group_of_rows()
        values, perm, group_index = int4.sort_by_group(values, group_of_row, self.group_size)
        scales = scales.float()
        # half precision where it holds the values exactly (fewer bytes for every step to read)
        dtype = torch.float16 if torch.equal(scales.half().float(), scales) else torch.float32
        for name in list(self.param_layouts):
            if name != "bias":
                self.replace(name, None)
        self.register_parameter("qweight", _frozen(int4.pack_int4_rows(values)))
        self.register_parameter("scales", _frozen(scales.to(dtype).contiguous()))
        self.register_parameter("zeros", _frozen(zeros.to(dtype).contiguous()))
        self.perm = perm
        self.group_index = group_index

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return int4.int4_linear(
            x, self.qweight, self.scales, self.zeros, self.group_size, self.perm, self.group_index
        )

    def dequantize(self) -> torch.Tensor:
        rows = int4.dequantize_int4(
            self.qweight, self.scales, self.zeros, self.group_size, self.group_index, self.dtype
        )
        if self.perm is not None:  # back to the input features' own order
            rows = torch.empty_like(rows).index_copy_(0, self.perm, rows)
        return rows.t().contiguous()

    def fill_dummy(self, generator: torch.Generator) -> None:
        # random 4-bit values around a zero point of 8, scaled to about N(0, 0.02)
        for name, tensor in self.named_parameters(recurse=False):
            if name in ("qweight", "weight_packed"):
                bits = torch.randint(
                    -(2**31), 2**31 - 1, tensor.shape, generator=generator, device=tensor.device
                )
                tensor.copy_(bits.to(torch.int32))
            elif name in ("qzeros", "weight_zero_point"):
                eights = 0x77777777 if self.layout == "gptq" else -0x77777778  # 7s or 8s
                tensor.fill_(eights)
            elif name in ("scales", "weight_scale"):
                tensor.fill_(0.0044)
            elif name in ("g_idx", "weight_g_idx"):
                k = tensor.shape[-1]
                rows = torch.arange(k, device=tensor.device)
                if not self.sharded_groups and self.shape.parallel == "row":
                    rows = rows + self.shape.tp.rank * k
                tensor.copy_((rows // self.group_size).expand_as(tensor))
