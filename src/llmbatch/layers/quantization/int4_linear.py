"""A linear layer of 4-bit weights (W4A16) from AWQ, GPTQ or compressed-tensors checkpoints,
unpacked at load into llmbatch's layout (layers/quantization/int4.py)."""

from __future__ import annotations

from typing import Literal

import torch

from llmbatch.layers.quantization import int4
from llmbatch.layers.quantization.linear import LinearShape, QuantizedLinear, frozen

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
        self.register_parameter("qweight", frozen(int4.pack_int4_rows(values)))
        self.register_parameter("scales", frozen(scales.to(dtype).contiguous()))
        self.register_parameter("zeros", frozen(zeros.to(dtype).contiguous()))
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
