"""``load_model``: from a folder, .gguf file or Hub id to a ready model, its config and tokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from llmbatch.layers.attention import get_attention_backend
from llmbatch.layers.attention.base import AttentionBackend
from llmbatch.layers.linear import weights_deferred
from llmbatch.models.base import CausalLM
from llmbatch.models.pooling import PoolerConfig
from llmbatch.models.quant_formats import CheckpointQuantization, resolve_quantization
from llmbatch.models.quantize import (
    fill_dummy_quantized,
    finish_loading,
    quantize_layers,
    quantized_tensors,
)
from llmbatch.models.registry import build_model, resolve_model_impl
from llmbatch.models.source import resolve_model_folder
from llmbatch.models.transformers_fallback import TransformersCausalLM, load_transformers_model
from llmbatch.models.weights import (
    DTYPES,
    LOAD_FORMATS,
    checkpoint_files,
    init_dummy_weights,
    iterate_weights,
)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class LoadedModel:
    model: CausalLM
    """In eval mode, on the requested device and dtype, without gradients."""
    hf_config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase | None
    """None only for ``load_format="dummy"`` from a folder that has no tokenizer files."""
    path: str
    """The local folder holding config.json, tokenizer files and (unless dummy) weights."""
    eos_token_ids: list[int]
    dtype: torch.dtype


def check_dtype(dtype: str | torch.dtype) -> None:
    """A ValueError naming the accepted dtypes when ``dtype`` is none of them."""
    if dtype != "auto" and dtype not in DTYPES and dtype not in DTYPES.values():
        names = ", ".join(["auto", *DTYPES])
        raise ValueError(
            f"dtype={dtype!r} is not supported; accepted: {names} or one of torch.float32, "
            "torch.float16, torch.bfloat16"
        )


def resolve_dtype(
    dtype: str | torch.dtype, config: PretrainedConfig, device: torch.device
) -> torch.dtype:
    """ "auto": float32 on the CPU, else the checkpoint's dtype (float32 when it names none)."""
    check_dtype(dtype)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        return DTYPES[dtype]
    if device.type == "cpu":
        return torch.float32
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(saved, str):
        saved = getattr(torch, saved, None)
    return saved if saved in DTYPES.values() else torch.float32


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _load_tokenizer(
    folder: str, trust_remote_code: bool, required: bool
) -> PreTrainedTokenizerBase | None:
    if not any((Path(folder) / name).exists() for name in _TOKENIZER_FILES):
        if not required:
            return None
        raise FileNotFoundError(
            f"{folder} has no tokenizer files (one of {', '.join(_TOKENIZER_FILES)}): "
            "copy the model's tokenizer files into it"
        )
    # given either way: left out, transformers asks on the terminal whether to run remote code
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)


def _as_list(token_ids: int | list[int] | None) -> list[int]:
    if token_ids is None:
        return []
    return [token_ids] if isinstance(token_ids, int) else list(token_ids)


def eos_token_ids_of(
    folder: str, tokenizer: PreTrainedTokenizerBase | None, config: PretrainedConfig
) -> list[int]:
    """EOS ids from generation_config.json and the tokenizer (the config's when neither has one)."""
    ids = []
    if (Path(folder) / "generation_config.json").exists():
        ids += _as_list(GenerationConfig.from_pretrained(folder).eos_token_id)
    if tokenizer is not None:
        ids += _as_list(tokenizer.eos_token_id)
    if not ids:
        ids += _as_list(getattr(config.get_text_config(), "eos_token_id", None))
    return list(dict.fromkeys(ids))


