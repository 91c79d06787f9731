"""A model's linear layers replaced by the quantized layers its checkpoint calls for.

The model is built inside ``weights_deferred`` (its linear weights on the meta device, never
allocated); ``quantize_layers`` then puts a quantized layer (layers/quantization) wherever the
checkpoint quantizes one and allocates the others as they were. The checkpoint is read through
``quantized_tensors`` into the quantized layers' checkpoint-form parameters
(models/checkpoint.py), and ``finish_loading`` turns those into their runtime form.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from llmbatch.layers.linear import Linear, MergedLinear
from llmbatch.layers.moe import MoEExperts
from llmbatch.layers.parallel import RowParallelLinear
from llmbatch.layers.quantization import Fp8Linear, Fp8MoEExperts, Int4Linear, LinearShape
from llmbatch.layers.quantization.linear import QuantizedLinear
from llmbatch.layers.tensor_parallel import TensorParallel
from llmbatch.models.checkpoint import EXPERT_PROJECTIONS
from llmbatch.models.quant_formats import CheckpointQuantization, LayerQuantization

# attention scales of quantized KV caches: llmbatch's fp8 cache has no scales
_UNUSED_SUFFIXES = (".k_scale", ".v_scale", ".q_scale", ".kv_scale", ".prob_scale")


def quantize_layers(
    model: nn.Module, quantization: CheckpointQuantization, device: torch.device
) -> None:
    """Replaces each linear layer (and stack of experts) the checkpoint quantizes; allocates
    the rest. Run under the model's default device and dtype."""
    tp: TensorParallel = getattr(model, "tensor_parallel", TensorParallel())
    split: Mapping[str, tuple[str, ...]] = getattr(model, "split_projections", {})
    for name, module in list(model.named_modules()):
        if isinstance(module, MoEExperts):
            replacement = _quantized_experts(name, module, quantization)
        elif isinstance(module, MergedLinear | RowParallelLinear | Linear):
            replacement = _quantized_linear(name, module, quantization, tp, split)
        else:
            continue
        if replacement is None:
            _allocate(module, device)
        else:
            model.set_submodule(name, replacement)


def _checkpoint_names(name: str, split: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    parent, _, attribute = name.rpartition(".")
    parts = split.get(attribute)
    return tuple(f"{parent}.{part}" for part in parts) if parts else (name,)


def _layer_of(
    names: tuple[str, ...], quantization: CheckpointQuantization
) -> LayerQuantization | None:
    layers = {quantization.layer_of(name) for name in names}
    if len(layers) > 1:
        raise ValueError(
            f"the checkpoint quantizes {', '.join(names)} differently; llmbatch runs them as one "
            "merged matrix, which needs one quantization for all of them"
        )
    return layers.pop()


def _quantized_linear(
    name: str,
    module: nn.Module,
    quantization: CheckpointQuantization,
    tp: TensorParallel,
    split: Mapping[str, tuple[str, ...]],
) -> QuantizedLinear | None:
    bias = module.bias is not None
    if isinstance(module, MergedLinear):
        names = _checkpoint_names(name, split)
        shape = LinearShape(
            module.in_features, module.part_sizes, "column", tp, checkpoint_parts=len(names)
        )
    elif isinstance(module, RowParallelLinear):
        names = (name,)
        in_features = module.weight.shape[1]
        shape = LinearShape(
            in_features, (module.weight.shape[0],), "row", tp, module.reduce_results
        )
    else:
        if not quantization.router_gates:
            return None
        names = (name,)
        shape = LinearShape(module.in_features, (module.out_features,), "replicated", tp)
    layer = _layer_of(names, quantization)
    if layer is None:
        return None
    layer_class = Fp8Linear if layer.kind == "fp8" else Int4Linear
    return layer_class(shape, bias, **layer.kwargs)


def _quantized_experts(
    name: str, experts: MoEExperts, quantization: CheckpointQuantization
) -> nn.Module | None:
    names = tuple(f"{name}.{expert}.{p}" for expert in (0,) for p in EXPERT_PROJECTIONS)
    layer = _layer_of(names, quantization)
    if layer is None:
        return None
    options = layer.kwargs
    if layer.kind != "fp8" or options.get("static_input"):
        raise ValueError(
            f"{quantization.description} mixture-of-experts weights are not supported: llmbatch "
            "runs experts with FP8 weights (per-tensor or per-channel scales, dynamic "
            "activations) or in full precision"
        )
    return Fp8MoEExperts(
        experts.num_experts,
        experts.w13.shape[2],
        experts.intermediate_size,
        experts.activation,
        per_tensor_scales=options.get("weight_scale") == "tensor",
        online=options.get("online", False),
    )


def _allocate(module: nn.Module, device: torch.device) -> None:
    """Gives a layer built with deferred weights real (empty) ones; the checkpoint fills them."""
    for leaf, param in list(module.named_parameters(recurse=False)):
        if param.is_meta:
            empty = torch.empty_like(param, device=device)
            setattr(module, leaf, nn.Parameter(empty, requires_grad=False))


def quantized_tensors(
    weights: Iterable[tuple[str, torch.Tensor]],
) -> Iterator[tuple[str, torch.Tensor]]:
    """A quantized checkpoint's tensors as the layers take them: per-tensor scales saved as
    scalars as ``[1]``; attention (KV cache) scales, compressed-tensors' ``weight_shape`` and
    the zero points of symmetric FP8 schemes (all zeros) left out."""
    for name, tensor in weights:
        if name.endswith(_UNUSED_SUFFIXES) or name.endswith(".weight_shape"):
            continue
        if name.endswith("_zero_point") and tensor.dtype != torch.int32:
            if torch.count_nonzero(tensor):
                raise ValueError(
                    f"checkpoint tensor {name} holds non-zero zero points: asymmetric FP8 "
                    "quantization is not supported"
                )
            continue
        if name.endswith("_scale") and tensor.dim() == 0:
            tensor = tensor.reshape(1)
        yield name, tensor


def _quantized_modules(model: nn.Module) -> Iterator[QuantizedLinear | Fp8MoEExperts]:
    return (m for m in model.modules() if isinstance(m, QuantizedLinear | Fp8MoEExperts))


@torch.no_grad()
def fill_dummy_quantized(model: nn.Module, seed: int) -> None:
    """Random quantized weights in place of ``init_dummy_weights``' draws where those make no
    sense (integer codes, scales); each rank draws its own."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed + 1)
    for module in _quantized_modules(model):
        module.fill_dummy(generator)


@torch.no_grad()
def finish_loading(model: nn.Module) -> None:
    """Every quantized layer in its runtime form."""
    for module in _quantized_modules(model):
        module.finish_loading()
