"""The contract between the engine and attention kernels.

A step runs a flat ("varlen") batch: the new tokens of every scheduled sequence laid end to end.
Sequence ``i`` owns query rows ``query_start_loc[i]:query_start_loc[i+1]``; those are the *last*
``query_len`` positions of its ``seq_len`` tokens, so the earlier ``seq_len - query_len`` tokens
(prefix-cache hits, earlier chunks, earlier decode steps) are read from the paged cache.

KV cache of one layer: a tensor ``[2, num_blocks, block_size, num_kv_heads, head_dim]``;
index 0 holds keys, 1 values. Token ``t`` of a sequence lives in block
``block_tables[i, t // block_size]`` at offset ``t % block_size``; ``slot_mapping`` gives the flat
slot (``block * block_size + offset``) where each new token's K/V is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

# kv_cache_dtype names -> the dtype the cache is stored in ("auto", not listed, stores the
# model's). fp8 has no scales: values saturate at the format's largest finite number (448 for
# e4m3, 57344 for e5m2).
KV_CACHE_DTYPES = {
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


@dataclass
class AttentionMetadata:
    num_seqs: int
    num_tokens: int
    query_start_loc: torch.Tensor  # int32 [num_seqs + 1], on the model's device
    seq_lens: torch.Tensor  # int32 [num_seqs]: tokens in the cache once this step's are written
    block_tables: torch.Tensor  # int32 [num_seqs, max_blocks_per_seq], padded with 0
    slot_mapping: torch.Tensor  # int64 [num_tokens]; -1 means "do not write" (padding)
    max_query_len: int
    max_seq_len: int
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


class AttentionBackend(Protocol):
    """Writes this step's K/V into the paged cache, then attends over the whole context."""

    name: str

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        meta: AttentionMetadata,
        scale: float,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        """``sliding_window``: a query at position p sees keys after ``p - sliding_window``.
        ``softcap``: scores ``s = scale * q.k`` become ``softcap * tanh(s / softcap)`` before the
        softmax (Gemma 2's logit soft-capping)."""
