"""Where each checkpoint tensor goes in a model built of fused and tensor-parallel layers.

A checkpoint names its tensors as the Hugging Face model does; ours fuses some of them (q, k and
v into one matrix; gate and up; the experts of a mixture into stacked tensors) and shards most
over tensor-parallel ranks. The layout is read off the model's modules: a ``MergedLinear`` takes
its parts from separate checkpoint tensors (or from one fused tensor, as Phi-3 stores them), a
row-parallel or vocabulary-parallel layer takes its rank's slice, ``MoEExperts`` one tensor per
expert and projection, a quantized layer each of its tensors as its ``ParamLayout`` says, and
every other parameter the whole tensor of its own name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from llmbatch.layers.linear import MergedLinear
from llmbatch.layers.moe import MoEExperts
from llmbatch.layers.parallel import (
    RowParallelLinear,
    VocabParallelEmbedding,
    VocabParallelLMHead,
    cdiv,
)
from llmbatch.layers.quantization import QuantizedLinear
from llmbatch.layers.tensor_parallel import TensorParallel

# the per-expert checkpoint projections of MoEExperts' stacked tensors
EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(slots=True, frozen=True)
class WeightSlot:
    """Where one checkpoint tensor of ``full_shape`` goes.

    The tensor is cut along ``dim`` into ``parts`` (their full sizes; one part when empty); each
    part is sliced for this rank along ``shard_dim`` (None: every rank takes all of it) and
    copied into ``target`` along ``dim``, the parts one after another from ``offset``.
    """

    target: torch.Tensor
    full_shape: tuple[int, ...]
    offset: int = 0
    dim: int = 0
    parts: tuple[int, ...] = ()
    shard_dim: int | None = None

    def fill(self, tensor: torch.Tensor, tp: TensorParallel) -> None:
        pieces = tensor.split(list(self.parts), dim=self.dim) if self.parts else (tensor,)
        offset = self.offset
        for piece in pieces:
            if self.shard_dim is not None:
                piece = rank_slice(piece, self.shard_dim, tp)
            rows = piece.shape[self.dim]
            self.target.narrow(self.dim, offset, rows).copy_(piece)
            offset += rows


def rank_slice(tensor: torch.Tensor, dim: int, tp: TensorParallel) -> torch.Tensor:
    """Rank ``tp.rank``'s share of ``tensor`` along ``dim`` (the last rank's may be shorter)."""
    per_rank = cdiv(tensor.shape[dim], tp.size)
    start = min(tp.rank * per_rank, tensor.shape[dim])
    return tensor.narrow(dim, start, min(per_rank, tensor.shape[dim] - start))


def checkpoint_layout(
    model: nn.Module,
    vocab_size: int,
    tp: TensorParallel,
    split_projections: Mapping[str, tuple[str, ...]],
) -> dict[str, WeightSlot]:
    """Checkpoint name -> the slot it fills, for every parameter of ``model``.

    ``split_projections`` names the checkpoint tensors a ``MergedLinear`` (by its attribute name)
    is stacked from, e.g. ``{"qkv_proj": ("q_proj", "k_proj", "v_proj")}``; a merged layer it
    does not list is stored fused under its own name.
    """
    layout: dict[str, WeightSlot] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # tied weights: filled under their first name
                continue
            seen.add(id(param))
            layout.update(
                _slots_of(module, module_name, leaf, param, vocab_size, tp, split_projections)
            )
    return layout


def _slots_of(
    module: nn.Module,
    module_name: str,
    leaf: str,
    param: nn.Parameter,
    vocab_size: int,
    tp: TensorParallel,
    split_projections: Mapping[str, tuple[str, ...]],
) -> dict[str, WeightSlot]:
    name = f"{module_name}.{leaf}" if module_name else leaf
    data, shape, size = param.data, tuple(param.shape), tp.size
    if isinstance(module, QuantizedLinear):
        return _quantized_slots(module, module_name, leaf, data, size, split_projections)
    if isinstance(module, MergedLinear):
        parent, _, attribute = module_name.rpartition(".")
        full_rows = [rows * size for rows in module.part_sizes]
        part_names = split_projections.get(attribute)
        if part_names is None:
            full = (sum(full_rows), *shape[1:])
            return {name: WeightSlot(data, full, parts=tuple(full_rows), shard_dim=0)}
        slots, offset = {}, 0
        for part, rows, full in zip(part_names, module.part_sizes, full_rows):
            slots[f"{parent}.{part}.{leaf}"] = WeightSlot(
                data, (full, *shape[1:]), offset, 0, (), 0
            )
            offset += rows
        return slots
    if isinstance(module, VocabParallelEmbedding | VocabParallelLMHead):
        return {name: WeightSlot(data, (vocab_size, *shape[1:]), shard_dim=0)}
    if isinstance(module, RowParallelLinear) and leaf == "weight":
        return {name: WeightSlot(data, (shape[0], shape[1] * size), shard_dim=1)}
    if isinstance(module, MoEExperts):
        return _expert_slots(module, module_name, leaf, data, size)
    return {name: WeightSlot(data, shape)}


def _quantized_slots(
    layer: QuantizedLinear,
    module_name: str,
    leaf: str,
    data: torch.Tensor,
    size: int,
    split_projections: Mapping[str, tuple[str, ...]],
) -> dict[str, WeightSlot]:
    """A quantized layer's checkpoint-form parameter: merged parts stacked along its output
    dimension (packed values count as their share of the part), a row-parallel layer's input
    dimension sharded, per-part tensors one after another along the leading dimension."""
    layout = layer.param_layouts.get(leaf)
    if layout is None:
        raise ValueError(f"{module_name} was quantized when it loaded; it cannot load again")
    shape = layer.shape
    parent, _, attribute = module_name.rpartition(".")
    parts = split_projections.get(attribute) if shape.parallel == "column" else None
    names = [f"{parent}.{part}.{leaf}" for part in parts] if parts else [f"{module_name}.{leaf}"]
    tensor_shape = list(data.shape[1:] if layout.per_part else data.shape)
    if layout.input_dim is not None:
        tensor_shape[layout.input_dim] *= size
    if layout.per_part:
        full = tuple(tensor_shape)
        return {
            n: WeightSlot(data[i], full, shard_dim=layout.input_dim) for i, n in enumerate(names)
        }
    dim = layout.output_dim
    if dim is None or shape.parallel != "column":
        return {names[0]: WeightSlot(data, tuple(tensor_shape), shard_dim=layout.input_dim)}
    pack = shape.out_features // data.shape[dim]
    rank_rows = [rows // pack for rows in shape.part_sizes]
    full_rows = [rows * size for rows in rank_rows]
    if not parts:
        tensor_shape[dim] = sum(full_rows)
        return {names[0]: WeightSlot(data, tuple(tensor_shape), 0, dim, tuple(full_rows), dim)}
    slots, offset = {}, 0
    for part_name, rows, full_part in zip(names, rank_rows, full_rows):
        tensor_shape[dim] = full_part
        slots[part_name] = WeightSlot(data, tuple(tensor_shape), offset, dim, (), dim)
        offset += rows
    return slots


def _expert_slots(
    experts: MoEExperts, module_name: str, leaf: str, data: torch.Tensor, size: int
) -> dict[str, WeightSlot]:
    """w13 ``[E, 2 * rows, hidden]`` from each expert's gate and up projections, w2
    ``[E, hidden, rows]`` from its down projection (rows: this rank's share); FP8 experts'
    ``w13_weight_scale`` and ``w2_weight_scale`` from the projections' ``weight_scale`` (one per
    output row, or one per projection with ``per_tensor_scales``)."""
    gate, up, down = EXPERT_PROJECTIONS
    stack, _, tensor = leaf.partition("_")  # "w13" or "w2"; "" (the weight) or "weight_scale"
    tensor = tensor or "weight"
    per_tensor = tensor != "weight" and getattr(experts, "per_tensor_scales", False)
    rows = experts.intermediate_size
    slots = {}
    for expert in range(experts.num_experts):
        prefix, target = f"{module_name}.{expert}", data[expert]
        if per_tensor:
            for offset, part in enumerate((gate, up) if stack == "w13" else (down,)):
                slots[f"{prefix}.{part}.{tensor}"] = WeightSlot(target, (1,), offset)
        elif stack == "w13":
            full = (rows * size, target.shape[1])
            slots[f"{prefix}.{gate}.{tensor}"] = WeightSlot(target, full, 0, 0, (), 0)
            slots[f"{prefix}.{up}.{tensor}"] = WeightSlot(target, full, rows, 0, (), 0)
        elif tensor == "weight":
            full = (target.shape[0], rows * size)
            slots[f"{prefix}.{down}.{tensor}"] = WeightSlot(target, full, shard_dim=1)
        else:  # the down projection's row scales: its rows (hidden features) are on every rank
            slots[f"{prefix}.{down}.{tensor}"] = WeightSlot(target, tuple(target.shape))
    return slots


def load_checkpoint(
    layout: dict[str, WeightSlot], weights: Iterable[tuple[str, torch.Tensor]], tp: TensorParallel
) -> None:
    """Fills every slot from ``weights`` (name, full tensor); raises on a tensor of the wrong
    shape, on one the model does not use, and on any the model needs that is missing."""
    missing = set(layout)
    unexpected = []
    for name, tensor in weights:
        slot = layout.get(name)
        if slot is None:
            unexpected.append(name)
            continue
        if tuple(tensor.shape) != slot.full_shape:
            raise ValueError(
                f"checkpoint weight {name} has shape {tuple(tensor.shape)}, "
                f"but the config gives {slot.full_shape}"
            )
        slot.fill(tensor, tp)
        missing.discard(name)
    if unexpected:
        raise ValueError(f"checkpoint has weights this model does not use: {sorted(unexpected)}")
    if missing:
        raise ValueError(f"checkpoint lacks weights the model needs: {sorted(missing)}")
