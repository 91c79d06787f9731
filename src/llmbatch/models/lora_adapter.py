"""LoRA adapters in PEFT's format, fitted to llmbatch's models.

`add_lora_layers` wraps the projections adapters may target (q, k, v and o of attention; gate,
up and down of the dense MLPs) in `layers.lora.LoRALinear`; `load_peft_adapter` reads a PEFT
folder (``adapter_config.json`` and ``adapter_model.safetensors``), checks it against the model
(rank, targets, shapes) and lays its per-projection A and B out as the fused projections hold
them: q, k and v each in their own block of ``max_lora_rank`` rows of ``qkv_proj``'s slots.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from llmbatch.layers.linear import MergedLinear
from llmbatch.layers.lora import LoRABatch, LoRALinear
from llmbatch.layers.parallel import RowParallelLinear
from llmbatch.models.base import CausalLM

_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_PEFT_PREFIX = "base_model.model."
_LORA_TENSOR = re.compile(r"(?P<module>.+)\.lora_(?P<kind>A|B)(\.default)?\.weight")
# what PEFT saves for targets other than linear projections (embeddings, saved whole layers)
_OTHER_TARGET = re.compile(r"(?P<module>.+)\.(lora_embedding_[AB]|base_layer\.weight)(\.default)?")


@dataclass(frozen=True, slots=True)
class LoRATarget:
    """A projection adapters may target: its parts as the checkpoint names them (one, or the
    projections a fused layer stacks) with each part's output rows, in output order."""

    in_features: int
    parts: tuple[tuple[str, int], ...]

    @property
    def out_features(self) -> int:
        return sum(rows for _, rows in self.parts)


@dataclass(slots=True)
class LoRALayers:
    """A model's LoRA layers (by their module name) and the step state they share."""

    batch: LoRABatch
    layers: dict[str, LoRALinear]
    targets: dict[str, LoRATarget]
    max_rank: int
    part_of: dict[str, tuple[str, int]]
    """checkpoint projection name -> (its layer, its part index)"""


@dataclass(slots=True)
class LoRAAdapter:
    """An adapter's weights on the host, laid out as its layers' slots hold them: per layer
    ``(a [parts * max_rank, in], b [parts * max_rank, out])`` (scaling folded into b)."""

    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]


class IncompatibleAdapter(ValueError):
    """An adapter this model cannot run: the message names what is wrong."""


def lora_targets(model: CausalLM) -> dict[str, LoRATarget]:
    """The model's projections adapters may target, by module name."""
    split = getattr(model, "split_projections", {})
    targets = {}
    for name, module in model.named_modules():
        parent, _, attribute = name.rpartition(".")
        prefix = f"{parent}." if parent else ""
        if isinstance(module, MergedLinear):
            names = split.get(attribute, (attribute,) if len(module.part_sizes) == 1 else None)
            if names is None:  # stored fused (Phi-3): one part, as the checkpoint has it
                names, sizes = (attribute,), (module.out_features,)
            else:
                sizes = module.part_sizes
            parts = tuple((prefix + part, rows) for part, rows in zip(names, sizes))
            targets[name] = LoRATarget(module.in_features, parts)
        elif isinstance(module, RowParallelLinear) and module.tp.size == 1:
            out_features, in_features = module.weight.shape
            targets[name] = LoRATarget(in_features, ((name, out_features),))
    return targets


def add_lora_layers(model: CausalLM, max_loras: int, max_rank: int, max_tokens: int) -> LoRALayers:
    """Wraps every projection adapters may target with ``max_loras`` device slots of rank up
    to ``max_rank``; sets and returns ``model.lora``."""
    param = next(model.parameters())
    batch = LoRABatch(max_tokens, max_loras, param.device)
    targets = lora_targets(model)
    layers, part_of = {}, {}
    for name, target in targets.items():
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = LoRALinear(
            getattr(parent, attribute),
            target.in_features,
            target.out_features,
            len(target.parts) * max_rank,
            batch,
            param.dtype,
            param.device,
        )
        setattr(parent, attribute, layer)
        layers[name] = layer
        for index, (part, _) in enumerate(target.parts):
            part_of[part] = (name, index)
    model.lora = LoRALayers(batch, layers, targets, max_rank, part_of)
    return model.lora


