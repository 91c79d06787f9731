"""Qwen2.5-VL model folders for tests and benchmarks, built offline: a config of a given shape,
SmolLM2's tokenizer with Qwen's chat and vision tokens added, an image processor and a chat
template. Weights are not written: load with ``load_format="dummy"`` or save a model over it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
PATCH = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
# Qwen2-VL's layout: text parts as they are, each image part as its vision placeholder (which the
# processor expands to one token per 2 x 2 patches).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen2.5-VL-3B-Instruct's config, and a tiny one (text: hidden 64, 2 layers, 4 heads / 2 KV heads,
# head_dim 16, M-RoPE sections 2+3+3; vision: depth 2, block 1 full attention, block 0 windows of
# 2 x 2 tokens, hidden 32). A shape without vocab_size takes the tokenizer's, rounded up to 64.
# fmt: off
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "qwen2.5-vl-3b": {
        "text": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                     num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                     max_position_embeddings=128000, tie_word_embeddings=True),
        "rope": dict(rope_theta=1000000.0, mrope_section=[16, 24, 24]),
        "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                       window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
    },
    "tiny": {
        "text": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                     tie_word_embeddings=False),
        "rope": dict(rope_theta=10000.0, mrope_section=[2, 3, 3]),
        "vision": dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2,
                       window_size=56, fullatt_block_indexes=[1]),
    },
}
# fmt: on


def vl_tokenizer(tokenizer_dir: str | None = None) -> Any:
    """SmolLM2's tokenizer (from `tokenizer_dir`, or the provisioned model) with Qwen's chat and
    vision tokens added as special tokens, and Qwen2-VL's chat template."""
    from transformers import AutoTokenizer

    from llmbatch._fixtures.smollm2 import smollm2_dir

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or smollm2_dir())
    missing = [t for t in (*CHAT_TOKENS, *VISION_TOKENS) if t not in tokenizer.get_vocab()]
    tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def vl_config(shape: str, tokenizer: Any, **text_overrides: Any) -> Any:
    """The Qwen2_5_VLConfig of `shape` around `tokenizer`'s special token ids; `text_overrides`
    change the text config (e.g. ``tie_word_embeddings=True``)."""
    from transformers import Qwen2_5_VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (*CHAT_TOKENS, *VISION_TOKENS)}
    text = {**SHAPES[shape]["text"], **text_overrides}
    text.setdefault("vocab_size", -(-len(tokenizer) // 64) * 64)
    if text["vocab_size"] < len(tokenizer):
        raise ValueError(f"{shape}'s vocabulary is smaller than the tokenizer's ({len(tokenizer)})")
    text_config = {
        **text,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", **SHAPES[shape]["rope"]},
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<|im_end|>"],
    }
    vision_config = {
        **SHAPES[shape]["vision"],
        **PATCH,
        "tokens_per_second": 2,
        "out_hidden_size": text["hidden_size"],
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        # the Hub's configs set the tying at the top level; transformers reads the text config's
        tie_word_embeddings=text["tie_word_embeddings"],
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )


def write_processor_files(folder: Path, tokenizer: Any, min_pixels: int, max_pixels: int) -> None:
    """Tokenizer, image processor, chat template and processor_config.json as the Hub's Qwen2.5-VL
    folders hold them. Written as files, not saved from processor classes: those differ between
    transformers versions and with or without torchvision; the files do not."""
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    image_processor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        "patch_size": PATCH["patch_size"],
        "temporal_patch_size": PATCH["temporal_patch_size"],
        "merge_size": PATCH["spatial_merge_size"],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2))
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    processor_config = {"processor_class": "Qwen2_5_VLProcessor"}
    (folder / "processor_config.json").write_text(json.dumps(processor_config, indent=2))
