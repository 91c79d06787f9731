"""The vision benchmark's model folder (a Qwen2.5-VL config, SmolLM2's tokenizer with Qwen's chat and
vision tokens, an image processor, a chat template) and its rows (generated pictures of COCO's sizes
with multiple-choice questions in the vision tutorial's form)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from llmbatch._fixtures.qwen2_5_vl import (
    vl_config,
    vl_tokenizer,
    write_processor_files,
)

if TYPE_CHECKING:
    from llmbatch.engine.multimodal import MultiModalInputs


MIN_PIXELS = 56 * 56

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


def write_model_folder(folder: Path, shape: str, tokenizer_dir: str, max_pixels: int):
    """config.json (no weights), tokenizer, image processor and chat template, as the Hub's
    Qwen2.5-VL folders hold them; returns the config."""
    tokenizer = vl_tokenizer(tokenizer_dir)
    config = vl_config(shape, tokenizer)
    config.save_pretrained(folder)
    write_processor_files(folder, tokenizer, MIN_PIXELS, max_pixels)
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
