"""Llama-style decoders: Llama 2/3.x, Mistral, Qwen2/2.5 and Qwen3, driven by their configs.

The families differ only in biases, per-head q/k norms, sliding windows and rope scaling; the
checkpoint's separate q/k/v and gate/up projections are stacked into one matrix each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from llmbatch.layers.activation import silu_and_mul
from llmbatch.layers.attention.base import AttentionBackend, AttentionMetadata
from llmbatch.layers.linear import Linear
from llmbatch.layers.norm import RMSNorm
from llmbatch.layers.parallel import (
    RowParallelLinear,
    VocabParallelEmbedding,
    VocabParallelLMHead,
    cdiv,
)
from llmbatch.layers.rotary import PositionRotation, RotaryEmbedding
from llmbatch.layers.tensor_parallel import TensorParallel, current_tensor_parallel
from llmbatch.models.base import CausalLM

# fused parameter -> the checkpoint projections stacked into it, in order
FUSED_PROJECTIONS = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
# split by their input features across tensor-parallel ranks (the others by output rows)
ROW_PARALLEL = ("o_proj", "down_proj")
VOCAB_PARALLEL = ("embed_tokens", "lm_head")


@dataclass(slots=True, frozen=True)
class WeightSlot:
    """Where one checkpoint tensor goes: rows from ``offset`` of ``param``, after taking this
    rank's slice along ``shard_dim`` (None: every rank holds all of it)."""

    param: nn.Parameter
    offset: int
    full_shape: tuple[int, ...]
    shard_dim: int | None


@dataclass(slots=True, frozen=True)
class LlamaVariant:
    """How one family departs from plain Llama."""

    qkv_bias: bool = False
    output_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def of(cls, architecture: str, config: PretrainedConfig) -> LlamaVariant:
        attention_bias = bool(getattr(config, "attention_bias", False))
        if architecture == "LlamaForCausalLM":
            return cls(attention_bias, attention_bias, bool(getattr(config, "mlp_bias", False)))
        if architecture == "MistralForCausalLM":
            return cls()
        if architecture == "Qwen2ForCausalLM":
            return cls(qkv_bias=True)
        if architecture == "Qwen3ForCausalLM":
            return cls(attention_bias, attention_bias, qk_norm=True)
        raise ValueError(f"{architecture} is not a Llama-style architecture")


