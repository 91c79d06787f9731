"""A rank's place in its tensor-parallel group, and the collectives the sharded layers need."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(slots=True, frozen=True)
class TensorParallel:
    """Rank ``rank`` of ``size``; ``group`` is None for an unsharded model."""

    rank: int = 0
    size: int = 1
    group: dist.ProcessGroup | None = None

    @property
    def is_driver(self) -> bool:
        return self.rank == 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sums ``x`` over the ranks, in place."""
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def gather_last_dim(self, x: torch.Tensor) -> torch.Tensor | None:
        """Every rank's ``x`` concatenated along the last dimension, on the driver (None elsewhere)."""
        if self.size == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.is_driver else None
        dist.gather(x, parts, dst=0, group=self.group)
        return torch.cat(parts, dim=-1) if parts is not None else None

    def min_over_ranks(self, value: int, device: torch.device) -> int:
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self.group)
        return int(tensor.item())

    def check_divides(self, count: int, what: str) -> None:
        if count % self.size:
            raise ValueError(
                f"tensor_parallel_size={self.size} must divide the model's {what} ({count}); "
                "choose a tensor_parallel_size that divides it"
            )


SINGLE = TensorParallel()
_building = SINGLE


def current_tensor_parallel() -> TensorParallel:
    """The shard that models built now belong to (SINGLE outside ``sharded_over``)."""
    return _building


@contextmanager
def sharded_over(tp: TensorParallel) -> Iterator[None]:
    """Models built (and loaded) inside this block hold only rank ``tp.rank``'s shard."""
    global _building
    previous, _building = _building, tp
    try:
        yield
    finally:
        _building = previous
