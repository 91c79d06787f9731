"""A tiny random-weight Qwen2.5-VL model folder: config, weights, tokenizer, image processor and
chat template, loadable offline with transformers' Auto classes (and llmbatch's load_processor)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from llmbatch.models.provisioned import smollm2_dir

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
# Patches are 14 pixels and merged 2 x 2 into one token, so an image's sides snap to multiples of
# 28 and it gives between 4 and 16 tokens (16 to 64 patches).
PIXELS_PER_TOKEN = 28 * 28
MIN_PIXELS = 4 * PIXELS_PER_TOKEN
MAX_PIXELS = 16 * PIXELS_PER_TOKEN

# Qwen2-VL's layout: text parts as they are, each image part as its vision placeholder.
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


def tiny_vl_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer with Qwen's vision and chat tokens added as special tokens."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    missing = [t for t in (*CHAT_TOKENS, *VISION_TOKENS) if t not in tokenizer.get_vocab()]
    tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_vl_config(tokenizer: PreTrainedTokenizerBase, **text_overrides) -> Qwen2_5_VLConfig:
    """Text: hidden 64, 2 layers, 4 heads / 2 KV heads (head_dim 16, M-RoPE sections 2+3+3).
    Vision: depth 2 (block 1 full attention, block 0 windows of 2 x 2 tokens), hidden 32."""
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (*CHAT_TOKENS, *VISION_TOKENS)}
    text_config = dict(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    text_config.update(text_overrides)
    vision_config = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=48,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
        out_hidden_size=text_config["hidden_size"],
        tokens_per_second=2,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=bool(text_overrides.get("tie_word_embeddings", False)),
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )


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


def save_processor_files(folder: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """What Qwen2_5_VLProcessor.save_pretrained writes, without building one (its video processor
    needs torchvision): tokenizer, image processor, chat template and processor_config.json."""
    tokenizer.save_pretrained(folder)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    image_processor.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    processor_config = {"processor_class": "Qwen2_5_VLProcessor"}
    (folder / "processor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n")


def make_tiny_qwen2_5_vl(folder: Path, seed: int = 0, **text_overrides) -> Path:
    """Writes a complete tiny Qwen2.5-VL model folder (float32 safetensors); returns ``folder``.

    ``text_overrides`` change the text config (e.g. ``tie_word_embeddings=True``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_vl_tokenizer()
    config = tiny_vl_config(tokenizer, **text_overrides)
    random_vl_model(config, seed).save_pretrained(folder)
    save_processor_files(folder, tokenizer)
    return folder
