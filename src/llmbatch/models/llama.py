"""Llama-style decoders: Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3 and Phi-3/3.5/4, driven by their
configs.

The families differ only in biases, per-head q/k norms, sliding windows, rope scaling (Phi-3's
LongRoPE and partial rotary included) and how the checkpoint stores the projections that ours
fuses: separately for most, already fused (``qkv_proj``, ``gate_up_proj``) for Phi-3.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig

from llmbatch.layers.attention.base import AttentionBackend
from llmbatch.layers.tensor_parallel import TensorParallel
from llmbatch.models.decoder import (
    SEPARATE_PROJECTIONS,
    DecoderAttention,
    DecoderForCausalLM,
    DecoderLayer,
    DecoderModel,
    GatedMLP,
    sliding_windows_of,
)


@dataclass(slots=True, frozen=True)
class LlamaVariant:
    """How one family departs from plain Llama."""

    qkv_bias: bool = False
    output_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    fused_checkpoint: bool = False
    """The checkpoint stores qkv_proj and gate_up_proj fused (Phi-3)."""

    @classmethod
    def of(cls, architecture: str, config: PretrainedConfig) -> LlamaVariant:
        attention_bias = bool(getattr(config, "attention_bias", False))
        if architecture == "LlamaForCausalLM":
            return cls(attention_bias, attention_bias, bool(getattr(config, "mlp_bias", False)))
        if architecture in ("MistralForCausalLM", "MixtralForCausalLM"):
            return cls()
        if architecture == "Qwen2ForCausalLM":
            return cls(qkv_bias=True)
        if architecture == "Qwen2MoeForCausalLM":
            return cls(qkv_bias=bool(getattr(config, "qkv_bias", True)))
        if architecture in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"):
            return cls(attention_bias, attention_bias, qk_norm=True)
        if architecture == "Phi3ForCausalLM":
            return cls(fused_checkpoint=True)
        raise ValueError(f"{architecture} is not a Llama-style architecture")


def llama_attention(
    config: PretrainedConfig,
    variant: LlamaVariant,
    backend: AttentionBackend,
    sliding_window: int | None,
    tp: TensorParallel,
) -> DecoderAttention:
    return DecoderAttention(
        config,
        backend,
        sliding_window,
        tp,
        qkv_bias=variant.qkv_bias,
        output_bias=variant.output_bias,
        qk_norm=variant.qk_norm,
    )


class LlamaForCausalLM(DecoderForCausalLM):
    """Any of the Llama-style architectures, as its config and architecture name describe it.

    Subclasses with another feed-forward per layer (mixtures of experts) override ``build_mlp``.
    """

    def __init__(
        self, config: PretrainedConfig, architecture: str, attention_backend: AttentionBackend
    ) -> None:
        variant = LlamaVariant.of(architecture, config)
        if variant.fused_checkpoint:
            self.split_projections = {}
        else:
            self.split_projections = SEPARATE_PROJECTIONS

        def build(tp: TensorParallel) -> nn.Module:
            layers = (
                DecoderLayer(
                    llama_attention(config, variant, attention_backend, window, tp),
                    self.build_mlp(config, variant, index, tp),
                    config,
                )
                for index, window in enumerate(sliding_windows_of(config))
            )
            return DecoderModel(config, layers, tp)

        super().__init__(config, build)

    def build_mlp(
        self, config: PretrainedConfig, variant: LlamaVariant, layer_index: int, tp: TensorParallel
    ) -> nn.Module:
        return GatedMLP(
            config.hidden_size, config.intermediate_size, tp, variant.mlp_bias, config.hidden_act
        )
