"""Rotary position embedding (the "rotate half" layout of Llama-family checkpoints).

Frequencies come from transformers' own rope-init functions, so every scaling a config names
(linear, dynamic NTK, llama3, yarn) gives the same cos/sin as transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from llmbatch.layers.dispatch import triton_ops_for

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


def rope_parameters(config: PretrainedConfig) -> dict[str, Any]:
    """The rope settings of a config in transformers 5 form (``rope_type``, ``rope_theta``, ...).

    transformers 4 configs keep them in ``rope_theta`` and ``rope_scaling`` instead.
    """
    params = getattr(config, "rope_parameters", None)
    if params:
        params = dict(params)
    else:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return params


def rotary_table_length(config: PretrainedConfig) -> int:
    """Positions the cos/sin table covers: dynamic NTK scaling exists to run past the trained length."""
    params = rope_parameters(config)
    length = config.max_position_embeddings
    if params["rope_type"] == "dynamic":
        length = int(length * params["factor"])
    return length


def _inverse_frequencies(
    config: PretrainedConfig, head_dim: int, positions: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies per position, ``[P, head_dim // 2]``, and the attention scaling."""
    params = rope_parameters(config)
    rope_type = params["rope_type"]
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if rope_type == "default":
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        inv_freq = 1.0 / (params["rope_theta"] ** exponents)
        return inv_freq.expand(len(positions), -1), 1.0
    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](config, None)
    inv_freq = inv_freq.expand(len(positions), -1)
    if rope_type == "dynamic":
        # transformers recomputes the frequencies for the length a context has reached, so a token
        # past the trained length is rotated with the frequencies of a context ending at it.
        beyond = positions >= config.max_position_embeddings
        if beyond.any():
            seq_lens = (positions[beyond] + 1)[:, None]
            inv_freq = inv_freq.clone()
            inv_freq[beyond] = ROPE_INIT_FUNCTIONS["dynamic"](config, None, seq_len=seq_lens)[0]
    return inv_freq, attention_scaling


def table_lookup(
    cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``positions`` of the cos and sin tables, as ``[T, 1, head_dim // 2]`` in ``dtype``."""
    return cos[positions, None].to(dtype), sin[positions, None].to(dtype)


class RotaryEmbedding(nn.Module):
    """A float32 cos/sin table over every position the model can see."""

    def __init__(self, config: PretrainedConfig, head_dim: int) -> None:
        super().__init__()
        # Built on the CPU whatever device the model is constructed under; the model moves it.
        with torch.device("cpu"):
            positions = torch.arange(rotary_table_length(config), dtype=torch.int64)
            inv_freq, attention_scaling = _inverse_frequencies(config, head_dim, positions)
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
    """Rotates ``x`` ``[T, heads, head_dim]`` by the angles that ``cos``/``sin`` (from lookup) hold."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
