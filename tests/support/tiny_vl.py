"""A tiny random-weight Qwen2.5-VL model folder: config, weights, tokenizer, image processor and
chat template, loadable offline with transformers' Auto classes (and llmbatch's load_processor)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from llmbatch._fixtures.qwen2_5_vl import vl_config, vl_tokenizer, write_processor_files

# Patches are 14 pixels and merged 2 x 2 into one token, so an image's sides snap to multiples of
# 28 and it gives between 4 and 16 tokens (16 to 64 patches).
PIXELS_PER_TOKEN = 28 * 28
MIN_PIXELS = 4 * PIXELS_PER_TOKEN
MAX_PIXELS = 16 * PIXELS_PER_TOKEN


def random_vl_model(config: Qwen2_5_VLConfig, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """The transformers model with every weight, bias and norm scale random (eager attention).

    transformers starts biases at 0 and norm scales at 1, which would hide a wrongly loaded one.
    """
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.1)
    model.set_attn_implementation("eager")
    return model.eval()


def make_tiny_qwen2_5_vl(folder: Path, seed: int = 0, **text_overrides) -> Path:
    """Writes a complete tiny Qwen2.5-VL model folder (float32 safetensors); returns ``folder``.

    ``text_overrides`` change the text config (e.g. ``tie_word_embeddings=True``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = vl_tokenizer()
    config = vl_config("tiny", tokenizer, **text_overrides)
    random_vl_model(config, seed).save_pretrained(folder)
    write_processor_files(folder, tokenizer, MIN_PIXELS, MAX_PIXELS)
    return folder
