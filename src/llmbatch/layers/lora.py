"""LoRA on a batch of tokens of different adapters: ``y = W x + B_i (A_i x)`` where ``i`` is the
adapter of x's sequence, for every adapter of a step in one pass.

Each wrapped projection holds the device slots' weights stacked, ``a`` ``[L, R, in]`` and ``b``
(B transposed, its scaling folded in) ``[L, R, out]``, zero where a slot or an adapter leaves
them empty, so one code path serves every adapter rank up to R and every subset of targeted
projections. A projection that stacks several (q, k and v; gate and up) holds each part's A in
its own block of R rows and each part's B in that block's rows and the part's columns.

On CUDA two Triton kernels run the products over the step's tokens grouped by slot (the
grouping is planned once per step on the host, `LoRABatch.set_step`); elsewhere two dense
matmuls over every slot, masked per token. Both run whatever the adapters' mix, with no loop
over adapters, and read only buffers that keep their address, so steps replay in CUDA graphs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

# tokens per row block of the kernels' plan: a block belongs to one slot
BLOCK_M = 32


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def plan_blocks(
    slots: np.ndarray, num_slots: int, block_m: int, num_blocks: int, sentinel: int
) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of each slot (``slots[t]``; -1: no adapter) in runs of whole blocks of
    ``block_m``: token ids (``sentinel`` where a block is not full) and each block's slot (-1
    past the last), padded to ``num_blocks`` blocks."""
    tokens = np.flatnonzero(slots >= 0)
    owner = slots[tokens]
    order = np.argsort(owner, kind="stable")
    tokens, owner = tokens[order], owner[order]
    counts = np.bincount(owner, minlength=num_slots)
    blocks = -(-counts // block_m)
    first_block = np.cumsum(blocks) - blocks
    rank = np.arange(tokens.size) - (np.cumsum(counts) - counts)[owner]
    token_ids = np.full(num_blocks * block_m, sentinel, dtype=np.int32)
    token_ids[first_block[owner] * block_m + rank] = tokens
    block_slot = np.full(num_blocks, -1, dtype=np.int32)
    used = np.repeat(np.arange(num_slots, dtype=np.int32), blocks)
    block_slot[: used.size] = used
    return token_ids, block_slot


class LoRABatch:
    """Which slot each token of the current step reads (shared by every LoRA layer), in
    buffers of fixed address: ``token_slots`` (the masked path) and, on CUDA, the kernels'
    plan ``token_ids`` / ``block_slot``."""

    def __init__(self, max_tokens: int, num_slots: int, device: torch.device) -> None:
        self.max_tokens = max_tokens
        self.num_slots = num_slots
        self.num_blocks = cdiv(max_tokens, BLOCK_M) + num_slots
        self.use_kernels = device.type == "cuda"
        self.token_slots = torch.full((max_tokens,), -1, dtype=torch.int64, device=device)
        self.token_ids = torch.full(
            (self.num_blocks * BLOCK_M,), max_tokens, dtype=torch.int32, device=device
        )
        self.block_slot = torch.full((self.num_blocks,), -1, dtype=torch.int32, device=device)
        self.active = False
        """Whether any token of the step has an adapter (eager steps skip LoRA otherwise)."""

    def set_step(
        self, slots: np.ndarray, to_device: Callable[[np.ndarray], torch.Tensor] | None = None
    ) -> None:
        """The slots of the step's tokens, in order (-1: no adapter). ``to_device`` copies a
        host array to the device (default: a plain copy)."""
        if slots.size > self.max_tokens:
            raise ValueError(f"a step of {slots.size} tokens exceeds {self.max_tokens}")
        self.active = bool((slots >= 0).any())
        upload = to_device or (lambda values: torch.from_numpy(values).to(self.token_ids.device))
        if not self.use_kernels:
            padded = np.full(self.max_tokens, -1, dtype=np.int64)
            padded[: slots.size] = slots
            self.token_slots.copy_(upload(padded))
            return
        token_ids, block_slot = plan_blocks(
            slots, self.num_slots, BLOCK_M, self.num_blocks, self.max_tokens
        )
        plan = upload(np.concatenate([token_ids, block_slot]).astype(np.int32))
        self.token_ids.copy_(plan[: token_ids.size], non_blocking=True)
        self.block_slot.copy_(plan[token_ids.size :], non_blocking=True)


class LoRALinear(nn.Module):
    """A projection with the LoRA deltas of the step's adapters added to its output."""

    def __init__(
        self,
        base: nn.Module,
        in_features: int,
        out_features: int,
        rank_width: int,
        batch: LoRABatch,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.base = base
        self.batch = batch
        slots = batch.num_slots
        self.register_buffer(
            "a", torch.zeros(slots, rank_width, in_features, dtype=dtype, device=device), False
        )
        self.register_buffer(
            "b", torch.zeros(slots, rank_width, out_features, dtype=dtype, device=device), False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        batch = self.batch
        # a captured graph must hold the LoRA kernels whatever the capturing step's adapters
        if not batch.active and not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            return out
        if batch.use_kernels:
            from llmbatch.layers.triton.lora import add_lora_

            add_lora_(out, x, self.a, self.b, batch.token_ids, batch.block_slot, BLOCK_M)
            return out
        return out + lora_delta(x, self.a, self.b, batch.token_slots[: x.shape[0]])


def lora_delta(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, token_slots: torch.Tensor
) -> torch.Tensor:
    """``B_i A_i x`` per token (slot ``token_slots[t]``; -1 adds nothing), as two dense
    products over all slots with the other slots' terms masked out: ``x`` ``[T, in]``,
    ``a`` ``[L, R, in]``, ``b`` ``[L, R, out]``."""
    num_slots, rank, _ = a.shape
    shrunk = x @ a.reshape(num_slots * rank, -1).T
    mask = token_slots.unsqueeze(1) == torch.arange(num_slots, device=x.device)
    shrunk = shrunk.view(-1, num_slots, rank) * mask.unsqueeze(-1).to(shrunk.dtype)
    return shrunk.view(-1, num_slots * rank) @ b.reshape(num_slots * rank, -1)


def lora_reference(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, token_slots: torch.Tensor
) -> torch.Tensor:
    """The per-token definition in float32, one token at a time: what the batched paths must
    equal."""
    out = torch.zeros(x.shape[0], b.shape[-1], dtype=torch.float32, device=x.device)
    for t, slot in enumerate(token_slots.tolist()):
        if slot >= 0:
            out[t] = (x[t].float() @ a[slot].float().T) @ b[slot].float()
    return out
