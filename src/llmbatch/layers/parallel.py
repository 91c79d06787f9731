"""Layers sharded over a tensor-parallel group (Megatron-style).

Column-parallel layers are plain ``Linear`` layers with each rank's share of the output features;
the layers here are the ones that need a collective: a row-parallel linear sums the ranks' partial
products, the vocabulary-parallel embedding sums the rows only their owner looked up, and the
vocabulary-parallel LM head gathers the logits of every slice on the driver.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmbatch.layers.linear import weight_device
from llmbatch.layers.tensor_parallel import TensorParallel


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class RowParallelLinear(nn.Module):
    """``y = x W^T + b`` where each rank holds a slice of the input features; the bias is added
    once, after the sum. With ``reduce_results=False`` it returns this rank's partial product,
    for a caller that adds it to other partial sums before one all-reduce."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        tp: TensorParallel,
        reduce_results: bool = True,
    ) -> None:
        super().__init__()
        tp.check_divides(in_features, "input features of a row-parallel projection")
        if bias and not reduce_results:
            raise ValueError("a row-parallel projection with a bias must reduce its results")
        self.tp = tp
        self.reduce_results = reduce_results
        device = weight_device()
        self.weight = nn.Parameter(torch.empty(out_features, in_features // tp.size, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.linear(x, self.weight, self.bias)
        out = F.linear(x, self.weight)
        if not self.reduce_results:
            return out
        out = self.tp.all_reduce(out)
        return out if self.bias is None else out + self.bias


class VocabParallelEmbedding(nn.Module):
    """Each rank holds ``ceil(vocab / size)`` consecutive rows; the last rank's tail is padding."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.rows_per_rank = cdiv(vocab_size, tp.size)
        self.first_row = tp.rank * self.rows_per_rank
        # zeros: padding rows are never looked up, but their logits must be finite
        self.weight = nn.Parameter(torch.zeros(self.rows_per_rank, hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.first_row
        outside = (local < 0) | (local >= self.rows_per_rank)
        hidden = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.all_reduce(hidden.masked_fill(outside.unsqueeze(-1), 0))


class VocabParallelLMHead(nn.Module):
    """The output projection, split by vocabulary rows as the embedding is."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(torch.zeros(cdiv(vocab_size, tp.size), hidden_size))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 ``[N, vocab_size]`` on the driver; the other ranks get their own slice."""
        local = F.linear(hidden, self.weight).float()
        gathered = self.tp.gather_last_dim(local)
        return local if gathered is None else gathered[..., : self.vocab_size]