def read_config(folder: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The folder's config.json as transformers reads it; a ValueError for one whose config is
    the checkpoint's own code while trust_remote_code is off."""
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if trust_remote_code or "trust_remote_code" not in str(exc):
            raise
        raise ValueError(
            f"{folder} defines its model in its own Python code (config.json's auto_map), which "
            "transformers runs only with trust_remote_code=True: set it in engine_kwargs if you "
            "trust that code"
        ) from exc
    return config


def check_own_code_for(quantization: CheckpointQuantization | None) -> None:
    """Quantized weights run on llmbatch's own model code only."""
    if quantization is not None:
        raise ValueError(
            f"{quantization.description} weights run on llmbatch's own model code only: use "
            "model_impl='auto' or 'llmbatch' with an architecture it implements"
        )


def _build_own_model(
    config: PretrainedConfig,
    backend: AttentionBackend,
    device: torch.device,
    dtype: torch.dtype,
    quantization: CheckpointQuantization | None,
    pooler: PoolerConfig | None = None,
) -> CausalLM:
    """The model on ``device`` in ``dtype``; a quantized one never allocates the full-precision
    weights its quantized layers replace."""
    with torch.device(device), _default_dtype(dtype):
        with weights_deferred() if quantization is not None else nullcontext():
            net = build_model(config, backend, pooler)
        if quantization is not None:
            quantize_layers(net, quantization, device)
    net.to(device)
    net.requires_grad_(False)
    return net


def model_on_meta(
    folder: str,
    config: PretrainedConfig,
    dtype: torch.dtype,
    attention_backend: str,
    model_impl: str,
    quantization: str | None,
    trust_remote_code: bool,
) -> torch.nn.Module:
    """The model `load_model` builds for these settings, on the meta device: its parameters
    have their real shapes and dtypes (quantized ones included) and take no memory."""
    meta = torch.device("meta")
    quantized = resolve_quantization(folder, config, quantization)
    if resolve_model_impl(config, model_impl, trust_remote_code) == "transformers":
        return load_transformers_model(folder, config, dtype, meta, False, trust_remote_code)
    return _build_own_model(
        config, get_attention_backend(attention_backend), meta, dtype, quantized
    )


def load_model(
    model: str,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    attention_backend: str = "torch",
    trust_remote_code: bool = False,
    revision: str | None = None,
    load_format: str = "auto",
    seed: int = 0,
    model_impl: str = "auto",
    pooler: PoolerConfig | None = None,
    quantization: str | None = None,
) -> LoadedModel:
    """Loads a model folder, a .gguf file (converted once, then cached) or a Hub id.

    ``load_format="dummy"`` needs only config.json and draws weights from ``seed``.
    ``model_impl``: "llmbatch" (our own code), "transformers" (the model's transformers code on
    our paged attention) or "auto" (our own code where it exists). ``pooler``: load it as a
    pooling model (our own code only; `llmbatch.models.encoder` runs the others).
    ``quantization``: vLLM's name of the checkpoint's quantization (None: read from the
    checkpoint), or "fp8" to quantize a full-precision checkpoint's weights at load.
    """
    check_dtype(dtype)
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format {load_format!r} is not supported; use one of {LOAD_FORMATS}")
    device = torch.device(device)
    backend = get_attention_backend(attention_backend)
    dummy = load_format == "dummy"
    folder = resolve_model_folder(model, revision, with_weights=not dummy)
    config = read_config(folder, trust_remote_code)
    tokenizer = _load_tokenizer(folder, trust_remote_code, required=not dummy)
    torch_dtype = resolve_dtype(dtype, config, device)
    if pooler is not None and model_impl == "transformers":
        raise ValueError(
            "a pooling model run with its transformers code loads with "
            "llmbatch.models.encoder.load_encoder"
        )
    quantized = resolve_quantization(folder, config, quantization)
    if resolve_model_impl(config, model_impl, trust_remote_code) == "transformers":
        check_own_code_for(quantized)
        hf_model = load_transformers_model(
            folder, config, torch_dtype, device, not dummy, trust_remote_code
        )
        net = TransformersCausalLM(hf_model, backend)
        if dummy:
            init_dummy_weights(net, seed)
    else:
        net = _build_own_model(config, backend, device, torch_dtype, quantized, pooler)
        if dummy:
            init_dummy_weights(net, seed)
        else:
            weights = iterate_weights(checkpoint_files(folder, load_format))
            net.load_weights(quantized_tensors(weights) if quantized else weights)
        if quantized is not None:
            if dummy:
                fill_dummy_quantized(net, seed)
            finish_loading(net)
    net.eval()
    return LoadedModel(
        model=net,
        hf_config=config,
        tokenizer=tokenizer,
        path=folder,
        eos_token_ids=eos_token_ids_of(folder, tokenizer, config),
        dtype=torch_dtype,
    )
