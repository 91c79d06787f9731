"""Qwen2.5-VL: a Qwen2 text decoder with M-RoPE, fed by a vision transformer.

The text decoder is the Llama-style stack of ``llama.py`` (fused QKV with bias, fused gate/up,
tensor-parallel linears, paged attention backends) rotated by M-RoPE. The vision tower is
transformers' own module, replicated on every tensor-parallel rank; it turns an image's patches
into one embedding per image placeholder token, which the engine puts in place of the
placeholders' token embeddings.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator

import torch
from transformers import PretrainedConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
)

from llmbatch.layers.attention.base import AttentionBackend, AttentionMetadata
from llmbatch.layers.mrope import MRotaryEmbedding
from llmbatch.models.decoder import head_dim_of
from llmbatch.models.llama import LlamaForCausalLM
from llmbatch.models.mrope import mrope_positions

# checkpoint name prefix as transformers 5 saves it -> as the Hub's checkpoints name it
_CHECKPOINT_PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."))


def text_config_of(config: PretrainedConfig) -> PretrainedConfig:
    """The text decoder's config, with the tying of the embeddings that the outer config sets
    (Hub configs keep it at the top level)."""
    text = copy.deepcopy(config.text_config)
    text.tie_word_embeddings = bool(config.tie_word_embeddings)
    return text


def hub_checkpoint_name(name: str) -> str:
    """A checkpoint weight's name in the Hub's layout (``visual.*``, ``model.layers.*``, ...)."""
    for saved, hub in _CHECKPOINT_PREFIXES:
        if name.startswith(saved):
            return hub + name[len(saved) :]
    return name


class Qwen2_5_VLForConditionalGeneration(LlamaForCausalLM):
    """Qwen2.5-VL over the engine's flat batches: positions are M-RoPE's ``[3, T]`` and images
    enter as ``inputs_embeds``.

    For a prompt, ``mrope_positions`` gives its positions and the delta of the tokens it
    generates; ``embed_input_ids`` and ``encode_images`` give the embeddings of its text and of
    its image placeholders.
    """

    uses_mrope = True

    def __init__(
        self, config: PretrainedConfig, architecture: str, attention_backend: AttentionBackend
    ) -> None:
        text = text_config_of(config)
        super().__init__(text, "Qwen2ForCausalLM", attention_backend)
        self.model.rotary = MRotaryEmbedding(text, head_dim_of(text))
        vision = copy.deepcopy(config.vision_config)
        if vision.out_hidden_size != text.hidden_size:
            raise ValueError(
                f"vision_config.out_hidden_size ({vision.out_hidden_size}) must equal the text "
                f"hidden_size ({text.hidden_size})"
            )
        # sdpa runs everywhere (CPU included) and needs no extra package, unlike flash-attn.
        self.visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(
            vision, attn_implementation="sdpa", dtype=torch.get_default_dtype()
        )
        self.image_token_id: int = config.image_token_id
        self.video_token_id: int = config.video_token_id
        self.spatial_merge_size: int = vision.spatial_merge_size

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[T]`` -> their embeddings ``[T, hidden_size]``."""
        return self.model.embed_tokens(input_ids)

    def encode_images(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> torch.Tensor:
        """Patches of the images (as the processor gives them) and each image's (t, h, w) patch
        grid -> ``[N, hidden_size]``, one row per image placeholder token, images in order."""
        param = self.visual.patch_embed.proj.weight
        if image_grid_thw.dim() != 2 or image_grid_thw.shape[1] != 3:
            raise ValueError(
                f"image_grid_thw must be [num_images, 3]; got {tuple(image_grid_thw.shape)}"
            )
        num_patches = int(image_grid_thw.prod(-1).sum())
        if pixel_values.shape[0] != num_patches:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} patches, but image_grid_thw gives "
                f"{num_patches}"
            )
        out = self.visual(
            pixel_values.to(device=param.device, dtype=param.dtype),
            grid_thw=image_grid_thw.to(device=param.device, dtype=torch.int64),
        )
        return out.pooler_output

    def mrope_positions(
        self, token_ids: list[int], image_grid_thw: torch.Tensor | None
    ) -> tuple[torch.Tensor, int]:
        """Positions ``[3, L]`` (int64, CPU) of a whole prompt, and the delta such that the token
        at index ``t >= L`` has position ``t + delta`` in all three rows."""
        return mrope_positions(
            token_ids,
            image_grid_thw,
            image_token_id=self.image_token_id,
            video_token_id=self.video_token_id,
            spatial_merge_size=self.spatial_merge_size,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Like ``CausalLM.forward``, with positions ``[3, T]`` (``[T]`` for text alone) and
        ``inputs_embeds`` ``[T, hidden_size]``, when given, in place of ``input_ids``' embeddings."""
        return self.model(input_ids, positions, kv_caches, meta, inputs_embeds)

    def checkpoint_tensors(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """The Hub's layout or the one transformers 5 saves (``model.language_model.*``,
        ``model.visual.*``), in the Hub's names; the vision tower's parameters load whole on
        every rank."""
        hub_named = (
            (hub_checkpoint_name(name), tensor)
            for name, tensor in weights
            if not name.endswith(".inv_freq")  # rotary tables come from the config
        )
        return super().checkpoint_tensors(hub_named)
