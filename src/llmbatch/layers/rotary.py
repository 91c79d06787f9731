"""Rotary position embedding (the "rotate half" layout of Llama-family checkpoints).

Frequencies come from transformers' own rope-init functions, so every scaling a config names
(linear, dynamic NTK, llama3, yarn, LongRoPE) gives the same cos/sin as transformers. A config may
rotate only the first part of each head (``partial_rotary_factor``) and may give each kind of
layer its own rope parameters (Gemma 3: ``rope_parameters[layer_type]``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from llmbatch.layers.dispatch import triton_ops_for

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")


def rope_parameters(config: PretrainedConfig, layer_type: str | None = None) -> dict[str, Any]:
    """The rope settings of a config in transformers 5 form (``rope_type``, ``rope_theta``, ...),
    those of ``layer_type``'s layers where the config sets them per kind of layer.

    transformers 4 configs keep them in ``rope_theta`` and ``rope_scaling`` instead.
    """
    params = getattr(config, "rope_parameters", None)
    if params and layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    if params:
        params = dict(params)
    else:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return params


def rotary_table_length(config: PretrainedConfig, layer_type: str | None = None) -> int:
    """Positions the cos/sin table covers: dynamic NTK scaling exists to run past the trained length."""
    params = rope_parameters(config, layer_type)
    length = config.max_position_embeddings
    if params["rope_type"] == "dynamic":
        length = int(length * params["factor"])
    return length


def rotary_dim_of(config: PretrainedConfig, head_dim: int) -> int:
    """How many leading dimensions of each head are rotated (all unless the config rotates only
    a ``partial_rotary_factor`` of them, as Phi-4-mini does)."""
    factor = rope_parameters(config).get("partial_rotary_factor")
    if factor is None:
        factor = getattr(config, "partial_rotary_factor", None) or 1.0
    return int(head_dim * factor)


def _init_function_args(layer_type: str | None) -> dict[str, Any]:
    return {} if layer_type is None else {"layer_type": layer_type}


def _inverse_frequencies(
    config: PretrainedConfig, head_dim: int, positions: torch.Tensor, layer_type: str | None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies per position, ``[P, rotary_dim // 2]``, and the attention scaling."""
    params = rope_parameters(config, layer_type)
    rope_type = params["rope_type"]
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if rope_type == "default":
        dim = rotary_dim_of(config, head_dim)
        exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        inv_freq = 1.0 / (params["rope_theta"] ** exponents)
        return inv_freq.expand(len(positions), -1), 1.0
    init = ROPE_INIT_FUNCTIONS[rope_type]
    extra = _init_function_args(layer_type)
    inv_freq, attention_scaling = init(config, None, **extra)
    inv_freq = inv_freq.expand(len(positions), -1)
    if rope_type == "longrope":
        # LongRoPE has short factors for contexts within the original length and long ones
        # beyond it. A position is rotated with the factors of a context that ends at it, so a
        # token's cached keys never depend on the tokens after it (prefix caching, chunking and
        # preemption stay exact); transformers agrees while a sequence fits the original length.
        original = (
            params.get("original_max_position_embeddings")
            or config.original_max_position_embeddings
        )
        long_inv_freq = init(config, None, seq_len=original + 1, **extra)[0]
        inv_freq = torch.where((positions >= original)[:, None], long_inv_freq, inv_freq)
    if rope_type == "dynamic":
        # transformers recomputes the frequencies for the length a context has reached, so a token
        # past the trained length is rotated with the frequencies of a context ending at it.
        beyond = positions >= config.max_position_embeddings
        if beyond.any():
            seq_lens = (positions[beyond] + 1)[:, None]
            inv_freq = inv_freq.clone()
            inv_freq[beyond] = init(config, None, seq_len=seq_lens, **extra)[0]
    return inv_freq, attention_scaling


def table_lookup(
    cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``positions`` of the cos and sin tables, as ``[T, 1, head_dim // 2]`` in ``dtype``."""
    return cos[positions, None].to(dtype), sin[positions, None].to(dtype)


class RotaryEmbedding(nn.Module):
    """A float32 cos/sin table over every position the model can see (``layer_type``: the rope
    parameters of that kind of layer, where the config sets them per kind)."""

    def __init__(
        self, config: PretrainedConfig, head_dim: int, layer_type: str | None = None
    ) -> None:
        super().__init__()
        # Built on the CPU whatever device the model is constructed under; the model moves it.
        with torch.device("cpu"):
            positions = torch.arange(rotary_table_length(config, layer_type), dtype=torch.int64)
            inv_freq, attention_scaling = _inverse_frequencies(
                config, head_dim, positions, layer_type
            )
            angles = positions.float()[:, None] * inv_freq
        self.register_buffer("cos", (angles.cos() * attention_scaling).float(), persistent=False)
        self.register_buffer("sin", (angles.sin() * attention_scaling).float(), persistent=False)

    @property
    def max_positions(self) -> int:
        return self.cos.shape[0]

    def lookup(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for ``positions`` (int64 [T]), as ``[T, 1, head_dim // 2]`` in ``dtype``."""
        return table_lookup(self.cos, self.sin, positions, dtype)

    def at(self, positions: torch.Tensor, dtype: torch.dtype) -> PositionRotation:
        """The rotation of one step's tokens, shared by every layer of the step."""
        return PositionRotation(self.cos, self.sin, positions, dtype)


class PositionRotation:
    """Rotates q and k by their tokens' positions: the Triton kernel in place on CUDA, else PyTorch.

    ``cos``/``sin`` are float32 ``[P, head_dim // 2]`` tables that ``positions`` (int64 [T]) index.
    """

    def __init__(
        self, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
    ) -> None:
        self.ops = triton_ops_for(positions)
        self.positions = positions
        if self.ops is None:
            self.cos, self.sin = table_lookup(cos, sin, positions, dtype)
        else:
            self.tables = (cos, sin)

    def __call__(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q ``[T, heads, head_dim]``, k ``[T, kv_heads, head_dim]``; may rotate them in place."""
        if self.ops is not None:
            self.ops.apply_rotary(q, k, *self.tables, self.positions)
            return q, k
        return apply_rotary(q, self.cos, self.sin), apply_rotary(k, self.cos, self.sin)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates ``x`` ``[T, heads, head_dim]`` by the angles that ``cos``/``sin`` (from lookup)
    hold: its first ``2 * cos.shape[-1]`` dimensions, leaving the rest."""
    half = cos.shape[-1]
    if 2 * half == x.shape[-1]:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x1, x2, rest = x.split([half, half, x.shape[-1] - 2 * half], dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1)
