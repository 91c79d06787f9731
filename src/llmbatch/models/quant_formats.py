"""Quantized checkpoints as their tools write them: which layers each quantizes, and how.

A checkpoint says how it is quantized in config.json's ``quantization_config`` (ModelOpt also in
``hf_quant_config.json``); ``resolve_quantization`` reads it, checks it against the
``quantization`` engine argument (vLLM's names) and returns a ``CheckpointQuantization``: for
each layer, by its checkpoint name, the quantized layer that holds it, or None where the layer
stays in full precision. Formats llmbatch cannot run are errors naming the format.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

# vLLM's names for what a checkpoint holds; "fp8" also quantizes a full-precision checkpoint
QUANTIZATION_METHODS = ("fp8", "awq", "gptq", "compressed-tensors", "modelopt", "fbgemm_fp8")
# vLLM's names of the same formats run by other kernels
_ALIASES = {"awq_marlin": "awq", "gptq_marlin": "gptq", "modelopt_fp8": "modelopt"}
ACCEPTED_QUANTIZATION = (*QUANTIZATION_METHODS, *_ALIASES)
_SUPPORTED = (
    "FP8 (compressed-tensors float-quantized, ModelOpt FP8, FBGEMM FP8, fp8 with per-tensor "
    "scales, or quantization='fp8' on a full-precision checkpoint), 4-bit AWQ (GEMM), 4-bit "
    "GPTQ and compressed-tensors pack-quantized 4-bit weights"
)


@dataclass(frozen=True, slots=True)
class LayerQuantization:
    """How one layer's weights are stored: ``kind`` "fp8" or "int4", and the keyword arguments
    of its layer class (layers/quantization/linear.py: Fp8Linear, Int4Linear)."""

    kind: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


def fp8_layer(**options: Any) -> LayerQuantization:
    return LayerQuantization("fp8", tuple(sorted(options.items())))


def int4_layer(**options: Any) -> LayerQuantization:
    return LayerQuantization("int4", tuple(sorted(options.items())))


@dataclass(frozen=True, slots=True)
class CheckpointQuantization:
    """A checkpoint's quantization: ``method`` (vLLM's name), ``description`` (for messages),
    ``layer_of(name)``: the quantization of the linear layer a checkpoint names (e.g.
    ``model.layers.0.self_attn.q_proj``), None where it stays in full precision.
    ``router_gates``: whether the replicated layers (routers of mixtures of experts) may be
    quantized; the formats that never quantize them say False."""

    method: str
    description: str
    layer_of: Callable[[str], LayerQuantization | None] = field(repr=False)
    router_gates: bool = True


def _tool_config(folder: str, config: PretrainedConfig) -> dict[str, Any] | None:
    saved = getattr(config, "quantization_config", None)
    if saved is not None and not isinstance(saved, Mapping):
        saved = saved.to_dict()
    if saved:
        return dict(saved)
    modelopt = Path(folder) / "hf_quant_config.json"
    if modelopt.exists():
        return {"quant_method": "modelopt", **json.loads(modelopt.read_text())}
    return None


def resolve_quantization(
    folder: str, config: PretrainedConfig, requested: str | None
) -> CheckpointQuantization | None:
    """How the checkpoint in ``folder`` is quantized (None: not at all), checked against the
    ``quantization`` engine argument: None takes the checkpoint's own; ``"fp8"`` quantizes a
    full-precision checkpoint at load; any other name must be the checkpoint's format."""
    if requested is not None and requested not in ACCEPTED_QUANTIZATION:
        raise ValueError(
            f"quantization={requested!r} is not supported; accepted: "
            f"{', '.join(map(repr, ACCEPTED_QUANTIZATION))} or None (the checkpoint's own)"
        )
    requested = _ALIASES.get(requested, requested)
    saved = _tool_config(folder, config)
    if saved is None:
        if requested in (None, "fp8"):
            return None if requested is None else _online_fp8()
        raise ValueError(
            f"quantization={requested!r} needs a checkpoint quantized with {requested}, but "
            f"{folder} holds full-precision weights; quantization='fp8' quantizes those at load"
        )
    method = str(saved.get("quant_method", "")).lower()
    parser = _PARSERS.get(method)
    if parser is None:
        raise ValueError(
            f"{folder} is quantized with {method or 'an unnamed method'} "
            f"(config.json's quantization_config), which llmbatch cannot run; supported: "
            f"{_SUPPORTED}"
        )
    quantization = parser(saved)
    if requested is not None and requested != quantization.method:
        raise ValueError(
            f"quantization={requested!r} does not match {folder}, a {quantization.description} "
            f"checkpoint: leave quantization unset (or pass {quantization.method!r})"
        )
    return quantization


