"""Which checkpoint architectures llmbatch runs with its own code, and the model class of each."""

from __future__ import annotations

from transformers import PretrainedConfig

from llmbatch.layers.attention.base import AttentionBackend
from llmbatch.layers.rotary import rotary_table_length
from llmbatch.models.base import CausalLM
from llmbatch.models.gemma import GemmaForCausalLM
from llmbatch.models.llama import LlamaForCausalLM
from llmbatch.models.moe import MoEForCausalLM
from llmbatch.models.pooling import PoolerConfig
from llmbatch.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from llmbatch.models.transformers_fallback import check_transformers_support
from llmbatch.models.transformers_fallback import max_positions_of as fallback_max_positions

MODEL_CLASSES: dict[str, type[CausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "Phi3ForCausalLM": LlamaForCausalLM,
    "MixtralForCausalLM": MoEForCausalLM,
    "Qwen2MoeForCausalLM": MoEForCausalLM,
    "Qwen3MoeForCausalLM": MoEForCausalLM,
    "Gemma2ForCausalLM": GemmaForCausalLM,
    "Gemma3ForCausalLM": GemmaForCausalLM,
    "Gemma3ForConditionalGeneration": GemmaForCausalLM,
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VLForConditionalGeneration,
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(MODEL_CLASSES)
# vLLM's names: our own code, the model's transformers code, or ours where it exists
MODEL_IMPLS = ("auto", "llmbatch", "transformers")
# for configs that name no architecture
_ARCHITECTURE_OF_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}


# a classifier or base model of a family: its decoder is the causal LM's
_POOLING_SUFFIXES = ("ForSequenceClassification", "Model")


def _own_name(architecture: str) -> str | None:
    if architecture in MODEL_CLASSES:
        return architecture
    for suffix in _POOLING_SUFFIXES:
        if architecture.endswith(suffix):
            causal = architecture[: -len(suffix)] + "ForCausalLM"
            if causal in MODEL_CLASSES:
                return causal
    return None


def own_architecture_of(config: PretrainedConfig) -> str | None:
    """The architecture llmbatch's own code runs for this config (a family's classifier or base
    model runs as its causal LM's decoder), or None."""
    named = list(getattr(config, "architectures", None) or [])
    if not named:
        return _ARCHITECTURE_OF_MODEL_TYPE.get(config.model_type)
    return next((own for own in map(_own_name, named) if own is not None), None)


def architecture_of(config: PretrainedConfig) -> str:
    """The supported architecture a config names; a clear error when it names none."""
    architecture = own_architecture_of(config)
    if architecture is None:
        named = getattr(config, "architectures", None) or config.model_type
        raise ValueError(
            f"model architecture {named!r} has no llmbatch implementation (own code: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}); model_impl='transformers' (or 'auto') runs "
            "it with its transformers code"
        )
    return architecture


def resolve_model_impl(
    config: PretrainedConfig, model_impl: str, trust_remote_code: bool = False
) -> str:
    """ "llmbatch" or "transformers": which code runs this config under ``model_impl``; a clear
    error when that code cannot run it."""
    if model_impl not in MODEL_IMPLS:
        raise ValueError(
            f"model_impl={model_impl!r} is not supported; accepted: {', '.join(MODEL_IMPLS)}"
        )
    if model_impl == "llmbatch" or (model_impl == "auto" and own_architecture_of(config)):
        architecture_of(config)
        return "llmbatch"
    check_transformers_support(config, trust_remote_code)
    return "transformers"


def build_model(
    config: PretrainedConfig,
    attention_backend: AttentionBackend,
    pooler: PoolerConfig | None = None,
) -> CausalLM:
    """The model of ``config``'s architecture; with ``pooler``, as a pooling model."""
    architecture = architecture_of(config)
    model = MODEL_CLASSES[architecture](config, architecture, attention_backend)
    if pooler is not None:
        model.as_pooling_model(pooler)
    return model


def max_positions_of(config: PretrainedConfig, model_impl: str = "llmbatch") -> int:
    """Positions a model of this config encodes (its rotary table's length under our own code),
    known before the model is built."""
    if model_impl == "transformers":
        return fallback_max_positions(config)
    architecture_of(config)
    return rotary_table_length(config.get_text_config())
