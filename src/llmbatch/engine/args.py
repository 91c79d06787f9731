"""Engine arguments as a user gives them, with vLLM's names, checked once on construction."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

import torch

from llmbatch.engine.structured_outputs import check_backend
from llmbatch.layers.attention import ATTENTION_BACKENDS
from llmbatch.layers.attention.base import KV_CACHE_DTYPES
from llmbatch.models.loader import check_dtype
from llmbatch.models.pooling import check_pooling_args
from llmbatch.models.quant_formats import ACCEPTED_QUANTIZATION
from llmbatch.models.registry import MODEL_IMPLS
from llmbatch.models.weights import LOAD_FORMATS


@dataclass(frozen=True, slots=True)
class EngineArgs:
    """Everything that shapes one engine, as given; `llmbatch.engine.config.resolve_config`
    turns it into the `EngineConfig` every component is built from. An unknown name, a wrong
    type or a value the engine cannot honour is a ValueError naming the argument.

    - model: local folder, .gguf file or Hugging Face Hub id. tokenizer: another tokenizer source.
    - dtype: "auto" (float32 on CPU, the checkpoint's dtype on GPU), "float32", "bfloat16",
      "float16" ("float", "half" too) or a torch dtype.
    - seed: seeds dummy weights and the sampling of requests that give no seed of their own.
    - max_model_len: longest prompt + output; default the model's positions, capped by the KV cache.
    - max_num_batched_tokens: tokens per step (8192 by default; at least max_model_len when
      chunked prefill is off). max_num_seqs: sequences per step (default 512 on CUDA, where
      larger decode batches use the matmuls better, and 256 on CPU).
    - enable_chunked_prefill: split long prompts over steps. enable_prefix_caching: reuse the KV
      of shared prompt prefixes.
    - reserve_output_kv: admit a waiting request only while the KV cache keeps room for the
      outputs the running requests are still expected to generate (all of them for requests
      that only stop at max_tokens; otherwise the share finished requests used), so sequences
      are rarely preempted and recomputed. False: admit while blocks are free, preempt later.
    - kv_cache_dtype: "auto" (the model's dtype), "fp8" or "fp8_e4m3" (float8 e4m3), "fp8_e5m2":
      an fp8 cache holds twice the tokens and halves the bytes decode steps read, at some
      accuracy (no scales: values saturate at 448 in e4m3). e4m3 needs a GPU of compute
      capability 8.9 or newer (Ada, Hopper); the CPU accepts both.
    - gpu_memory_utilization: share of GPU memory the engine may fill (KV cache included).
      kv_cache_memory_bytes: KV cache size instead (on CPU by default min(1 GiB, 10% of RAM)).
      num_gpu_blocks_override: a fixed number of KV blocks of block_size tokens (any device).
    - enforce_eager: never use CUDA graphs (otherwise decode steps, and steps with prompt tokens
      of up to cuda_graph_max_tokens tokens, replay captured graphs when the attention backend
      allows it: "triton"). cuda_graph_max_tokens: 0 captures decode steps only.
    - async_scheduling: schedule and launch step N+1 while the device still runs step N (its
      sampled tokens stay on the device and feed step N+1 directly; finishes are seen one step
      late). None: on for CUDA, off on CPU, where nothing runs in the background.
    - tensor_parallel_size: shards the model over this many GPUs (CPU processes on a CPU host);
      it must divide the model's attention and KV heads. pipeline_parallel_size: 1 only.
    - trust_remote_code, revision, load_format ("auto", "safetensors", "pt", or "dummy": random
      weights): loading.
    - max_logprobs: largest `logprobs` a request may ask for.
    - device: "auto" (CUDA when present), "cpu", "cuda", "cuda:N".
    - attention_backend: "auto" (triton on CUDA, torch on CPU), "torch" or "triton".
    - structured_outputs_config: {"backend": "auto" | "guidance"}: the grammar engine of
      requests with structured outputs (llguidance, which vLLM calls "guidance").
    - model_impl (vLLM's name): "auto" (llmbatch's own code where it exists, else the model's
      transformers code), "llmbatch" or "transformers" (the model's transformers code with
      llmbatch's paged KV cache and attention: any decoder-only causal LM whose code takes an
      external attention function; one device, no CUDA graphs).
    - runner: "auto", "generate" or "pooling" (embeddings, classification, scores);
      convert: "auto", "none", "embed" or "classify" (what a pooling runner makes of the
      model); task: the older single name ("generate", "embed", "embedding", "classify",
      "score"). "auto" decides from the checkpoint (`llmbatch.models.pooling`).
    - pooler_config (older name override_pooler_config): {"pooling_type": "LAST" | "MEAN" |
      "CLS", "normalize": bool, "use_activation": bool} over the checkpoint's own pooling.
    - enable_lora: requests may name a LoRA adapter (PEFT format); max_loras adapters are on
      the device at once (least recently used evicted), each of rank at most max_lora_rank;
      max_cpu_loras adapters stay loaded in host memory (default max_loras).
    - quantization (vLLM's name): None reads it from the checkpoint's config.json
      (``quantization_config``); "fp8" quantizes a full-precision checkpoint's weights to FP8
      at load (or names an fp8 checkpoint); "awq", "gptq", "compressed-tensors", "modelopt",
      "fbgemm_fp8" (and vLLM's "awq_marlin", "gptq_marlin", "modelopt_fp8") must name the
      checkpoint's own format. Quantized weights run on llmbatch's own model code.
    """

    model: str
    tokenizer: str | None = None
    dtype: str | torch.dtype = "auto"
    seed: int = 0
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    reserve_output_kv: bool = True
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    kv_cache_dtype: str = "auto"
    enforce_eager: bool = False
    cuda_graph_max_tokens: int = 1024
    async_scheduling: bool | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    kv_cache_memory_bytes: int | None = None
    num_gpu_blocks_override: int | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    load_format: str = "auto"
    max_logprobs: int = 20
    device: str = "auto"
    attention_backend: str = "auto"
    structured_outputs_config: dict[str, Any] | None = None
    model_impl: str = "auto"
    runner: str = "auto"
    convert: str = "auto"
    task: str = "auto"
    pooler_config: dict[str, Any] | None = None
    override_pooler_config: dict[str, Any] | None = None
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    quantization: str | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineArgs:
        """Arguments from vLLM-named kwargs; an unknown name is a ValueError listing the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ValueError(
                f"unknown engine argument(s) {unknown}; accepted engine arguments: {', '.join(known)}"
            )
        if "model" not in kwargs:
            raise ValueError(
                "engine argument 'model' is required (a local folder, .gguf file or Hub id)"
            )
        return cls(**kwargs)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("NoneType", "None")


def _matches(value: Any, tp: Any) -> bool:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(tp) or tp)


def _check_types(args: EngineArgs) -> None:
    hints = typing.get_type_hints(EngineArgs)
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if not _matches(value, hints[field.name]):
            raise ValueError(
                f"engine argument {field.name}={value!r} has type {type(value).__name__}; "
                f"expected {_type_name(hints[field.name])}"
            )


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _one_of(name: str, value: str, accepted: tuple[str, ...]) -> None:
    _require(
        value in accepted,
        f"{name}={value!r} is not supported; accepted: {', '.join(map(repr, accepted))}",
    )


def _check_values(a: EngineArgs) -> None:
    _require(
        bool(a.model), "engine argument model must name a model (folder, .gguf file or Hub id)"
    )
    check_dtype(a.dtype)
    _one_of("kv_cache_dtype", a.kv_cache_dtype, ("auto", *KV_CACHE_DTYPES))
    _one_of("load_format", a.load_format, LOAD_FORMATS)
    _one_of("attention_backend", a.attention_backend, ("auto", *ATTENTION_BACKENDS))
    _one_of("model_impl", a.model_impl, MODEL_IMPLS)
    if a.quantization is not None:
        _one_of("quantization", a.quantization, ACCEPTED_QUANTIZATION)
    for name in ("max_model_len", "max_num_batched_tokens", "kv_cache_memory_bytes"):
        value = getattr(a, name)
        _require(value is None or value >= 1, f"{name} must be a positive integer, got {value}")
    _require(
        a.max_num_seqs is None or a.max_num_seqs >= 1,
        f"max_num_seqs must be at least 1, got {a.max_num_seqs}",
    )
    _require(
        a.cuda_graph_max_tokens >= 0,
        f"cuda_graph_max_tokens must be 0 (decode graphs only) or more, got "
        f"{a.cuda_graph_max_tokens}",
    )
    _require(
        a.num_gpu_blocks_override is None or a.num_gpu_blocks_override >= 1,
        f"num_gpu_blocks_override must be at least 1, got {a.num_gpu_blocks_override}",
    )
    _require(
        a.max_num_batched_tokens is None or a.max_num_batched_tokens >= (a.max_num_seqs or 1),
        f"max_num_batched_tokens ({a.max_num_batched_tokens}) must be at least max_num_seqs "
        f"({a.max_num_seqs}) so that every running sequence can decode in one step",
    )
    _require(
        0.0 < a.gpu_memory_utilization <= 1.0,
        f"gpu_memory_utilization must be in (0, 1], got {a.gpu_memory_utilization}",
    )
    _require(
        a.block_size >= 1 and a.block_size & (a.block_size - 1) == 0 and a.block_size <= 256,
        f"block_size must be a power of two from 1 to 256 (e.g. 16 or 32), got {a.block_size}",
    )
    _require(
        a.tensor_parallel_size >= 1,
        f"tensor_parallel_size must be at least 1, got {a.tensor_parallel_size}",
    )
    _require(
        a.pipeline_parallel_size == 1,
        f"pipeline_parallel_size={a.pipeline_parallel_size} is not supported yet; only 1 is "
        "accepted (use tensor_parallel_size to split a model over GPUs)",
    )
    _require(a.max_logprobs >= 0, f"max_logprobs must be >= 0, got {a.max_logprobs}")
    _require(a.seed >= 0, f"seed must be >= 0, got {a.seed}")
    _check_device(a.device)
    check_backend(a.structured_outputs_config or {})
    check_pooling_args(a.runner, a.convert, a.task)
    _require(
        a.pooler_config is None or a.override_pooler_config is None,
        "give pooler_config or override_pooler_config (its older name), not both",
    )
    _require(a.max_loras >= 1, f"max_loras must be at least 1, got {a.max_loras}")
    _require(a.max_lora_rank >= 1, f"max_lora_rank must be at least 1, got {a.max_lora_rank}")
    _require(
        a.max_cpu_loras is None or a.max_cpu_loras >= a.max_loras,
        f"max_cpu_loras ({a.max_cpu_loras}) must be at least max_loras ({a.max_loras})",
    )


def _check_device(device: str) -> None:
    accepted = "accepted: 'auto', 'cpu', 'cuda' or 'cuda:N'"
    if device in ("auto", "cpu"):
        return
    _require(device.startswith("cuda"), f"device={device!r} is not supported; {accepted}")
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a valid device; {accepted}") from exc
    _require(
        torch.cuda.is_available(),
        f"device={device!r} was asked for but no CUDA GPU is available; use device='cpu' or 'auto'",
    )
    _require(
        parsed.index is None or parsed.index < torch.cuda.device_count(),
        f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are present",
    )
