"""LoRA adapters made with PEFT on tiny models, and their merged transformers references."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import save_tiny_model, tiny_configs
from transformers import AutoModelForCausalLM, PreTrainedModel

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
    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    if adapter_folder is None:
        return base.eval()
    return PeftModel.from_pretrained(base, adapter_folder).merge_and_unload().eval()
