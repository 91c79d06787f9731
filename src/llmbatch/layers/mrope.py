"""Multimodal rotary position embedding (M-RoPE) of Qwen2-VL and Qwen2.5-VL.

Each token has three positions: temporal, height and width. The rotary frequencies are cut into
three consecutive sections (``mrope_section``, counted in frequencies); section ``i`` rotates by
position row ``i``. Text tokens have the same position in all three rows, which makes M-RoPE equal
to plain RoPE on them.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from llmbatch.layers.rotary import PositionRotation, RotaryEmbedding, rope_parameters


def mrope_section_of(config: PretrainedConfig, head_dim: int) -> tuple[int, int, int]:
    """The config's ``mrope_section``, checked to cover the ``head_dim // 2`` frequencies."""
    section = rope_parameters(config).get("mrope_section")
    if section is None or len(section) != 3 or sum(section) != head_dim // 2:
        raise ValueError(
            f"rope parameters need an mrope_section of three sizes summing to head_dim // 2 = "
            f"{head_dim // 2} (temporal, height, width); got {section!r}"
        )
    return tuple(int(size) for size in section)


class MRotaryEmbedding(RotaryEmbedding):
    """The rotary table of the text decoder, looked up with three position rows."""

    def __init__(self, config: PretrainedConfig, head_dim: int) -> None:
        super().__init__(config, head_dim)
        section = mrope_section_of(config, head_dim)
        rows = [row for row, size in enumerate(section) for _ in range(size)]
        self.register_buffer("section_rows", torch.tensor(rows, device="cpu"), persistent=False)

    def mixed_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos and sin ``[T, head_dim // 2]`` of positions ``[3, T]``: frequency ``f``
        takes the angle of position row ``section_rows[f]``."""
        index = positions[self.section_rows].T.contiguous()
        return self.cos.gather(0, index), self.sin.gather(0, index)

    def at(self, positions: torch.Tensor, dtype: torch.dtype) -> PositionRotation:
        """The rotation of positions ``[3, T]``; ``[T]`` means the same position in all rows."""
        if positions.dim() == 1:
            return super().at(positions, dtype)
        if positions.dim() != 2 or positions.shape[0] != 3:
            raise ValueError(
                f"M-RoPE positions must be [3, T] (temporal, height, width) or [T]; "
                f"got {tuple(positions.shape)}"
            )
        cos, sin = self.mixed_tables(positions)
        tokens = torch.arange(positions.shape[1], device=positions.device)
        return PositionRotation(cos, sin, tokens, dtype)
