"""The engine's resolved configuration: every "auto" decided once, before anything is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from llmbatch.engine.args import EngineArgs
from llmbatch.layers.attention.base import KV_CACHE_DTYPES
from llmbatch.models.encoder import encoder_max_length
from llmbatch.models.loader import check_own_code_for, read_config, resolve_dtype
from llmbatch.models.pooling import (
    PoolerConfig,
    build_pooler_config,
    pooling_task,
    read_sentence_transformers_pooling,
    wants_pooling,
)
from llmbatch.models.quant_formats import CheckpointQuantization, resolve_quantization
from llmbatch.models.registry import (
    architecture_of,
    max_positions_of,
    own_architecture_of,
    resolve_model_impl,
)
from llmbatch.models.source import resolve_model_folder

DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The part of an engine's config the scheduler reads."""

    max_num_batched_tokens: int
    max_num_seqs: int
    enable_chunked_prefill: bool = True
    reserve_output_kv: bool = True


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What every component of an engine is built from: `EngineArgs` with each "auto" and
    default resolved for this machine and model (`resolve_config`).

    The one value known only once the model is loaded is the KV cache's size: `with_kv_cache`
    records it (and caps a default max_model_len at what the cache holds) before the model
    runner and scheduler are built; `num_kv_blocks` is None until then.
    """

    args: EngineArgs
    """What the config was resolved from."""
    model: str
    """A local folder with config.json (a Hub id downloaded, a .gguf file converted)."""
    tokenizer: str | None
    trust_remote_code: bool
    revision: str | None
    load_format: str
    seed: int
    dtype: torch.dtype
    device: str
    """"cpu", "cuda" or "cuda:N"."""
    attention_backend: str
    model_impl: str
    """"llmbatch" (our own model code) or "transformers" (the model's transformers code)."""
    quantization: str | None
    """vLLM's name of the weights' quantization (the checkpoint's, or "fp8" at load), or None."""
    max_model_len: int
    max_num_batched_tokens: int
    max_num_seqs: int
    enable_chunked_prefill: bool
    enable_prefix_caching: bool
    reserve_output_kv: bool
    block_size: int
    kv_cache_dtype: torch.dtype
    gpu_memory_utilization: float
    kv_cache_memory_bytes: int | None
    num_gpu_blocks_override: int | None
    cuda_graphs: bool
    """Steps replay captured CUDA graphs (a CUDA device, the triton backend, one rank, our own
    model code, and enforce_eager off)."""
    cuda_graph_max_tokens: int
    async_scheduling: bool
    tensor_parallel_size: int
    max_logprobs: int
    pooler: PoolerConfig | None = None
    """Set for a pooling model (runner "pooling"): what each prompt returns instead of text."""
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int = 1
    num_kv_blocks: int | None = None

    @property
    def scheduler(self) -> SchedulerConfig:
        return SchedulerConfig(
            self.max_num_batched_tokens,
            self.max_num_seqs,
            self.enable_chunked_prefill,
            self.reserve_output_kv,
        )

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def on_device(self, device: str) -> EngineConfig:
        """The same config for another device of the same kind (a replica's own GPU)."""
        return dataclasses.replace(self, device=device)

    def with_kv_cache(self, num_blocks: int) -> EngineConfig:
        """The final config, once the KV cache's size is measured: a default max_model_len is
        capped at the tokens the cache holds; an explicit one that does not fit is an error."""
        capacity = num_blocks * self.block_size
        max_model_len = self.max_model_len
        if max_model_len > capacity:
            if self.args.max_model_len is not None:
                raise ValueError(
                    f"the KV cache holds {capacity} tokens, fewer than one request of "
                    f"max_model_len={max_model_len}; raise kv_cache_memory_bytes or "
                    "gpu_memory_utilization (or num_gpu_blocks_override), use "
                    "kv_cache_dtype='fp8', or lower max_model_len"
                )
            max_model_len = capacity
        return dataclasses.replace(self, max_model_len=max_model_len, num_kv_blocks=num_blocks)


# arguments that every machine and model take as given
_UNCHANGED = (
    "tokenizer",
    "trust_remote_code",
    "revision",
    "load_format",
    "seed",
    "enable_chunked_prefill",
    "enable_prefix_caching",
    "reserve_output_kv",
    "block_size",
    "gpu_memory_utilization",
    "kv_cache_memory_bytes",
    "num_gpu_blocks_override",
    "cuda_graph_max_tokens",
    "tensor_parallel_size",
    "max_logprobs",
    "enable_lora",
    "max_loras",
    "max_lora_rank",
)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_config(args: EngineArgs) -> EngineConfig:
    """Resolves every "auto" of `args` for this machine and the model's config.json (the model
    folder is found, downloaded or converted here, once)."""
    device = resolve_device(args.device)
    folder = resolve_model_folder(args.model, args.revision, args.load_format != "dummy")
    hf_config = read_config(folder, args.trust_remote_code)
    dtype = resolve_dtype(args.dtype, hf_config, torch.device(device))
    kv_cache_dtype = KV_CACHE_DTYPES.get(args.kv_cache_dtype, dtype)
    _check_kv_cache_dtype_on(device, args.kv_cache_dtype, kv_cache_dtype)
    backend = args.attention_backend
    if backend == "auto":
        backend = "triton" if device.startswith("cuda") else "torch"
    elif backend == "triton" and not device.startswith("cuda"):
        raise ValueError("attention_backend='triton' needs a CUDA device; use 'torch' or 'auto'")
    pooler = resolve_pooler(args, folder, hf_config)
    if pooler is None:
        model_impl = resolve_model_impl(hf_config, args.model_impl, args.trust_remote_code)
    else:
        model_impl = "transformers" if pooler.encoder else "llmbatch"
    quantization = resolve_quantization(folder, hf_config, args.quantization)
    if model_impl == "transformers":
        check_own_code_for(quantization)
    _check_feature_support(args, model_impl, pooler, quantization)
    if model_impl == "transformers" and args.tensor_parallel_size > 1:
        raise ValueError(
            f"tensor_parallel_size={args.tensor_parallel_size}: a model run with its transformers "
            "code (model_impl='transformers') runs on one device; use tensor_parallel_size=1 "
            "and concurrency for more devices"
        )
    max_num_seqs = args.max_num_seqs or _default_max_num_seqs(device, args.max_num_batched_tokens)
    max_positions = (
        encoder_max_length(hf_config)
        if pooler is not None and pooler.encoder
        else max_positions_of(hf_config, model_impl)
    )
    max_model_len, max_batched = _resolve_lengths(args, max_num_seqs, max_positions)
    return EngineConfig(
        args=args,
        model=folder,
        **{name: getattr(args, name) for name in _UNCHANGED},
        dtype=dtype,
        kv_cache_dtype=kv_cache_dtype,
        device=device,
        attention_backend=backend,
        model_impl=model_impl,
        quantization=quantization.method if quantization is not None else None,
        max_model_len=max_model_len,
        max_num_batched_tokens=max_batched,
        max_num_seqs=max_num_seqs,
        pooler=pooler,
        max_cpu_loras=args.max_cpu_loras or args.max_loras,
        cuda_graphs=(
            device.startswith("cuda")
            and backend == "triton"
            and not args.enforce_eager
            and args.tensor_parallel_size == 1
            # transformers' code may sync with the host (e.g. dynamic rope), which capture forbids
            and model_impl == "llmbatch"
        ),
        async_scheduling=(
            args.async_scheduling
            if args.async_scheduling is not None
            else device.startswith("cuda")
        ),
    )


def resolve_pooler(args: EngineArgs, folder: str, hf_config: object) -> PoolerConfig | None:
    """The pooler of a pooling engine (runner "pooling", or "auto" on a checkpoint that is a
    pooling model); None for generation. A pooling model of a family with llmbatch code runs
    on the engine; any other (BERT-like encoders) on its transformers code (`encoder`)."""
    architectures = list(getattr(hf_config, "architectures", None) or [])
    st_pooling = read_sentence_transformers_pooling(folder)
    if not wants_pooling(
        args.runner, args.convert, args.task, architectures, st_pooling is not None
    ):
        return None
    if args.model_impl == "llmbatch":
        architecture_of(hf_config)  # a clear error when our own code has no such family
    encoder = args.model_impl == "transformers" or own_architecture_of(hf_config) is None
    return build_pooler_config(
        pooling_task(args.convert, args.task, architectures),
        hf_config,
        st_pooling,
        args.pooler_config or args.override_pooler_config,
        encoder,
    )


def _check_feature_support(
    args: EngineArgs,
    model_impl: str,
    pooler: PoolerConfig | None,
    quantization: CheckpointQuantization | None,
) -> None:
    """Pooling models and LoRA adapters run on one device with llmbatch's own model code; LoRA
    on full-precision weights."""
    features = [
        name
        for name, used in (("a pooling model", pooler is not None), ("LoRA", args.enable_lora))
        if used
    ]
    for feature in features:
        if args.tensor_parallel_size > 1:
            raise ValueError(
                f"{feature} runs with tensor_parallel_size=1; scale it with data-parallel "
                "replicas (concurrency) instead"
            )
    if args.enable_lora and quantization is not None:
        raise ValueError(
            f"enable_lora runs on full-precision weights; this model's are quantized "
            f"({quantization.method}): use its unquantized checkpoint for LoRA adapters"
        )
    if args.enable_lora and model_impl != "llmbatch":
        raise ValueError(
            "enable_lora needs llmbatch's own code for the model (model_impl='llmbatch'); "
            "this model runs with its transformers code"
        )


def _check_kv_cache_dtype_on(device: str, name: str, dtype: torch.dtype) -> None:
    if dtype != torch.float8_e4m3fn or device == "cpu":
        return
    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < (8, 9):
        raise ValueError(
            f"kv_cache_dtype={name!r} (fp8 e4m3) needs a GPU of compute capability 8.9 or "
            f"newer; this one has {capability[0]}.{capability[1]}: use 'fp8_e5m2' or 'auto'"
        )


def _default_max_num_seqs(device: str, max_num_batched_tokens: int | None) -> int:
    default = 512 if device.startswith("cuda") else 256
    return min(default, max_num_batched_tokens or default)


def _resolve_lengths(args: EngineArgs, max_num_seqs: int, model_max_len: int) -> tuple[int, int]:
    """max_model_len (before the KV cache's cap) and max_num_batched_tokens."""
    max_model_len = args.max_model_len or model_max_len
    if max_model_len > model_max_len:
        raise ValueError(
            f"max_model_len={max_model_len} exceeds the {model_max_len} positions the model "
            "supports; lower max_model_len"
        )
    max_batched = args.max_num_batched_tokens
    if max_batched is None:
        max_batched = max(DEFAULT_MAX_NUM_BATCHED_TOKENS, max_num_seqs)
        if not args.enable_chunked_prefill:
            max_batched = max(max_batched, max_model_len)
    if not args.enable_chunked_prefill and max_batched < max_model_len:
        if args.max_model_len is not None:
            raise ValueError(
                f"max_num_batched_tokens={max_batched} is smaller than max_model_len="
                f"{max_model_len}: without chunked prefill a whole prompt must fit one step; "
                "raise max_num_batched_tokens, lower max_model_len or enable_chunked_prefill"
            )
        max_model_len = max_batched
    return max_model_len, max_batched
