"""Model families, and loading them from folders, GGUF files or the Hugging Face Hub."""

from llmbatch.models.base import CausalLM
from llmbatch.models.loader import LoadedModel, load_model
from llmbatch.models.registry import SUPPORTED_ARCHITECTURES

__all__ = ["SUPPORTED_ARCHITECTURES", "CausalLM", "LoadedModel", "load_model"]
