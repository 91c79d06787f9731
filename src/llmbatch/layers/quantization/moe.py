"""A mixture of experts with FP8 weights: each expert's gate/up and down matrices in e4m3 with
one scale per output row, multiplied in the activations' dtype (W8A16) by the grouped Triton
GEMM on CUDA (layers/triton/moe.py); elsewhere dequantised once, at load, into the model's
dtype."""

from __future__ import annotations

import torch
from torch import nn

from llmbatch.layers.dispatch import triton_ops_for
from llmbatch.layers.moe import MoEExperts, experts_reference
from llmbatch.layers.quantization import fp8
from llmbatch.layers.quantization.linear import frozen


class Fp8MoEExperts(MoEExperts):
    """``MoEExperts`` whose ``w13`` ``[E, 2I, H]`` and ``w2`` ``[E, H, I]`` (``I`` this rank's
    share) are e4m3. Loaded from one scale per expert and projection
    (``per_tensor_scales``: ``w13_weight_scale`` ``[E, 2, 1]``, gate then up, and
    ``w2_weight_scale`` ``[E, 1, 1]``) or per output row (``[E, 2I, 1]`` and ``[E, H, 1]``);
    ``online``: from full-precision weights, quantised per row at load."""

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        activation: str = "silu",
        *,
        per_tensor_scales: bool = False,
        online: bool = False,
    ) -> None:
        nn.Module.__init__(self)  # MoEExperts' own weights would be full precision
        self.num_experts = num_experts
        self.intermediate_size = intermediate_size
        self.activation = activation
        self.dtype = torch.get_default_dtype()  # the model's, which it is built under
        self.dequantized = False
        self.per_tensor_scales = per_tensor_scales
        self.online = online
        dtype = None if online else fp8.FP8
        rows = intermediate_size
        self.w13 = frozen(torch.empty(num_experts, 2 * rows, hidden_size, dtype=dtype))
        self.w2 = frozen(torch.empty(num_experts, hidden_size, rows, dtype=dtype))
        if not online:
            w13_rows, w2_rows = (2, 1) if per_tensor_scales else (2 * rows, hidden_size)
            float32 = torch.float32  # scales stay exact until finish_loading
            self.w13_weight_scale = frozen(torch.empty(num_experts, w13_rows, 1, dtype=float32))
            self.w2_weight_scale = frozen(torch.empty(num_experts, w2_rows, 1, dtype=float32))

    def finish_loading(self) -> None:
        if self.online:
            w13, w13_scale = fp8.quantize_weight(self.w13.flatten(0, 1))
            w2, w2_scale = fp8.quantize_weight(self.w2.flatten(0, 1))
            self.w13 = frozen(w13.view_as(self.w13))
            self.w2 = frozen(w2.view_as(self.w2))
            w13_scale = w13_scale.view(self.num_experts, -1)
            w2_scale = w2_scale.view(self.num_experts, -1)
        else:
            w13_scale = self.w13_weight_scale.squeeze(-1).float()
            w2_scale = self.w2_weight_scale.squeeze(-1).float()
            if self.per_tensor_scales:
                w13_scale = w13_scale.repeat_interleave(self.intermediate_size, dim=1)
                w2_scale = w2_scale.expand(-1, self.w2.shape[1])
            del self.w13_weight_scale, self.w2_weight_scale
        self.w13_scale = frozen(w13_scale.contiguous())
        self.w2_scale = frozen(w2_scale.contiguous())
        if not self.w13.is_cuda:
            self.w13 = frozen(fp8.dequantize_weight(self.w13, self.w13_scale, self.dtype))
            self.w2 = frozen(fp8.dequantize_weight(self.w2, self.w2_scale, self.dtype))
            del self.w13_scale, self.w2_scale
            self.dequantized = True

    def fill_dummy(self, generator: torch.Generator) -> None:
        # the weights were drawn from N(0, 0.02) like every other; unit scales keep them so
        if not self.online:
            self.w13_weight_scale.fill_(1.0)
            self.w2_weight_scale.fill_(1.0)

    def forward(
        self, hidden: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        if self.dequantized:
            return super().forward(hidden, weights, ids)
        ops = triton_ops_for(hidden)
        if ops is not None and fp8.has_fp8_tensor_cores(hidden.device):
            return ops.fused_experts(
                hidden,
                self.w13,
                self.w2,
                weights,
                ids,
                self.activation,
                w13_scale=self.w13_scale,
                w2_scale=self.w2_scale,
            )
        w13 = fp8.dequantize_weight(self.w13, self.w13_scale, hidden.dtype)
        w2 = fp8.dequantize_weight(self.w2, self.w2_scale, hidden.dtype)
        return experts_reference(hidden, w13, w2, weights, ids, self.activation)
