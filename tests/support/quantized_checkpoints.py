"""Tiny random checkpoints quantized as the quantization tools write them, and the transformers
model of their dequantized weights: the reference a quantized checkpoint must match.

Each format writes config.json's ``quantization_config`` (ModelOpt's legacy
``hf_quant_config.json``), tensor names, shapes and dtypes as its tool does (AutoAWQ's GEMM
layout, AutoGPTQ's v1 layout, llm-compressor's compressed-tensors, ModelOpt, transformers'
FBGEMM FP8, AutoFP8). The packing here is written plainly, one value at a time where the tools
do so, independent of llmbatch's loaders.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tiny_models import random_hf_model, tiny_tokenizer
from transformers import LlamaConfig, PretrainedConfig, PreTrainedModel, Qwen2Config

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# the linear layers of the decoder blocks, as the Hub names them
_LINEAR = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.(\w+_proj)\.weight$")
_EXPERTS = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")

_COMMON = dict(
    vocab_size=256,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
)


def quantization_configs() -> dict[str, PretrainedConfig]:
    """Widths that groups of 128 divide (on one rank, and the column-parallel ones on two)."""
    return {
        "llama": LlamaConfig(**_COMMON),
        "qwen2": Qwen2Config(**_COMMON, tie_word_embeddings=True),
    }


@dataclass(frozen=True)
class Format:
    """One way a tool stores quantized weights."""

    name: str
    kind: str  # "fp8" or "int4"
    options: dict[str, Any] = field(default_factory=dict)


FORMATS = {
    f.name: f
    for f in [
        Format("ct-fp8-dynamic", "fp8", dict(tool="ct", strategy="channel")),
        Format("ct-fp8-static", "fp8", dict(tool="ct", strategy="tensor", static=True)),
        Format("ct-fp8-tensor-dynamic", "fp8", dict(tool="ct", strategy="tensor")),
        Format("modelopt-fp8", "fp8", dict(tool="modelopt", strategy="tensor", static=True)),
        Format("modelopt-fp8-per-channel", "fp8", dict(tool="modelopt", strategy="channel")),
        Format("fbgemm-fp8", "fp8", dict(tool="fbgemm", strategy="channel")),
        Format("autofp8-static", "fp8", dict(tool="fp8", strategy="tensor", static=True)),
        Format("awq-g128", "int4", dict(tool="awq", group_size=128, sym=False)),
        Format("gptq-g128-sym", "int4", dict(tool="gptq", group_size=128, sym=True)),
        Format("gptq-g32-zero-point", "int4", dict(tool="gptq", group_size=32, sym=False)),
        Format("gptq-g64-act-order", "int4", dict(tool="gptq", group_size=64, act_order=True)),
        Format("gptq-v2-g128", "int4", dict(tool="gptq", group_size=128, sym=False, v2=True)),
        Format("ct-w4a16-g128", "int4", dict(tool="ct", group_size=128, sym=True)),
        Format("ct-w4a16-zero-point", "int4", dict(tool="ct", group_size=64, sym=False)),
        Format("ct-w4a16-act-order", "int4", dict(tool="ct", group_size=32, act_order=True)),
        Format("ct-w4a16-channel", "int4", dict(tool="ct", group_size=-1, sym=True)),
    ]
}


# ---- FP8 -----------------------------------------------------------------------------------


def _fp8(weight: torch.Tensor, strategy: str, scale_dtype: torch.dtype):
    """(e4m3 weight, scale as stored, the dequantized weight in float32)."""
    if strategy == "tensor":
        scale = (weight.abs().max() / FP8_MAX).reshape(1)
    else:
        scale = weight.abs().amax(dim=1, keepdim=True) / FP8_MAX
    scale = scale.to(scale_dtype)
    q = (weight / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale, q.float() * scale.float()


def _input_scale(name: str, dtype: torch.dtype) -> torch.Tensor:
    # any positive value works: the CPU path runs activations unquantized
    return torch.tensor([0.02 + 0.001 * (hash(name) % 7)], dtype=dtype)


def fp8_tensors(name: str, weight: torch.Tensor, fmt: Format) -> tuple[dict, torch.Tensor]:
    """One layer's checkpoint tensors in ``fmt`` and its dequantized weight."""
    tool, static = fmt.options["tool"], fmt.options.get("static", False)
    strategy = fmt.options["strategy"]
    scale_dtype = torch.bfloat16 if tool == "ct" else torch.float32
    q, scale, dequantized = _fp8(weight, strategy, scale_dtype)
    base = name.removesuffix(".weight")
    if tool in ("modelopt", "fp8") and strategy == "tensor":
        scale = scale.reshape(())  # saved as a scalar
    if tool == "modelopt" and strategy == "channel":
        scale = scale.reshape(-1)
    tensors = {f"{base}.weight": q, f"{base}.weight_scale": scale}
    if static:
        input_scale = _input_scale(name, scale_dtype)
        tensors[f"{base}.input_scale"] = input_scale.reshape(()) if tool != "ct" else input_scale
    if tool == "modelopt" and strategy == "tensor" and base.endswith(("k_proj", "v_proj")):
        # ModelOpt's FP8 KV cache scales, next to the projections that write the cache
        tensors[f"{base}.{base[-6]}_scale"] = torch.tensor(0.05)
    return tensors, dequantized


