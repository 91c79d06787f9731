"""Linear and embedding layers that skip random initialization.

Every parameter is filled afterwards, from a checkpoint or by the dummy-weight initializer, so
drawing initial values would only cost time (minutes for an 8B model on a CPU).
"""

from __future__ import annotations

from torch import nn


class Linear(nn.Linear):
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
