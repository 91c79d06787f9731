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
