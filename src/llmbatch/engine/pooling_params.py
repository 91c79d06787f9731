"""Per-request parameters of pooling models (embeddings, classification, scores), with vLLM's
names."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

# what a request may ask of a pooling model; "score" runs as "classify" on a classifier
POOLING_REQUEST_TASKS = ("embed", "classify", "score", "encode")
_EMBED_ONLY = ("dimensions", "normalize")
_CLASSIFY_ONLY = ("use_activation",)


@dataclass(slots=True)
class PoolingParams:
    """What one pooling request returns.

    dimensions: keep the embedding's first ``dimensions`` values (Matryoshka models), then
    normalise; normalize: L2-normalise the embedding (None: the model's default, normally on);
    use_activation (older names softmax, activation): turn a classifier's logits into
    probabilities (None: on); truncate_prompt_tokens: keep only the prompt's last tokens.
    task is set by `LLM.embed` / `classify` / `score` / `encode`. A wrong type raises
    TypeError, an invalid value ValueError, at construction.
    """

    truncate_prompt_tokens: int | None = None
    dimensions: int | None = None
    normalize: bool | None = None
    use_activation: bool | None = None
    softmax: bool | None = None
    activation: bool | None = None
    task: str | None = None

    def __post_init__(self) -> None:
        for name in ("truncate_prompt_tokens", "dimensions"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, numbers.Integral) or isinstance(value, bool)
            ):
                raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
        for name in ("normalize", "use_activation", "softmax", "activation"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool or None, got {type(value).__name__}")
        if self.task is not None and self.task not in POOLING_REQUEST_TASKS:
            raise ValueError(
                f"task={self.task!r} is not a pooling task; accepted: "
                f"{', '.join(POOLING_REQUEST_TASKS)}"
            )
        if self.truncate_prompt_tokens is not None and self.truncate_prompt_tokens < 1:
            raise ValueError(
                f"truncate_prompt_tokens must be at least 1, got {self.truncate_prompt_tokens}"
            )
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError(f"dimensions must be at least 1, got {self.dimensions}")
        given = {
            name: getattr(self, name)
            for name in ("use_activation", "softmax", "activation")
            if getattr(self, name) is not None
        }
        if len(set(given.values())) > 1:
            raise ValueError(f"{' and '.join(given)} disagree; give use_activation only")
        if given:
            self.use_activation = next(iter(given.values()))
        self.softmax = self.activation = None

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> PoolingParams:
        """Builds params from a dict of vLLM-named keys; unknown keys are a ValueError."""
        if not isinstance(params, dict):
            raise TypeError(f"pooling params must be a dict, got {type(params).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(
                f"unknown pooling parameter(s) {unknown}; accepted: {', '.join(known)}"
            )
        return cls(**params)

    def clone(self) -> PoolingParams:
        return dataclasses.replace(self)

    def for_task(self, task: str) -> PoolingParams:
        """A copy for ``task`` ("embed" or "classify": what the model returns); a ValueError
        when a parameter belongs to the other task."""
        other = _CLASSIFY_ONLY if task == "embed" else _EMBED_ONLY
        wrong = [name for name in other if getattr(self, name) is not None]
        if wrong:
            raise ValueError(
                f"{', '.join(wrong)} do(es) not apply to a {task} request; "
                f"{task} takes {', '.join(_EMBED_ONLY if task == 'embed' else _CLASSIFY_ONLY)}"
            )
        return dataclasses.replace(self, task=task)
