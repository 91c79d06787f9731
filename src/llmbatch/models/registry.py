"""Which checkpoint architectures llmbatch runs, and the model class of each."""

from __future__ import annotations

from transformers import PretrainedConfig

from llmbatch.layers.attention.base import AttentionBackend
from llmbatch.layers.rotary import rotary_table_length
from llmbatch.models.base import CausalLM
from llmbatch.models.llama import LlamaForCausalLM
from llmbatch.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VLForConditionalGeneration,
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(MODEL_CLASSES)
# for configs that name no architecture
_ARCHITECTURE_OF_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}


def architecture_of(config: PretrainedConfig) -> str:
    """The supported architecture a config names; a clear error when it names none."""
    named = list(getattr(config, "architectures", None) or [])
    if not named and config.model_type in _ARCHITECTURE_OF_MODEL_TYPE:
        return _ARCHITECTURE_OF_MODEL_TYPE[config.model_type]
    for architecture in named:
        if architecture in MODEL_CLASSES:
            return architecture
    raise ValueError(
        f"model architecture {named or config.model_type!r} is not supported; "
        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def build_model(config: PretrainedConfig, attention_backend: AttentionBackend) -> CausalLM:
    architecture = architecture_of(config)
    return MODEL_CLASSES[architecture](config, architecture, attention_backend)


def max_positions_of(config: PretrainedConfig) -> int:
    """Positions a model of this config encodes (its rotary table's length), known before the
    model is built."""
    architecture_of(config)
    return rotary_table_length(config.get_text_config())
