"""Mixture-of-experts feed-forward: top-k routing and the experts' gated MLPs.

Each token goes to the ``top_k`` experts its router scores highest and leaves as the weighted sum
of their outputs. On CUDA the experts run as one grouped Triton GEMM per projection over the
(token, expert) pairs sorted by expert (layers/triton/moe.py); elsewhere, and as the reference,
expert by expert in PyTorch. Under tensor parallelism every rank holds every expert's slice of
the intermediate features, so each rank's output is a partial sum that one all-reduce completes.
"""

from __future__ import annotations

import torch
from torch import nn

from llmbatch.layers.activation import act_and_mul
from llmbatch.layers.dispatch import triton_ops_for
from llmbatch.layers.linear import weight_device
from llmbatch.layers.tensor_parallel import TensorParallel


def route(
    router_logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the experts (in float32), then the ``top_k`` best: float32 weights and int64
    expert ids, ``[T, top_k]`` each; ``renormalize`` makes each token's weights sum to 1."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def experts_reference(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    activation: str = "silu",
) -> torch.Tensor:
    """``sum_k weights[t, k] * expert_{ids[t, k]}(hidden[t])``, one expert at a time in increasing
    order (the order transformers adds them in).

    hidden ``[T, H]``; ``w13`` ``[E, 2I, H]`` (gate rows, then up rows); ``w2`` ``[E, H, I]``.
    """
    out = torch.zeros_like(hidden)
    for expert in ids.unique().tolist():
        tokens, slot = torch.where(ids == expert)
        gate_up = hidden[tokens] @ w13[expert].T
        expert_out = act_and_mul(gate_up, activation) @ w2[expert].T
        # a token picks an expert at most once: one addition per row, as index_add_ does
        # (which is slow on a busy CPU: it waits on every thread for a few rows)
        out.index_put_((tokens,), (expert_out * weights[tokens, slot, None]).to(out.dtype), True)
    return out


class MoEExperts(nn.Module):
    """The experts' weights, stacked: ``w13`` ``[E, 2 * I_rank, H]`` (each expert's gate rows then
    up rows) and ``w2`` ``[E, H, I_rank]``, ``I_rank`` being this rank's share of the
    intermediate features. The output is this rank's partial sum (the caller all-reduces)."""

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        tp: TensorParallel,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        tp.check_divides(intermediate_size, "expert intermediate size")
        self.num_experts = num_experts
        self.intermediate_size = intermediate_size // tp.size
        self.activation = activation
        device = weight_device()
        rows = self.intermediate_size
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * rows, hidden_size, device=device))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_size, rows, device=device))

    def forward(
        self, hidden: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """hidden ``[T, H]``, routing weights and expert ids ``[T, top_k]`` -> ``[T, H]``."""
        ops = triton_ops_for(hidden)
        if ops is not None:
            return ops.fused_experts(hidden, self.w13, self.w2, weights, ids, self.activation)
        return experts_reference(hidden, self.w13, self.w2, weights, ids, self.activation)
