"""Processor configuration: what to run and how rows are turned into requests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "model_source": (str, os.PathLike),
    "engine_kwargs": (dict,),
    "batch_size": (int,),
    "concurrency": (int, tuple, list),
    "accelerator_type": (str, type(None)),
    "runtime_env": (dict, type(None)),
    "has_image": (bool,),
    "apply_chat_template": (bool,),
    "chat_template": (str, type(None)),
    "tokenize": (bool,),
    "detokenize": (bool,),
    "max_pending_requests": (int, type(None)),
    "max_concurrent_batches": (int,),
    "max_error_rate": (float, int, type(None)),
    "max_engine_restarts": (int,),
    "engine_stall_timeout_s": (float, int),
}


@dataclass(slots=True, kw_only=True)
class LLMProcessorConfig:
    """How `build_llm_processor` runs llmbatch's engine over a dataset.

    Args:
        model_source: a local Hugging Face folder, a ``.gguf`` file, or a Hub id.
        engine_kwargs: engine arguments with vLLM's names (``max_model_len``, ``max_num_seqs``,
            ``enable_prefix_caching``, ...); an unknown name is an error when the engine starts.
        batch_size: rows per Arrow table that the stages read and emit. It is never a barrier:
            the engine takes new rows as soon as it has room, whatever batch they came in.
        concurrency: engine replicas. An int is an upper bound (one replica per GPU, or per
            tensor-parallel group; CPU processes on a host without GPUs); ``(min, max)`` sets both
            bounds, and a min the host cannot meet is an error. On Ray, the actor pool's size.
        accelerator_type: the GPU type each replica asks Ray for; no effect on one host.
        runtime_env: the replicas' Ray runtime environment; no effect on one host.
        has_image: rows may hold images in their ``messages`` (content parts
            ``{"type": "image", "image": X}`` or ``{"type": "image_url", "image_url": {"url": X}}``,
            X a PIL image, bytes, a ``{"bytes", "path"}`` dict, a path or an http(s)/data URL).
            The model's own processor (``AutoProcessor``) renders and tokenizes them; the model
            must have an image processor. An image that cannot be read makes its row an error
            row. Without it, a row holding an image stops the job with an error.
        apply_chat_template: turn each row's ``messages`` into ``prompt`` with the tokenizer's
            chat template (rows that give ``prompt`` directly skip it).
        chat_template: a Jinja template replacing the tokenizer's own.
        tokenize: tokenize prompts in a batched stage before the engine (otherwise the engine
            tokenizes each prompt string itself).
        detokenize: decode ``generated_tokens`` into ``generated_text`` for rows whose
            ``sampling_params`` set ``detokenize=False``.
        max_pending_requests: requests kept inside the engine at once (default: twice the
            engine's ``max_num_seqs``, 256 with ``has_image``), so its running batch never waits
            for new rows.
        max_concurrent_batches: how many ``batch_size`` tables of finished rows may wait for an
            earlier, slower row (output keeps input order); feeding pauses beyond that.
        max_engine_restarts: an engine (or replica) that dies is started again and its requests
            run again; after this many restarts in a row with no request finishing (not
            counting those that narrow down a request that kills it every time, which becomes
            an error row) the job stops, keeping every row already written.
        engine_stall_timeout_s: an engine that makes no progress for this long stops the job
            with an error showing every thread's stack (default 30 minutes, longer than any
            start-up).
    """

    model_source: str
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    concurrency: int | tuple[int, int] = 1
    accelerator_type: str | None = None
    runtime_env: dict[str, Any] | None = None
    has_image: bool = False
    apply_chat_template: bool = True
    chat_template: str | None = None
    tokenize: bool = True
    detokenize: bool = True
    max_pending_requests: int | None = None
    max_concurrent_batches: int = 8
    max_error_rate: float | None = None
    max_engine_restarts: int = 3
    engine_stall_timeout_s: float = 1800.0

    def __new__(cls, *args: Any, **kwargs: Any) -> LLMProcessorConfig:
        # Checked here because the generated __init__ would only say "unexpected keyword".
        accepted = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(accepted))
        if "model_source" not in kwargs and not unknown:
            raise TypeError(
                f"{cls.__name__} needs model_source: a local model folder, a .gguf file or a Hub id"
            )
        if unknown:
            raise TypeError(
                f"{cls.__name__} got unknown field(s) {', '.join(map(repr, unknown))}; "
                f"accepted fields: {', '.join(accepted)}"
            )
        return object.__new__(cls)

    def __post_init__(self) -> None:
        for name, types in _TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                accepted = " or ".join("None" if t is type(None) else t.__name__ for t in types)
                raise TypeError(
                    f"{type(self).__name__}.{name} must be {accepted}, "
                    f"got {type(value).__name__} ({value!r})"
                )
        self.model_source = os.fspath(self.model_source)
        if not self.model_source:
            raise ValueError(f"{type(self).__name__}.model_source must not be empty")
        self._check_engine_kwargs()
        self._check_positive("batch_size", self.batch_size)
        self._check_positive("max_concurrent_batches", self.max_concurrent_batches)
        if self.max_pending_requests is not None:
            self._check_positive("max_pending_requests", self.max_pending_requests)
        self._check_concurrency()
        if self.max_engine_restarts < 0:
            raise ValueError(
                f"{type(self).__name__}.max_engine_restarts must be >= 0, got "
                f"{self.max_engine_restarts}"
            )
        if self.engine_stall_timeout_s <= 0:
            raise ValueError(
                f"{type(self).__name__}.engine_stall_timeout_s must be > 0 seconds, got "
                f"{self.engine_stall_timeout_s}"
            )
        rate = self.max_error_rate
        if rate is not None and not 0 <= rate <= 1:
            raise ValueError(
                f"{type(self).__name__}.max_error_rate must be in [0, 1] (a fraction of the "
                f"rows, e.g. 0.5), got {rate!r}"
            )
        if self.has_image:
            self._check_image_options()

    @property
    def num_replicas(self) -> int:
        """The largest number of engine replicas asked for through ``concurrency``."""
        return self.concurrency if isinstance(self.concurrency, int) else self.concurrency[1]

    def _check_positive(self, name: str, value: int) -> None:
        if value < 1:
            raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {value}")

    def _check_image_options(self) -> None:
        # Images live in messages and are expanded into the prompt's tokens before the engine.
        needed = [name for name in ("apply_chat_template", "tokenize") if not getattr(self, name)]
        if needed:
            raise ValueError(
                f"{type(self).__name__}.has_image=True needs "
                f"{' and '.join(f'{name}=True' for name in needed)}: a row's images come from "
                "its messages and are turned into image tokens by the tokenize stage"
            )

    def _check_engine_kwargs(self) -> None:
        bad_keys = [k for k in self.engine_kwargs if not isinstance(k, str)]
        if bad_keys:
            raise TypeError(f"{type(self).__name__}.engine_kwargs keys must be str: {bad_keys!r}")
        model = self.engine_kwargs.get("model")
        if model is not None and os.fspath(model) != self.model_source:
            raise ValueError(
                f"{type(self).__name__}.engine_kwargs['model']={model!r} differs from "
                f"model_source={self.model_source!r}; give the model only as model_source"
            )

    def _check_concurrency(self) -> None:
        name = f"{type(self).__name__}.concurrency"
        value = self.concurrency
        if isinstance(value, int):
            self._check_positive("concurrency", value)
            return
        if len(value) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise TypeError(f"{name} must be an int or a (min, max) pair of ints, got {value!r}")
        low, high = value
        if not 1 <= low <= high:
            raise ValueError(f"{name}=({low}, {high}) needs 1 <= min <= max")
        self.concurrency = (low, high)


class vLLMEngineProcessorConfig(LLMProcessorConfig):  # noqa: N801 (Ray Data LLM's name)
    """Ray Data LLM's name for `LLMProcessorConfig`: the same fields, run by llmbatch's engine."""

    __slots__ = ()
