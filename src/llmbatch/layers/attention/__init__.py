"""Attention backends by name; each implements :class:`AttentionBackend` over the paged KV cache."""

from __future__ import annotations

from importlib import import_module

from llmbatch.layers.attention.base import AttentionBackend, AttentionMetadata

# name -> "module:class", imported on first use so a backend's dependencies load only when chosen.
ATTENTION_BACKENDS: dict[str, str] = {
    "torch": "llmbatch.layers.attention.torch_backend:TorchAttentionBackend",
    "triton": "llmbatch.layers.attention.triton_backend:TritonAttentionBackend",
}


def get_attention_backend(name: str) -> AttentionBackend:
    """A new instance of the backend registered as ``name``."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r}; available: {', '.join(sorted(ATTENTION_BACKENDS))}"
        )
    module_name, class_name = ATTENTION_BACKENDS[name].split(":")
    return getattr(import_module(module_name), class_name)()


__all__ = ["ATTENTION_BACKENDS", "AttentionBackend", "AttentionMetadata", "get_attention_backend"]