def _unsupported(what: str) -> ValueError:
    return ValueError(f"{what} is not supported; supported: {_SUPPORTED}")


def _online_fp8() -> CheckpointQuantization:
    layer = fp8_layer(online=True)
    return CheckpointQuantization(
        "fp8", "full-precision, quantized to FP8 at load", lambda name: layer, router_gates=False
    )


def _not_converted(patterns: list[str] | None) -> Callable[[str], bool]:
    """transformers' rule for ``modules_to_not_convert``: a pattern names a module from the
    start up to a module boundary (also as a regular expression), or as a suffix."""
    boundary = r"(?:(?<=\.)|(?=\.|$))"

    def skipped(name: str) -> bool:
        return any(
            re.match(rf"(?:{pattern}){boundary}", name) or name.endswith(pattern)
            for pattern in patterns or []
        )

    return skipped


def _selecting(
    layer: LayerQuantization, skipped: Callable[[str], bool]
) -> Callable[[str], LayerQuantization | None]:
    return lambda name: None if skipped(name) else layer


def _fp8_serialized(saved: dict[str, Any]) -> CheckpointQuantization:
    """vLLM's own ``fp8`` format (AutoFP8): per-tensor weight scales, static or dynamic
    activations."""
    if saved.get("weight_block_size"):
        raise _unsupported(
            f"FP8 with block-wise weight scales (weight_block_size={saved['weight_block_size']})"
        )
    static = saved.get("activation_scheme", "dynamic") == "static"
    layer = fp8_layer(weight_scale="tensor", static_input=static)
    ignored = saved.get("ignored_layers") or saved.get("modules_to_not_convert")
    activations = "static" if static else "dynamic"
    return CheckpointQuantization(
        "fp8",
        f"fp8 (per-tensor weights, {activations} activations)",
        _selecting(layer, _not_converted(ignored)),
    )


def _fbgemm_fp8(saved: dict[str, Any]) -> CheckpointQuantization:
    layer = fp8_layer(weight_scale="channel", scale_ub=saved.get("activation_scale_ub"))
    return CheckpointQuantization(
        "fbgemm_fp8",
        "FBGEMM FP8 (per-channel weights, dynamic per-token activations)",
        _selecting(layer, _not_converted(saved.get("modules_to_not_convert"))),
    )


def _modelopt(saved: dict[str, Any]) -> CheckpointQuantization:
    settings = saved.get("quantization", saved)
    algorithm = str(settings.get("quant_algo", "")).upper()
    if algorithm == "FP8":
        layer = fp8_layer(weight_scale="tensor", static_input=True)
        what = "per-tensor weights, static activations"
    elif algorithm == "FP8_PER_CHANNEL_PER_TOKEN":
        layer = fp8_layer(weight_scale="channel", channel_scale_2d=False)
        what = "per-channel weights, dynamic per-token activations"
    else:
        raise _unsupported(f"ModelOpt quant_algo {algorithm or None!r}")
    excluded = settings.get("exclude_modules") or settings.get("ignore") or []

    def skipped(name: str) -> bool:
        return any(
            name == pattern or fnmatch.fnmatch(name, pattern) or name.startswith(pattern + ".")
            for pattern in excluded
        )

    return CheckpointQuantization("modelopt", f"ModelOpt FP8 ({what})", _selecting(layer, skipped))


def _awq(saved: dict[str, Any]) -> CheckpointQuantization:
    version = str(saved.get("version", "gemm")).lower()
    if saved.get("bits", saved.get("w_bit", 4)) != 4 or version != "gemm":
        raise _unsupported(f"AWQ with {saved.get('bits')} bits, version {version!r}")
    if not saved.get("zero_point", True):
        raise _unsupported("AWQ without zero points")
    group_size = int(saved.get("group_size", saved.get("q_group_size", 128)))
    layer = int4_layer(layout="awq", group_size=group_size)
    return CheckpointQuantization(
        "awq",
        f"AWQ 4-bit (group size {group_size})",
        _selecting(layer, _not_converted(saved.get("modules_to_not_convert"))),
        router_gates=False,
    )


