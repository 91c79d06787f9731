"""Per-request sampling parameters, with vLLM's names and semantics."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmbatch.engine.structured_outputs_params import (
    StructuredOutputsParams,
    from_guided_decoding,
)

# Temperatures below this are greedy, as in vLLM.
GREEDY_TEMPERATURE = 1e-5


@dataclass(slots=True)
class SamplingParams:
    """How to sample one request's output.

    temperature 0 is greedy; top_k 0 or -1 and top_p 1 turn those filters off; max_tokens None
    generates until a stop condition or max_model_len. n answers per prompt (each sample seeded
    ``seed + i`` when a seed is given). structured_outputs constrains the output (a
    StructuredOutputsParams or a dict of its fields). bad_words are never generated (each word
    as its tokens, with and without a leading space); allowed_token_ids, when given, are the only
    tokens that may be; logits_processors are functions ``f(output_token_ids, logits) ->
    logits`` (or ``f(prompt_token_ids, output_token_ids, logits)``) applied to the request's row
    of logits before sampling. prompt_logprobs asks for the log-probabilities of the prompt's
    tokens. A wrong type raises TypeError, an invalid value ValueError, at construction.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None
    prompt_logprobs: int | None = None
    bad_words: list[str] | None = None
    allowed_token_ids: list[int] | None = None
    logits_processors: list[Callable[..., Any]] | None = None
    structured_outputs: StructuredOutputsParams | None = None
    guided_decoding: StructuredOutputsParams | None = None
    """The older name of structured_outputs (deprecated): moved there on construction."""

    def __post_init__(self) -> None:
        self.structured_outputs = StructuredOutputsParams.of(self.structured_outputs)
        if self.guided_decoding is not None:
            if self.structured_outputs is not None:
                raise ValueError(
                    "give structured_outputs or guided_decoding (its older name), not both"
                )
            self.structured_outputs = from_guided_decoding(self.guided_decoding)
            self.guided_decoding = None
        self._check_types()
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is not None:
            self.stop = list(self.stop)
        if self.stop_token_ids is not None:
            self.stop_token_ids = [int(t) for t in self.stop_token_ids]
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = [int(t) for t in self.allowed_token_ids]
        if self.bad_words is not None:
            self.bad_words = list(self.bad_words)
        if self.logits_processors is not None:
            self.logits_processors = list(self.logits_processors)
        self._check_values()

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> SamplingParams:
        """Builds params from a dict of vLLM-named keys; unknown keys are a ValueError."""
        if not isinstance(params, dict):
            raise TypeError(f"sampling params must be a dict, got {type(params).__name__}")
        unknown = sorted(set(params) - set(ACCEPTED_KEYS))
        if unknown:
            raise ValueError(
                f"unknown sampling parameter(s) {unknown}; accepted: {', '.join(ACCEPTED_KEYS)}"
            )
        return cls(**params)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def needs_host_logits(self) -> bool:
        """Whether sampling reads the request's token history on the host (penalties, bad
        words, logits processors): the step must wait for the previous one's tokens."""
        return self.needs_penalties or bool(self.bad_words) or bool(self.logits_processors)

    @property
    def needs_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    def _check_types(self) -> None:
        for name, accepted in _FIELD_TYPES.items():
            value = getattr(self, name)
            if value is None and _NULLABLE[name]:
                continue
            ok = isinstance(value, accepted) and not (
                isinstance(value, bool) and bool not in accepted
            )
            if not ok:
                names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in accepted)
                if _NULLABLE[name]:
                    names += " or None"
                raise TypeError(
                    f"sampling parameter {name}={value!r} has type {type(value).__name__}; "
                    f"expected {names}"
                )
            if accepted == (numbers.Integral,):
                setattr(self, name, int(value))
            elif accepted == (numbers.Real,):
                setattr(self, name, float(value))
        if self.stop is not None and not isinstance(self.stop, str):
            _check_items("stop", self.stop, str)
        if self.stop_token_ids is not None:
            _check_items("stop_token_ids", self.stop_token_ids, numbers.Integral)
        if self.allowed_token_ids is not None:
            _check_items("allowed_token_ids", self.allowed_token_ids, numbers.Integral)
        if self.bad_words is not None:
            _check_items("bad_words", self.bad_words, str)
        for processor in self.logits_processors or ():
            if not callable(processor):
                raise TypeError(f"logits_processors must hold functions, got {processor!r}")

    def _check_values(self) -> None:
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _require(math.isfinite(value), f"{name} must be a finite number, got {value}")
        _require(
            math.isfinite(self.repetition_penalty),
            f"repetition_penalty must be a finite number, got {self.repetition_penalty}",
        )
        _require(self.n >= 1, f"n must be at least 1, got {self.n}")
        _require(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        _require(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        _require(
            self.top_k >= -1, f"top_k must be -1 or 0 (off) or a positive integer, got {self.top_k}"
        )
        _require(0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _require(-2 <= value <= 2, f"{name} must be in [-2, 2], got {value}")
        _require(
            self.repetition_penalty > 0,
            f"repetition_penalty must be > 0, got {self.repetition_penalty}",
        )
        _require(
            self.max_tokens is None or self.max_tokens >= 1,
            f"max_tokens must be at least 1, got {self.max_tokens}",
        )
        _require(self.min_tokens >= 0, f"min_tokens must be >= 0, got {self.min_tokens}")
        _require(
            self.max_tokens is None or self.min_tokens <= self.max_tokens,
            f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})",
        )
        _require(
            self.logprobs is None or self.logprobs >= 0,
            f"logprobs must be >= 0, got {self.logprobs}",
        )
        _require(self.seed is None or self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _require(
            self.prompt_logprobs is None or self.prompt_logprobs >= 0,
            f"prompt_logprobs must be >= 0, got {self.prompt_logprobs}",
        )
        _require(
            self.allowed_token_ids is None or len(self.allowed_token_ids) > 0,
            "allowed_token_ids must hold at least one token id (or be None)",
        )
        _require(
            all(t >= 0 for t in self.allowed_token_ids or ()),
            f"allowed_token_ids must be non-negative, got {self.allowed_token_ids}",
        )
        _require(all(self.bad_words or [True]), "bad_words must not be empty strings")
        _require(
            self.truncate_prompt_tokens is None or self.truncate_prompt_tokens >= 1,
            f"truncate_prompt_tokens must be at least 1, got {self.truncate_prompt_tokens}",
        )
        if self.stop:
            _require(all(self.stop), "stop strings must not be empty")
            _require(
                self.detokenize,
                "stop strings need detokenize=True (the text is what they are matched against)",
            )
        if self.stop_token_ids:
            _require(
                all(t >= 0 for t in self.stop_token_ids),
                f"stop_token_ids must be non-negative, got {self.stop_token_ids}",
            )


_INT = (numbers.Integral,)
_REAL = (numbers.Real,)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "n": _INT,
    "temperature": _REAL,
    "top_p": _REAL,
    "top_k": _INT,
    "min_p": _REAL,
    "seed": _INT,
    "presence_penalty": _REAL,
    "frequency_penalty": _REAL,
    "repetition_penalty": _REAL,
    "max_tokens": _INT,
    "min_tokens": _INT,
    "stop": (str, list, tuple),
    "stop_token_ids": (list, tuple),
    "include_stop_str_in_output": (bool,),
    "ignore_eos": (bool,),
    "logprobs": _INT,
    "detokenize": (bool,),
    "skip_special_tokens": (bool,),
    "truncate_prompt_tokens": _INT,
    "prompt_logprobs": _INT,
    "bad_words": (list, tuple),
    "allowed_token_ids": (list, tuple),
    "logits_processors": (list, tuple),
}
_TYPE_NAMES = {numbers.Integral: "int", numbers.Real: "float"}
_NULLABLE = {f.name: "None" in str(f.type) for f in dataclasses.fields(SamplingParams)}
ACCEPTED_KEYS = tuple(f.name for f in dataclasses.fields(SamplingParams))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_items(name: str, values: list[Any], item_type: type) -> None:
    for value in values:
        if not isinstance(value, item_type) or isinstance(value, bool):
            kind = _TYPE_NAMES.get(item_type, item_type.__name__)
            raise TypeError(f"sampling parameter {name} must hold {kind} values, got {value!r}")
