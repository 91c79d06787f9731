"""Linear and embedding layers that skip random initialization.

Every parameter is filled afterwards, from a checkpoint or by the dummy-weight initializer, so
drawing initial values would only cost time (minutes for an 8B model on a CPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_deferring = False


@contextmanager
def weights_deferred() -> Iterator[None]:
    """Linear layers and expert stacks built inside hold their weights on the meta device, so a
    model about to be quantized never allocates its full-precision weights (see
    layers/quantization)."""
    global _deferring
    previous, _deferring = _deferring, True
    try:
        yield
    finally:
        _deferring = previous


def weight_device() -> torch.device | None:
    """Where a new linear weight goes: the meta device inside ``weights_deferred``, else the
    default device."""
    return torch.device("meta") if _deferring else None


class Linear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias, device=weight_device())

    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass


class MergedLinear(Linear):
    """Several projections of the same input in one matrix (q, k and v; gate and up), their
    output rows stacked in order. Under tensor parallelism it is column-parallel: each part holds
    this rank's share of its rows, ``part_sizes`` of them."""

    def __init__(self, in_features: int, part_sizes: tuple[int, ...], bias: bool = False) -> None:
        super().__init__(in_features, sum(part_sizes), bias=bias)
        self.part_sizes = part_sizes
