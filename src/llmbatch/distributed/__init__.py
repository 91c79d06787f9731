"""Tensor parallelism: one model sharded over the ranks of a torch.distributed group."""

from llmbatch.distributed.group import SINGLE, TensorParallel, current_tensor_parallel, sharded_over

__all__ = ["SINGLE", "TensorParallel", "current_tensor_parallel", "sharded_over"]