def _gptq(saved: dict[str, Any]) -> CheckpointQuantization:
    bits, group_size = saved.get("bits", 4), int(saved.get("group_size", 128))
    checkpoint_format = str(saved.get("checkpoint_format", "gptq")).lower()
    if bits != 4 or checkpoint_format not in ("gptq", "gptq_v2"):
        raise _unsupported(f"GPTQ with {bits} bits in the {checkpoint_format!r} layout")
    if saved.get("lm_head"):
        raise _unsupported("GPTQ with a quantized lm_head")
    if saved.get("dynamic"):
        raise _unsupported("GPTQ with per-module overrides (dynamic)")
    act_order = bool(saved.get("desc_act", False))
    layer = int4_layer(layout=checkpoint_format, group_size=group_size, act_order=act_order)
    return CheckpointQuantization(
        "gptq",
        f"GPTQ 4-bit (group size {group_size}{', act order' if act_order else ''})",
        lambda name: layer,
        router_gates=False,
    )


def _ct_matches(name: str, targets: list[str]) -> bool:
    """compressed-tensors' rule: a target is a module's exact name, a ``re:`` regular
    expression matched from the name's start, or the class name ``Linear``."""
    return any(
        target == "Linear"
        or target == name
        or (target.startswith("re:") and re.match(target[3:], name) is not None)
        for target in targets
    )


def _ct_group_layer(group: dict[str, Any], default_format: str | None) -> LayerQuantization:
    weights = group.get("weights") or {}
    inputs = group.get("input_activations")
    data_format = group.get("format") or default_format
    kind, bits = weights.get("type"), weights.get("num_bits")
    strategy = weights.get("strategy")
    scheme = f"compressed-tensors {data_format} {kind}{bits} ({strategy} weights)"
    if group.get("output_activations") or not weights:
        raise _unsupported(f"{scheme} with output or activation-only quantization")
    if kind == "float" and bits == 8 and data_format in ("float-quantized", "naive-quantized"):
        if strategy not in ("tensor", "channel") or not weights.get("symmetric", True):
            raise _unsupported(f"{scheme}, asymmetric or block-wise")
        static = False
        if inputs:
            dynamic, input_strategy = inputs.get("dynamic"), inputs.get("strategy")
            supported = inputs.get("type") == "float" and inputs.get("num_bits") == 8
            static = dynamic is False and input_strategy == "tensor"
            if not supported or not (static or (dynamic is True and input_strategy == "token")):
                raise _unsupported(f"{scheme} with {input_strategy} activations")
        return fp8_layer(weight_scale=strategy, static_input=static)
    if kind == "int" and bits == 4 and data_format == "pack-quantized" and not inputs:
        if strategy not in ("group", "channel"):
            raise _unsupported(scheme)
        group_size = int(weights.get("group_size") or -1) if strategy == "group" else -1
        return int4_layer(
            layout="compressed",
            group_size=group_size,
            act_order=weights.get("actorder") in ("group", "dynamic"),
            zero_point=not weights.get("symmetric", True),
        )
    raise _unsupported(scheme)


def _compressed_tensors(saved: dict[str, Any]) -> CheckpointQuantization:
    if saved.get("sparsity_config"):
        raise _unsupported("compressed-tensors with sparsity (sparsity_config)")
    if saved.get("transform_config"):
        raise _unsupported("compressed-tensors with transforms (transform_config)")
    groups = [
        (group.get("targets") or [], _ct_group_layer(group, saved.get("format")))
        for group in (saved.get("config_groups") or {}).values()
    ]
    ignore = saved.get("ignore") or []

    def layer_of(name: str) -> LayerQuantization | None:
        if _ct_matches(name, ignore):
            return None
        return next((layer for targets, layer in groups if _ct_matches(name, targets)), None)

    kinds = sorted({layer.kind.upper() for _, layer in groups})
    return CheckpointQuantization(
        "compressed-tensors", f"compressed-tensors ({', '.join(kinds)})", layer_of
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], CheckpointQuantization]] = {
    "fp8": _fp8_serialized,
    "fbgemm_fp8": _fbgemm_fp8,
    "modelopt": _modelopt,
    "awq": _awq,
    "gptq": _gptq,
    "compressed-tensors": _compressed_tensors,
}