# ---- 4-bit ---------------------------------------------------------------------------------


def _int4_codes(
    weight: torch.Tensor, sym: bool, g_idx: torch.Tensor, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight ``[N, K]`` -> (codes 0..15 ``[N, K]``, zero points 0..15 ``[N, G]``, scales
    ``[N, G]`` in ``scale_dtype``, the dequantized weight ``[N, K]``); column k is in group
    ``g_idx[k]``; ``w = (code - zero) * scale``."""
    n = weight.shape[0]
    groups = int(g_idx.max()) + 1
    scales = torch.empty(n, groups)
    for g in range(groups):
        cols = weight[:, g_idx == g]
        if sym:
            scales[:, g] = cols.abs().amax(dim=1) / 7.5
        else:
            scales[:, g] = (cols.amax(dim=1) - cols.amin(dim=1)).clamp(min=1e-5) / 15
    scales = scales.to(scale_dtype)
    if sym:
        zeros = torch.full((n, groups), 8.0)
    else:
        low = torch.stack([weight[:, g_idx == g].amin(dim=1) for g in range(groups)], dim=1)
        zeros = (-low / scales.float()).round().clamp(0, 15)
    s, z = scales.float()[:, g_idx], zeros[:, g_idx]
    codes = (weight / s + z).round().clamp(0, 15)
    return codes.to(torch.int32), zeros.to(torch.int32), scales, (codes - z) * s


def _pack(values: torch.Tensor, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """Values 0..15 ``[R, C]`` -> int32 ``[R, C / 8]``: of each eight consecutive values along
    a row, value ``order[i]`` in bits ``4i..4i+3``."""
    packed = torch.zeros(values.shape[0], values.shape[1] // 8, dtype=torch.int64)
    for i in range(8):
        packed |= (values[:, order[i] :: 8].long() & 0xF) << (4 * i)
    # the same bits as an int32
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def _group_index(name: str, k: int, fmt: Format, seed: int) -> torch.Tensor:
    group_size = fmt.options["group_size"] if fmt.options["group_size"] != -1 else k
    if not fmt.options.get("act_order"):
        return torch.arange(k) // group_size
    # The act order: the columns in a random order, grouped group_size at a time in that order.
    # GPTQ orders a layer's inputs by their Hessian, which q, k and v (gate and up) share.
    shared_input = re.sub(r"\.(k_proj|v_proj)\.", ".q_proj.", name).replace("up_proj", "gate_proj")
    order_seed = seed + zlib.crc32(shared_input.encode())
    order = torch.randperm(k, generator=torch.Generator().manual_seed(order_seed))
    g_idx = torch.empty(k, dtype=torch.int64)
    g_idx[order] = torch.arange(k) // group_size
    return g_idx


def int4_tensors(
    name: str, weight: torch.Tensor, fmt: Format, seed: int
) -> tuple[dict, torch.Tensor]:
    """One layer's checkpoint tensors in ``fmt`` and its dequantized weight."""
    tool, sym = fmt.options["tool"], fmt.options.get("sym", True)
    g_idx = _group_index(name, weight.shape[1], fmt, seed)
    scale_dtype = torch.bfloat16 if tool == "ct" else torch.float16
    codes, zeros, scales, dequantized = _int4_codes(weight, sym, g_idx, scale_dtype)
    base = name.removesuffix(".weight")
    if tool == "awq":  # [K, N / 8]: packed along the output features, in AWQ's order
        return {
            f"{base}.qweight": _pack(codes.t(), AWQ_ORDER),
            f"{base}.qzeros": _pack(zeros.t(), AWQ_ORDER),
            f"{base}.scales": scales.t().contiguous(),
        }, dequantized
    if tool == "gptq":  # [K / 8, N]: packed along the input features; v1 zero points minus one
        if not fmt.options.get("v2"):
            assert (zeros >= 1).all(), "GPTQ v1 cannot store a zero point of 0"
            zeros = zeros - 1
        return {
            f"{base}.qweight": _pack(codes).t().contiguous(),
            f"{base}.qzeros": _pack(zeros.t()),
            f"{base}.scales": scales.t().contiguous(),
            f"{base}.g_idx": g_idx.to(torch.int32),
        }, dequantized
    # compressed-tensors: [N, K / 8], packed along each row (signed values offset by 8)
    tensors = {
        f"{base}.weight_packed": _pack(codes),
        f"{base}.weight_scale": scales,
        f"{base}.weight_shape": torch.tensor(list(weight.shape)),
    }
    if not sym:  # [N / 8, G]: packed along the output features
        tensors[f"{base}.weight_zero_point"] = _pack(zeros.t()).t().contiguous()
    if fmt.options.get("act_order"):
        tensors[f"{base}.weight_g_idx"] = g_idx.to(torch.int32)
    return tensors, dequantized


# ---- configs and the folder ----------------------------------------------------------------


def _ct_config(fmt: Format) -> dict[str, Any]:
    options = fmt.options
    if fmt.kind == "fp8":
        weights = dict(num_bits=8, type="float", symmetric=True, strategy=options["strategy"])
        weights |= dict(dynamic=False, group_size=None, actorder=None, observer="minmax")
        if options.get("static"):
            inputs = dict(num_bits=8, type="float", symmetric=True, strategy="tensor")
            inputs |= dict(dynamic=False, observer="minmax")
        else:
            inputs = dict(num_bits=8, type="float", symmetric=True, strategy="token")
            inputs |= dict(dynamic=True, observer=None)
        data_format = "float-quantized"
    else:
        group_size = options["group_size"]
        weights = dict(num_bits=4, type="int", symmetric=options.get("sym", True))
        weights |= dict(
            strategy="channel" if group_size == -1 else "group",
            group_size=None if group_size == -1 else group_size,
            actorder="group" if options.get("act_order") else None,
            dynamic=False,
            observer="minmax",
        )
        inputs = None
        data_format = "pack-quantized"
    return {
        "quant_method": "compressed-tensors",
        "format": data_format,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": inputs,
                "output_activations": None,
                "format": data_format,
            }
        },
        "ignore": ["lm_head", "re:.*mlp.gate$"],
        "kv_cache_scheme": None,
        "sparsity_config": {},
        "version": "0.10.2",
    }