def load_peft_adapter(path: str, model: CausalLM, dtype: torch.dtype) -> LoRAAdapter:
    """The PEFT adapter in folder ``path``, laid out for ``model.lora``'s layers; an
    `IncompatibleAdapter` naming the problem when it is missing, of a rank above the engine's
    ``max_lora_rank``, targets what the model does not run through LoRA layers, or was made for
    other shapes."""
    lora: LoRALayers = model.lora
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise IncompatibleAdapter(f"LoRA adapter {path!r}: no such folder")
    config = _read_config(folder)
    tensors = _read_tensors(folder)
    pairs = _module_pairs(tensors, path, _supported_targets(lora))
    named = _model_names(model, pairs, path, lora)
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    max_rank = lora.max_rank
    for part, (down, up) in named.items():
        layer_name, index = lora.part_of[part]
        target = lora.targets[layer_name]
        rank = down.shape[0]
        if rank > max_rank:
            raise IncompatibleAdapter(
                f"LoRA adapter {path!r}: rank {rank} of {part} exceeds max_lora_rank="
                f"{max_rank}; raise max_lora_rank in the engine arguments"
            )
        rows = dict(target.parts)[part]
        if down.shape != (rank, target.in_features) or up.shape != (rows, rank):
            raise IncompatibleAdapter(
                f"LoRA adapter {path!r} was made for other shapes than this model's: {part} "
                f"has A {tuple(down.shape)} and B {tuple(up.shape)}, the model needs A "
                f"[r, {target.in_features}] and B [{rows}, r]"
            )
        a, b = weights.get(layer_name) or _empty_slot(target, max_rank, dtype)
        start = index * max_rank
        offset = sum(r for _, r in target.parts[:index])
        a[start : start + rank] = down.to(dtype)
        scale = _scaling(config, part, rank)
        b[start : start + rank, offset : offset + rows] = (up.float() * scale).T.to(dtype)
        weights[layer_name] = (a, b)
    return LoRAAdapter(weights)


def _empty_slot(
    target: LoRATarget, max_rank: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    width = len(target.parts) * max_rank
    return (
        torch.zeros(width, target.in_features, dtype=dtype),
        torch.zeros(width, target.out_features, dtype=dtype),
    )


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise IncompatibleAdapter(
            f"LoRA adapter {str(folder)!r} has no adapter_config.json (save it with PEFT's "
            "save_pretrained)"
        )
    config = json.loads(path.read_text())
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} (LoRA only)")
    if config.get("use_dora"):
        problems.append("use_dora (DoRA)")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config.get('bias')!r} (trained biases)")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} (whole trained modules)")
    if config.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out (transposed Conv1D weights)")
    if config.get("lora_bias"):
        problems.append("lora_bias (a bias on B)")
    for name in ("target_parameters", "trainable_token_indices", "layer_replication"):
        if config.get(name):
            problems.append(f"{name}={config[name]!r}")
    if problems:
        raise IncompatibleAdapter(
            f"LoRA adapter {str(folder)!r} uses what llmbatch does not run: {'; '.join(problems)}"
        )
    return config


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    for name in _WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if name.endswith(".safetensors"):
                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
    raise IncompatibleAdapter(
        f"LoRA adapter {str(folder)!r} has no weights ({' or '.join(_WEIGHT_FILES)})"
    )


def _module_pairs(
    tensors: dict[str, torch.Tensor], path: str, supported: list[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """PEFT's tensors as module name -> (A, B)."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    other_targets, other = set(), []
    for name, tensor in tensors.items():
        name = name.removeprefix(_PEFT_PREFIX)
        match = _LORA_TENSOR.fullmatch(name)
        if match is not None:
            found.setdefault(match["module"], {})[match["kind"]] = tensor
        elif (target := _OTHER_TARGET.fullmatch(name)) is not None:
            other_targets.add(target["module"])
        else:
            other.append(name)
    if other_targets:
        raise _unsupported_targets(path, sorted(other_targets), supported)
    if other:
        raise IncompatibleAdapter(
            f"LoRA adapter {path!r} holds tensors that are not LoRA A/B pairs: {sorted(other)[:5]}"
        )
    incomplete = sorted(m for m, kinds in found.items() if len(kinds) != 2)
    if incomplete:
        raise IncompatibleAdapter(f"LoRA adapter {path!r} lacks A or B of {incomplete[:5]}")
    if not found:
        raise IncompatibleAdapter(f"LoRA adapter {path!r} holds no LoRA weights")
    return {module: (kinds["A"], kinds["B"]) for module, kinds in found.items()}


def _unsupported_targets(
    path: str, modules: list[str], supported: list[str]
) -> IncompatibleAdapter:
    return IncompatibleAdapter(
        f"LoRA adapter {path!r} targets modules this model does not run with LoRA: "
        f"{modules[:5]}{' ...' if len(modules) > 5 else ''}; supported targets: "
        f"{', '.join(supported)}"
    )


def _model_names(
    model: CausalLM,
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    path: str,
    lora: LoRALayers,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The pairs under the model's projection names: renamed as the family renames its
    checkpoints, and a base model's names (no ``model.`` prefix) as the causal LM's."""
    renamed = {}
    unknown = []
    for module, pair in pairs.items():
        names = [name for name, _ in model.checkpoint_tensors([(f"{module}.weight", pair[0])])]
        name = names[0].removesuffix(".weight") if names else module
        if name not in lora.part_of and f"model.{name}" in lora.part_of:
            name = f"model.{name}"
        if name in lora.part_of:
            renamed[name] = pair
        else:
            unknown.append(module)
    if unknown:
        raise _unsupported_targets(path, sorted(unknown), _supported_targets(lora))
    return renamed


def _supported_targets(lora: LoRALayers) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name in lora.part_of})


def _scaling(config: dict[str, Any], part: str, rank: int) -> float:
    """PEFT's ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA), with the per-module alphas of
    ``alpha_pattern``."""
    alpha = config.get("lora_alpha", 8)
    for key, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", part):
            alpha = value
            break
    if config.get("use_rslora"):
        return alpha / math.sqrt(rank)
    return alpha / rank
