"""LoRA adapters on tiny models: made with PEFT (the reference every CPU parity test holds
against), or written in PEFT's format without it (where PEFT is not installed, and for
benchmark shapes); and their merged transformers references."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny_models import save_tiny_model, tiny_configs
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

# three adapters of different ranks, targets and scalings
ADAPTERS = {
    "attention-qv": dict(target_modules=["q_proj", "v_proj"], rank=4, seed=1),
    "everything": dict(
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        rank=16,
        seed=2,
    ),
    "mlp-rslora": dict(
        target_modules=["up_proj", "down_proj", "o_proj"], rank=8, seed=3, use_rslora=True
    ),
}


def make_lora_setup(root: Path) -> tuple[Path, dict[str, Path]]:
    """A tiny Qwen3 base model in ``root/base`` and the `ADAPTERS` made on it, each in
    ``root/<name>``."""
    base = root / "base"
    save_tiny_model(base, tiny_configs()["qwen3-qk-norm"])
    folders = {}
    for name, spec in ADAPTERS.items():
        spec = dict(spec)
        folders[name] = root / name
        make_adapter(
            base,
            folders[name],
            spec.pop("target_modules"),
            spec.pop("rank"),
            spec.pop("seed"),
            **spec,
        )
    return base, folders


def make_adapter(
    base_folder: Path,
    folder: Path,
    target_modules: list[str],
    rank: int,
    seed: int,
    **config,
) -> None:
    """A PEFT adapter of random A and B (PEFT starts B at zero, which would change nothing)
    saved to ``folder``."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    lora = LoraConfig(
        r=rank,
        lora_alpha=config.pop("lora_alpha", 2 * rank),
        target_modules=target_modules,
        **config,
    )
    model = get_peft_model(base, lora)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    model.save_pretrained(folder)


def merged_model(base_folder: Path, adapter_folder: Path | None) -> PreTrainedModel:
    """The base model with the adapter merged into its weights (the base alone for None)."""
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    if adapter_folder is None:
        return base.eval()
    return PeftModel.from_pretrained(base, adapter_folder).merge_and_unload().eval()


def projection_shapes(config: PretrainedConfig) -> dict[str, tuple[str, int, int]]:
    """A Llama-style decoder layer's projections: name -> (parent module, in, out)."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    inter = config.intermediate_size
    return {
        "q_proj": ("self_attn", hidden, q),
        "k_proj": ("self_attn", hidden, kv),
        "v_proj": ("self_attn", hidden, kv),
        "o_proj": ("self_attn", q, hidden),
        "gate_proj": ("mlp", hidden, inter),
        "up_proj": ("mlp", hidden, inter),
        "down_proj": ("mlp", inter, hidden),
    }


def write_peft_adapter(
    folder: Path,
    config: PretrainedConfig,
    target_modules: list[str],
    rank: int,
    seed: int,
    std: float = 0.2,
    dtype: torch.dtype = torch.float32,
) -> None:
    """An adapter of random A and B in PEFT's format (``adapter_config.json`` and
    ``adapter_model.safetensors``, PEFT's tensor names), written without PEFT."""
    shapes = projection_shapes(config)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for name in target_modules:
            parent, fan_in, fan_out = shapes[name]
            prefix = f"base_model.model.model.layers.{layer}.{parent}.{name}"
            a = torch.randn(rank, fan_in, generator=generator) * std
            b = torch.randn(fan_out, rank, generator=generator) * std
            tensors[f"{prefix}.lora_A.weight"] = a.to(dtype)
            tensors[f"{prefix}.lora_B.weight"] = b.to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": target_modules,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config))