def _tool_config(fmt: Format) -> dict[str, Any] | None:
    """config.json's quantization_config (None: ModelOpt's legacy hf_quant_config.json)."""
    tool, options = fmt.options["tool"], fmt.options
    if tool == "ct":
        return _ct_config(fmt)
    if tool == "modelopt":
        if options["strategy"] == "tensor":
            return None
        return {
            "quant_method": "modelopt",
            "quant_algo": "FP8_PER_CHANNEL_PER_TOKEN",
            "ignore": ["lm_head", "*.mlp.gate"],
            "kv_cache_scheme": None,
        }
    if tool == "fbgemm":
        return {
            "quant_method": "fbgemm_fp8",
            "activation_scale_ub": 1200.0,
            "modules_to_not_convert": ["lm_head"],
        }
    if tool == "fp8":
        return {"quant_method": "fp8", "activation_scheme": "static", "ignored_layers": []}
    if tool == "awq":
        return {
            "quant_method": "awq",
            "bits": 4,
            "group_size": options["group_size"],
            "zero_point": True,
            "version": "gemm",
            "modules_to_not_convert": None,
        }
    return {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": options["group_size"],
        "desc_act": bool(options.get("act_order")),
        "sym": options.get("sym", True),
        "true_sequential": True,
        "damp_percent": 0.01,
        "checkpoint_format": "gptq_v2" if options.get("v2") else "gptq",
        "lm_head": False,
    }


