"""`SGLangEngineProcessorConfig`: Ray Data LLM's SGLang processor, run on llmbatch's engine.

Its ``engine_kwargs`` and the rows' ``sampling_params`` use SGLang's names; each is mapped onto
the engine's (vLLM's) name, and a name without a counterpart is an error listing those that
have one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from llmbatch.llm.config import (
    ENGINE_FIELD_TYPES,
    GENERATE,
    MODEL_SOURCE_HINT,
    EngineProcessorConfig,
    check_task_type,
)
from llmbatch.llm.config_fields import NOT_IDENTITY

# SGLang server argument -> engine argument, for those with the same meaning.
_ENGINE_NAMES = {
    "tp_size": "tensor_parallel_size",
    "pp_size": "pipeline_parallel_size",
    "context_length": "max_model_len",
    "mem_fraction_static": "gpu_memory_utilization",
    "max_running_requests": "max_num_seqs",
    "dtype": "dtype",
    "kv_cache_dtype": "kv_cache_dtype",
    "random_seed": "seed",
    "trust_remote_code": "trust_remote_code",
    "revision": "revision",
    "tokenizer_path": "tokenizer",
    "load_format": "load_format",
    "page_size": "block_size",
    "device": "device",
    "disable_cuda_graph": "enforce_eager",
    "quantization": "quantization",
}
_ATTENTION_BACKENDS = {"triton": "triton", "torch_native": "torch"}
# Handled one by one in `_engine_kwargs`.
_SPECIAL_ENGINE_NAMES = (
    "chunked_prefill_size",
    "max_total_tokens",
    "disable_radix_cache",
    "attention_backend",
    "dp_size",
    "skip_tokenizer_init",
    "task",
    "model_path",
)
ENGINE_NAMES = (*_ENGINE_NAMES, *_SPECIAL_ENGINE_NAMES)

# SGLang sampling parameter -> the engine's (vLLM's) name.
_SAMPLING_NAMES = {
    "max_new_tokens": "max_tokens",
    "min_new_tokens": "min_tokens",
    "stop": "stop",
    "stop_token_ids": "stop_token_ids",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "repetition_penalty": "repetition_penalty",
    "ignore_eos": "ignore_eos",
    "skip_special_tokens": "skip_special_tokens",
    "no_stop_trim": "include_stop_str_in_output",
    "n": "n",
    "sampling_seed": "seed",
}
# Constrained decoding, as vLLM's structured outputs.
_STRUCTURED_NAMES = {"json_schema": "json", "regex": "regex", "ebnf": "grammar"}
SAMPLING_NAMES = (*_SAMPLING_NAMES, *_STRUCTURED_NAMES)
# SGLang generates up to 128 tokens when a request gives no max_new_tokens (vLLM: 16).
DEFAULT_MAX_NEW_TOKENS = 128


def _default_block_size() -> int:
    from llmbatch.engine.args import EngineArgs

    return EngineArgs.__dataclass_fields__["block_size"].default


def sampling_params_from_sglang(params: dict[str, Any]) -> dict[str, Any]:
    """A row's SGLang sampling params with the engine's names; an unknown name is a ValueError."""
    unknown = sorted(set(params) - set(SAMPLING_NAMES))
    if unknown:
        raise ValueError(
            f"unknown SGLang sampling parameter(s) {unknown}; accepted: {', '.join(SAMPLING_NAMES)}"
        )
    mapped = {_SAMPLING_NAMES[k]: v for k, v in params.items() if k in _SAMPLING_NAMES}
    mapped.setdefault("max_tokens", DEFAULT_MAX_NEW_TOKENS)
    structured = {_STRUCTURED_NAMES[k]: v for k, v in params.items() if k in _STRUCTURED_NAMES}
    if len(structured) > 1:
        raise ValueError(
            f"give at most one of {', '.join(_STRUCTURED_NAMES)}, got {sorted(structured)}"
        )
    if structured:
        mapped["structured_outputs"] = structured
    return mapped


@dataclass(slots=True, kw_only=True)
class SGLangEngineProcessorConfig(EngineProcessorConfig):
    """Ray Data LLM's SGLang processor config, run by llmbatch's engine: ``engine_kwargs``
    with SGLang's server argument names (``tp_size``, ``context_length``,
    ``mem_fraction_static``, ``max_running_requests``, ``chunked_prefill_size``, ...) and rows
    whose ``sampling_params`` use SGLang's names (``max_new_tokens``, default 128, ...).
    The other fields are those of `vLLMEngineProcessorConfig`."""

    model_source: str
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    concurrency: int | tuple[int, int] = 1
    accelerator_type: str | None = None
    runtime_env: dict[str, Any] | None = None
    max_pending_requests: int | None = None
    max_concurrent_batches: int = 8
    max_tasks_in_flight_per_actor: int | None = None
    max_error_rate: float | None = None
    max_engine_restarts: int = 3
    engine_stall_timeout_s: float = 1800.0
    task_type: str = GENERATE
    should_continue_on_error: bool | None = None
    chat_template_stage: Any = None
    tokenize_stage: Any = None
    detokenize_stage: Any = None
    prepare_multimodal_stage: Any = None
    dashboard: bool = field(default=False, metadata=NOT_IDENTITY)
    dashboard_host: str = field(default="127.0.0.1", metadata=NOT_IDENTITY)
    dashboard_port: int = field(default=0, metadata=NOT_IDENTITY)

    sampling_params_names: ClassVar[str] = "sglang"
    _REQUIRED: ClassVar[dict[str, str]] = {"model_source": MODEL_SOURCE_HINT}
    _TYPES: ClassVar[dict[str, tuple[type, ...]]] = ENGINE_FIELD_TYPES

    def __post_init__(self) -> None:
        self.check_types()
        check_task_type(type(self).__name__, self.task_type, accepted=(GENERATE,))
        self.check_engine_fields()
        self.engine_kwargs_with_vllm_names()

    def engine_kwargs_with_vllm_names(self) -> dict[str, Any]:
        owner = f"{type(self).__name__}.engine_kwargs"
        given = self.engine_kwargs
        unknown = sorted(set(given) - set(ENGINE_NAMES))
        if unknown:
            raise ValueError(
                f"{owner}: unknown SGLang engine argument(s) {unknown}; accepted (mapped onto "
                f"llmbatch's engine): {', '.join(ENGINE_NAMES)}"
            )
        mapped = {_ENGINE_NAMES[k]: v for k, v in given.items() if k in _ENGINE_NAMES}
        chunk = given.get("chunked_prefill_size")
        if chunk is not None:
            if chunk == -1:
                mapped["enable_chunked_prefill"] = False
            else:
                mapped["max_num_batched_tokens"] = chunk
        total = given.get("max_total_tokens")
        if total is not None:
            if not isinstance(total, int) or isinstance(total, bool) or total < 1:
                raise ValueError(
                    f"{owner}['max_total_tokens'] must be a positive int, got {total!r}"
                )
            block_size = mapped.get("block_size", _default_block_size())
            mapped["num_gpu_blocks_override"] = -(-total // block_size)
        if "disable_radix_cache" in given:
            mapped["enable_prefix_caching"] = not given["disable_radix_cache"]
        backend = given.get("attention_backend")
        if backend is not None:
            if backend not in _ATTENTION_BACKENDS:
                raise ValueError(
                    f"{owner}['attention_backend']={backend!r}; accepted: "
                    f"{', '.join(map(repr, _ATTENTION_BACKENDS))}"
                )
            mapped["attention_backend"] = _ATTENTION_BACKENDS[backend]
        if given.get("dp_size", 1) != 1:
            raise ValueError(
                f"{owner}['dp_size']={given['dp_size']!r}: set concurrency={given['dp_size']} "
                "instead (one engine replica per GPU or tensor-parallel group)"
            )
        if given.get("task", GENERATE) != GENERATE:
            check_task_type(owner, given["task"], accepted=(GENERATE,))
        model = given.get("model_path")
        if model is not None and os.fspath(model) != self.model_source:
            raise ValueError(
                f"{owner}['model_path']={model!r} differs from model_source="
                f"{self.model_source!r}; give the model only as model_source"
            )
        return mapped


def sglang_sampling_params_of(value: Any) -> Any:
    """A row's ``sampling_params`` with SGLang's names as the engine's SamplingParams."""
    from llmbatch.llm.engine_stage import sampling_params_of

    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise TypeError(f"'sampling_params' must be a dict, got {type(value).__name__}")
    # Arrow structs give keys that other rows set (and this one did not) as None.
    given = {k: v for k, v in value.items() if v is not None}
    return sampling_params_of(sampling_params_from_sglang(given))