def head_dim_of(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def sliding_windows_of(config: PretrainedConfig) -> list[int | None]:
    """Each layer's attention window (None: full attention)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return [window if kind == "sliding_attention" else None for kind in layer_types]
    return [window] * config.num_hidden_layers


class LlamaAttention(nn.Module):
    def __init__(
        self,
        config: PretrainedConfig,
        variant: LlamaVariant,
        backend: AttentionBackend,
        sliding_window: int | None,
        tp: TensorParallel,
    ) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads // tp.size
        self.num_kv_heads = config.num_key_value_heads // tp.size
        self.head_dim = head_dim_of(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.sliding_window = sliding_window
        self.backend = backend
        self.qkv_proj = Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=variant.qkv_bias
        )
        self.o_proj = RowParallelLinear(
            self.q_size * tp.size, config.hidden_size, variant.output_bias, tp
        )
        if variant.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.qk_norm = variant.qk_norm

    def forward(
        self,
        hidden: torch.Tensor,
        rotate: PositionRotation,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, k)
        out = self.backend.forward(q, k, v, kv_cache, meta, self.scale, self.sliding_window)
        return self.o_proj(out.reshape(num_tokens, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, config: PretrainedConfig, variant: LlamaVariant, tp: TensorParallel) -> None:
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported; only 'silu' is")
        tp.check_divides(config.intermediate_size, "intermediate_size")
        self.intermediate_size = config.intermediate_size // tp.size
        self.gate_up_proj = Linear(
            config.hidden_size, 2 * self.intermediate_size, bias=variant.mlp_bias
        )
        self.down_proj = RowParallelLinear(
            config.intermediate_size, config.hidden_size, variant.mlp_bias, tp
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        config: PretrainedConfig,
        variant: LlamaVariant,
        backend: AttentionBackend,
        sliding_window: int | None,
        tp: TensorParallel,
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, variant, backend, sliding_window, tp)
        self.mlp = LlamaMLP(config, variant, tp)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        rotate: PositionRotation,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns this layer's output and the residual stream it has not yet been added to."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.self_attn(hidden, rotate, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm.add_and_norm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(
        self,
        config: PretrainedConfig,
        variant: LlamaVariant,
        backend: AttentionBackend,
        tp: TensorParallel,
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, variant, backend, window, tp)
            for window in sliding_windows_of(config)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config, head_dim_of(config))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        if len(kv_caches) != len(self.layers):
            raise ValueError(f"got {len(kv_caches)} KV caches for {len(self.layers)} layers")
        hidden = self.embed_tokens(input_ids)
        rotate = self.rotary.at(positions, hidden.dtype)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden, residual = layer(hidden, residual, rotate, kv_cache, meta)
        return self.norm.add_and_norm(hidden, residual)[0]


class LlamaForCausalLM(CausalLM):
    """Any of the Llama-style architectures, as its config and architecture name describe it.

    Built inside ``sharded_over(tp)``, it holds rank ``tp.rank``'s shard: its query and KV heads,
    its share of the MLP and its slice of the vocabulary; ``num_heads`` and ``num_kv_heads`` count
    this rank's heads.
    """

    def __init__(
        self, config: PretrainedConfig, architecture: str, attention_backend: AttentionBackend
    ) -> None:
        super().__init__()
        tp = current_tensor_parallel()
        tp.check_divides(config.num_attention_heads, "num_attention_heads")
        tp.check_divides(config.num_key_value_heads, "num_key_value_heads")
        self.tensor_parallel = tp
        variant = LlamaVariant.of(architecture, config)
        self.model = LlamaModel(config, variant, attention_backend, tp)
        self.lm_head = VocabParallelLMHead(config.vocab_size, config.hidden_size, tp)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads // tp.size
        self.num_kv_heads = config.num_key_value_heads // tp.size
        self.head_dim = head_dim_of(config)
        self.hidden_size = config.hidden_size
        self.vocab_size = config.vocab_size
        self.intermediate_size = config.intermediate_size
        windows = [w for w in sliding_windows_of(config) if w is not None]
        self.sliding_window = max(windows) if windows else None
        self.max_positions = self.model.rotary.max_positions

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.logits(hidden)

    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: slot.full_shape for name, slot in self._checkpoint_layout().items()}

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        layout = self._checkpoint_layout()
        missing = set(layout)
        unexpected = []
        for name, tensor in weights:
            if name.endswith("rotary_emb.inv_freq"):
                continue  # derived from the config, never trained
            if name == "lm_head.weight" and self.tie_word_embeddings:
                continue  # the same matrix as the embedding
            if name not in layout:
                unexpected.append(name)
                continue
            slot = layout[name]
            if tuple(tensor.shape) != slot.full_shape:
                raise ValueError(
                    f"checkpoint weight {name} has shape {tuple(tensor.shape)}, "
                    f"but the config gives {slot.full_shape}"
                )
            if slot.shard_dim is not None:
                tensor = self._rank_slice(tensor, slot.shard_dim)
            slot.param.data.narrow(0, slot.offset, tensor.shape[0]).copy_(tensor)
            missing.discard(name)
        if unexpected:
            raise ValueError(
                f"checkpoint has weights this model does not use: {sorted(unexpected)}"
            )
        if missing:
            raise ValueError(f"checkpoint lacks weights the model needs: {sorted(missing)}")

    def _rank_slice(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        tp = self.tensor_parallel
        per_rank = cdiv(tensor.shape[dim], tp.size)
        start = min(tp.rank * per_rank, tensor.shape[dim])
        return tensor.narrow(dim, start, min(per_rank, tensor.shape[dim] - start))

    def _checkpoint_layout(self) -> dict[str, WeightSlot]:
        """Checkpoint name -> the slot it fills."""
        size = self.tensor_parallel.size
        attn = self.model.layers[0].self_attn
        part_rows = {
            "qkv_proj": (attn.q_size, attn.kv_size, attn.kv_size),
            "gate_up_proj": (self.model.layers[0].mlp.intermediate_size,) * 2,
        }
        layout = {}
        for name, param in self.named_parameters():
            module_path, _, leaf = name.rpartition(".")
            parent, _, module = module_path.rpartition(".")
            shape = tuple(param.shape)
            if module in FUSED_PROJECTIONS:
                offset = 0
                for part, rows in zip(FUSED_PROJECTIONS[module], part_rows[module]):
                    full = (rows * size, *shape[1:])
                    layout[f"{parent}.{part}.{leaf}"] = WeightSlot(param, offset, full, 0)
                    offset += rows
            elif module in VOCAB_PARALLEL:
                layout[name] = WeightSlot(param, 0, (self.vocab_size, *shape[1:]), 0)
            elif module in ROW_PARALLEL and leaf == "weight":
                layout[name] = WeightSlot(param, 0, (shape[0], shape[1] * size), 1)
            else:
                layout[name] = WeightSlot(param, 0, shape, None)
        return layout
