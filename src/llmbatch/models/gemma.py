"""Gemma 2 and Gemma 3 (text): the Llama-style attention and gated MLP with Gemma's departures.

- embeddings scaled by ``sqrt(hidden_size)`` (rounded to the model's dtype, as transformers does);
- RMSNorm scales stored as ``scale - 1`` in the checkpoint (the loader adds the 1 in float32) and
  applied in float32, and "sandwich" norms: each sub-layer's output is normalized too before it
  joins the residual stream;
- attention scaled by ``query_pre_attn_scalar ** -0.5``, layers alternating between a sliding
  window and full attention (``layer_types``), tanh-GELU in the MLP;
- Gemma 2: attention scores and final logits soft-capped;
- Gemma 3: per-head q/k norms, and a rotary table per kind of layer (a local base for the sliding
  layers, the global base with its scaling for the full ones).

``Gemma3ForConditionalGeneration`` checkpoints (Gemma 3 from 4B up) run as their text decoder:
the vision tower's weights are not loaded, and prompts are text.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from transformers import PretrainedConfig

from llmbatch.layers.attention.base import AttentionBackend, AttentionMetadata
from llmbatch.layers.norm import RMSNorm
from llmbatch.layers.parallel import VocabParallelEmbedding
from llmbatch.layers.rotary import PositionRotation, RotaryEmbedding
from llmbatch.layers.tensor_parallel import TensorParallel
from llmbatch.models.decoder import (
    DecoderAttention,
    DecoderForCausalLM,
    GatedMLP,
    check_num_caches,
    head_dim_of,
    sliding_windows_of,
)

# a multimodal Gemma 3 checkpoint's text decoder, under the names transformers 5 and 4 save
_TEXT_PREFIXES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)
_VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


def layer_types_of(config: PretrainedConfig) -> list[str]:
    return list(
        getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    )


def text_config_of(config: PretrainedConfig) -> PretrainedConfig:
    """A Gemma 3 multimodal config's text decoder, with the embedding tying that the outer
    config sets."""
    if not hasattr(config, "text_config"):
        return config
    text = copy.deepcopy(config.text_config)
    text.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
    return text


def rotary_tables(
    config: PretrainedConfig, head_dim: int, layer_types: list[str]
) -> dict[str, RotaryEmbedding]:
    """The rotary table of each kind of layer: Gemma 3 configs give each kind its own rope
    parameters (older ones: ``rope_local_base_freq`` for the sliding layers), Gemma 2 one for
    all."""
    kinds = list(dict.fromkeys(layer_types))
    params = getattr(config, "rope_parameters", None) or {}
    if all(isinstance(params.get(kind), dict) for kind in kinds):
        return {kind: RotaryEmbedding(config, head_dim, kind) for kind in kinds}
    shared = RotaryEmbedding(config, head_dim)
    tables = dict.fromkeys(kinds, shared)
    local_base = getattr(config, "rope_local_base_freq", None)
    if local_base is not None and "sliding_attention" in tables:
        local = copy.copy(config)
        local.rope_parameters = {"rope_type": "default", "rope_theta": local_base}
        tables["sliding_attention"] = RotaryEmbedding(local, head_dim)
    return tables


class GemmaDecoderLayer(nn.Module):
    def __init__(self, self_attn: DecoderAttention, mlp: GatedMLP, config: PretrainedConfig):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        size, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = RMSNorm(size, eps, float32_weight=True)
        self.post_attention_layernorm = RMSNorm(size, eps, float32_weight=True)
        self.pre_feedforward_layernorm = RMSNorm(size, eps, float32_weight=True)
        self.post_feedforward_layernorm = RMSNorm(size, eps, float32_weight=True)

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
        hidden = self.post_attention_layernorm(self.self_attn(hidden, rotate, kv_cache, meta))
        hidden, residual = self.pre_feedforward_layernorm.add_and_norm(hidden, residual)
        return self.post_feedforward_layernorm(self.mlp(hidden)), residual


class GemmaModel(nn.Module):
    def __init__(
        self, config: PretrainedConfig, backend: AttentionBackend, tp: TensorParallel
    ) -> None:
        super().__init__()
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError(
                "Gemma configs with use_bidirectional_attention (embedding models) are not "
                "supported: llmbatch runs causal language models"
            )
        head_dim = head_dim_of(config)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp)
        self.embed_scale = config.hidden_size**0.5
        softcap = getattr(config, "attn_logit_softcapping", None)
        activation = getattr(config, "hidden_activation", None) or config.hidden_act
        qk_norm = config.model_type.startswith("gemma3")
        self.layer_types = layer_types_of(config)
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(
                DecoderAttention(
                    config,
                    backend,
                    window,
                    tp,
                    qkv_bias=config.attention_bias,
                    output_bias=config.attention_bias,
                    qk_norm=qk_norm,
                    float32_norms=True,
                    scale=config.query_pre_attn_scalar**-0.5,
                    softcap=softcap,
                ),
                GatedMLP(config.hidden_size, config.intermediate_size, tp, activation=activation),
                config,
            )
            for window in sliding_windows_of(config)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, float32_weight=True)
        self.rotary = nn.ModuleDict(rotary_tables(config, head_dim, self.layer_types))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        check_num_caches(kv_caches, self.layers)
        hidden = self.embed_tokens(input_ids)
        hidden = hidden * torch.tensor(self.embed_scale, dtype=hidden.dtype)
        rotations = {kind: table.at(positions, hidden.dtype) for kind, table in self.rotary.items()}
        residual = None
        for layer, kind, kv_cache in zip(self.layers, self.layer_types, kv_caches):
            hidden, residual = layer(hidden, residual, rotations[kind], kv_cache, meta)
        return self.norm.add_and_norm(hidden, residual)[0]


class GemmaForCausalLM(DecoderForCausalLM):
    """Gemma 2, Gemma 3 (text), or the text decoder of a multimodal Gemma 3 checkpoint."""

    def __init__(
        self, config: PretrainedConfig, architecture: str, attention_backend: AttentionBackend
    ) -> None:
        text = text_config_of(config)
        super().__init__(text, lambda tp: GemmaModel(text, attention_backend, tp))
        self.final_softcap = getattr(text, "final_logit_softcapping", None)

    def checkpoint_tensors(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """The text decoder's tensors under plain names, norm scales as ``1 + stored`` in
        float32."""

        def text_tensors() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.startswith(_VISION_PREFIXES):
                    continue
                for saved, plain in _TEXT_PREFIXES:
                    if name.startswith(saved):
                        name = plain + name[len(saved) :]
                if name.endswith("norm.weight"):
                    tensor = tensor.float() + 1.0
                yield name, tensor

        return super().checkpoint_tensors(text_tensors())