def _linear_weights(model: PreTrainedModel):
    """(Hub name, weight ``[N, K]``) of every linear layer of the decoder blocks, experts one by
    one (transformers 5 holds them stacked)."""
    for name, tensor in model.state_dict().items():
        if _LINEAR.match(name):
            yield name, tensor
        elif (stacked := _EXPERTS.match(name)) is not None:
            prefix, kind = stacked.groups()
            for expert, matrix in enumerate(tensor):
                if kind == "down_proj":
                    yield f"{prefix}.{expert}.down_proj.weight", matrix
                else:
                    gate, up = matrix.chunk(2, dim=0)
                    yield f"{prefix}.{expert}.gate_proj.weight", gate
                    yield f"{prefix}.{expert}.up_proj.weight", up


def save_quantized_model(
    folder: Path, config: PretrainedConfig, format_name: str, seed: int = 0
) -> PreTrainedModel:
    """Writes a random model of ``config`` quantized in ``format_name`` (see FORMATS) to
    ``folder``, with a tokenizer; returns the float32 transformers model of its dequantized
    weights. Biases of 4-bit layers are stored in float16, as AutoAWQ and AutoGPTQ do."""
    fmt = FORMATS[format_name]
    model = random_hf_model(config, seed)
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    dequantized: dict[str, torch.Tensor] = {}
    for name, weight in _linear_weights(model):
        if fmt.kind == "fp8":
            written, weight_back = fp8_tensors(name, weight, fmt)
        else:
            written, weight_back = int4_tensors(name, weight, fmt, seed)
            bias = name.removesuffix(".weight") + ".bias"
            if bias in state and fmt.options["tool"] != "ct":
                written[bias] = state[bias].half()
                dequantized[bias] = state[bias].half().float()
        tensors |= written
        dequantized[name] = weight_back
    for name, tensor in state.items():
        if _EXPERTS.match(name) is None and name not in dequantized and name not in tensors:
            tensors[name] = tensor.contiguous()
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    saved_config = config.to_dict()
    quantization_config = _tool_config(fmt)
    if quantization_config is None:
        producer = {"name": "modelopt", "version": "0.29.0"}
        quantization = {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
        quantization["exclude_modules"] = ["lm_head"]
        (folder / "hf_quant_config.json").write_text(
            json.dumps({"producer": producer, "quantization": quantization}, indent=2)
        )
    else:
        saved_config["quantization_config"] = quantization_config
    (folder / "config.json").write_text(json.dumps(saved_config, indent=2))
    tiny_tokenizer(config.vocab_size).save_pretrained(folder)
    return _with_weights(model, dequantized)


def _with_weights(model: PreTrainedModel, weights: dict[str, torch.Tensor]) -> PreTrainedModel:
    """``model`` holding ``weights`` (Hub names; experts restacked as transformers holds them)."""
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            stacked = _EXPERTS.match(name)
            if stacked is not None:
                prefix, kind = stacked.groups()
                for expert in range(tensor.shape[0]):
                    if kind == "down_proj":
                        tensor[expert] = weights[f"{prefix}.{expert}.down_proj.weight"]
                    else:
                        gate = weights[f"{prefix}.{expert}.gate_proj.weight"]
                        up = weights[f"{prefix}.{expert}.up_proj.weight"]
                        tensor[expert] = torch.cat([gate, up])
            elif name in weights:
                tensor.copy_(weights[name])
    return model


def fp8_at_load_reference(model: PreTrainedModel) -> PreTrainedModel:
    """``model`` with each linear weight of its decoder blocks (experts included) quantized to
    FP8 per output row, as ``quantization="fp8"`` does at load, and dequantized back."""
    dequantized = {
        name: _fp8(weight, "channel", torch.float32)[2] for name, weight in _linear_weights(model)
    }
    return _with_weights(model, dequantized)
