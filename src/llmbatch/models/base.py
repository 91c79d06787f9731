"""What the engine needs from a model family."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from llmbatch.layers.attention.base import AttentionMetadata
from llmbatch.layers.tensor_parallel import SINGLE, TensorParallel
from llmbatch.models.pooling import PoolerConfig


class CausalLM(nn.Module, ABC):
    """A decoder-only language model over a flat batch of tokens and a paged KV cache."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    sliding_window: int | None
    """The attention window of the layers that slide, or None when every layer sees all tokens."""
    max_positions: int
    """Positions the model can encode (the length of its rotary table)."""
    tensor_parallel: TensorParallel = SINGLE
    """The shard of the model this instance holds."""
    pooler: PoolerConfig | None = None
    """Set on a pooling model (see `llmbatch.models.pooling`): it has no LM head, and a
    classifier has a ``score`` head over the pooled hidden state."""
    lora: Any = None
    """The model's LoRA layers (`llmbatch.models.lora_adapter.LoRALayers`) once
    ``add_lora_layers`` wrapped its projections."""
    uses_mrope: bool = False
    """Whether positions are M-RoPE's three rows ``[3, T]`` (temporal, height, width), as
    ``mrope_positions`` gives them, rather than ``[T]``."""

    @abstractmethod
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """input_ids/positions int64 ``[T]`` -> final hidden states ``[T, hidden_size]``.

        ``kv_caches[i]`` is layer ``i``'s ``[2, num_blocks, block_size, num_kv_heads, head_dim]``.
        Models with ``uses_mrope`` take positions ``[3, T]``, and models that read images take an
        optional ``inputs_embeds: Tensor | None = None`` (``[T, hidden_size]``) that replaces the
        embedding of ``input_ids``; text models keep this signature.
        """

    @abstractmethod
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, hidden_size]`` -> float32 ``[N, vocab_size]`` (on tensor-parallel ranks other
        than the driver, only their slice of the vocabulary)."""

    @abstractmethod
    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        """Checkpoint weight name -> its full (unsharded) shape: what ``load_weights`` takes."""

    @abstractmethod
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads weights named as in the Hugging Face checkpoint; raises if any is missing."""
