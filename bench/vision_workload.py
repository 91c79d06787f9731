"""The vision benchmark's model folder (a Qwen2.5-VL config, SmolLM2's tokenizer with Qwen's chat and
vision tokens, an image processor, a chat template) and its rows (generated pictures of COCO's sizes
with multiple-choice questions in the vision tutorial's form)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from llmbatch.engine.multimodal import MultiModalInputs


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
# Qwen2-VL's prompt layout; an image part becomes its vision placeholder, which the processor
# expands to one token per 2 x 2 patches.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MIN_PIXELS = 56 * 56
PATCH = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)

# Qwen2.5-VL-3B-Instruct's config, and the tiny Qwen2.5-VL of the tests (tests/models/tiny_vl.py)
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

SYSTEM_PROMPT = """Look at the image and the question carefully and reason step by step.
First describe the image, then give your reasoning, and end with one line in this format:
Final Answer: <answer>
where <answer> is the letter of the right choice (the letter only). Always give an answer."""
QUESTIONS = (
    ("What is the main object in the picture?", ("a dog", "a bicycle", "a pizza", "a train")),
    ("How many people can be seen?", ("none", "one", "two", "three or more")),
    ("Where was this photo most likely taken?", ("a kitchen", "a street", "a beach", "a park")),
    ("Which colour covers most of the picture?", ("red", "green", "blue", "yellow")),
    ("What is the weather like?", ("sunny", "rainy", "snowy", "cloudy")),
)
CHOICE_LETTERS = "ABCD"
# COCO's common sizes (width, height)
IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375), (612, 612), (640, 360))
WARMUP_ROWS = 8


@dataclass(slots=True)
class Row:
    """One request: its chat-templated prompt and picture, then the processor's output."""

    prompt: str
    image: Image.Image
    token_ids: list[int] | None = None
    multi_modal: MultiModalInputs | None = None


# --- the model folder ---------------------------------------------------------------------------


def vl_tokenizer(tokenizer_dir: str):
    """SmolLM2's tokenizer with Qwen's chat and vision tokens added, and Qwen2-VL's layout."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    missing = [t for t in (*CHAT_TOKENS, *VISION_TOKENS) if t not in tokenizer.get_vocab()]
    tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def vl_config(shape: str, tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (*CHAT_TOKENS, *VISION_TOKENS)}
    text = SHAPES[shape]["text"]
    vocab_size = text.get("vocab_size", -(-len(tokenizer) // 64) * 64)
    if vocab_size < len(tokenizer):
        raise ValueError(f"{shape}'s vocabulary is smaller than the tokenizer's ({len(tokenizer)})")
    text_config = {
        **text,
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", **SHAPES[shape]["rope"]},
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<|im_end|>"],
    }
    vision_config = {**SHAPES[shape]["vision"], **PATCH, "tokens_per_second": 2}
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config | {"out_hidden_size": text["hidden_size"]},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        # the Hub's configs set the tying at the top level, transformers reads the text config's
        tie_word_embeddings=text["tie_word_embeddings"],
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )


def write_model_folder(folder: Path, shape: str, tokenizer_dir: str, max_pixels: int):
    """config.json (no weights), tokenizer, image processor and chat template, as the Hub's
    Qwen2.5-VL folders hold them; returns the config."""
    tokenizer = vl_tokenizer(tokenizer_dir)
    config = vl_config(shape, tokenizer)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # Written as the Hub's folders hold it, not saved from a class: the image processor's class
    # differs between transformers versions (with and without torchvision), the file does not.
    image_processor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": max_pixels},
        "patch_size": PATCH["patch_size"],
        "temporal_patch_size": PATCH["temporal_patch_size"],
        "merge_size": PATCH["spatial_merge_size"],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2))
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (folder / "processor_config.json").write_text(
        json.dumps({"processor_class": "Qwen2_5_VLProcessor"}, indent=2)
    )
    return config


# --- the rows -----------------------------------------------------------------------------------


def make_image(seed: int) -> Image.Image:
    """Smooth random colour fields with a few rectangles, deterministic in `seed`."""
    width, height = IMAGE_SIZES[seed % len(IMAGE_SIZES)]
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).copy()
    for _ in range(4):
        x, y = rng.integers(0, width - 40), rng.integers(0, height - 40)
        w, h = rng.integers(20, width // 3), rng.integers(20, height // 3)
        pixels[y : y + h, x : x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(pixels)


def make_rows(processor, first: int, count: int) -> list[Row]:
    rows = []
    for i in range(first, first + count):
        question, choices = QUESTIONS[i % len(QUESTIONS)]
        listed = "\n".join(f"{CHOICE_LETTERS[k]}) {c}" for k, c in enumerate(choices))
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": question + "\n\n"},
                    {"type": "image"},
                    {"type": "text", "text": "\n\nChoices:\n" + listed},
                ],
            },
        ]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        rows.append(Row(prompt, make_image(i)))
    return rows


def process_rows(processor, rows: list[Row]) -> float:
    """Expands each row's image placeholder and processes its image; returns seconds."""
    from llmbatch.engine.multimodal import process_images

    start = time.perf_counter()
    for row in rows:
        row.token_ids, row.multi_modal = process_images(processor, row.prompt, [row.image])
    return time.perf_counter() - start
