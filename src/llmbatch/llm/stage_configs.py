"""Ray Data LLM's per-stage configs (``chat_template_stage=...`` and its siblings): each given as
a bool, a dict or the config object, with the same fields and defaults.

The stages of an llmbatch processor run in one process (on Ray, in one actor per engine
replica), so the fields that size separate Ray stages (``batch_size``, ``concurrency``,
``runtime_env``, ``num_cpus``, ``memory``) have no effect; setting one logs a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from llmbatch.llm.config_fields import CheckedFields

_NONE = type(None)
_RESOURCE_FIELDS = ("batch_size", "concurrency", "runtime_env", "num_cpus", "memory")


@dataclass(slots=True, kw_only=True)
class StageConfig(CheckedFields):
    """Fields every stage config has."""

    enabled: bool = True
    batch_size: int | None = None
    concurrency: int | tuple[int, int] | None = None
    runtime_env: dict[str, Any] | None = None
    num_cpus: float | None = None
    memory: float | None = None

    _TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "enabled": (bool,),
        "batch_size": (int, _NONE),
        "concurrency": (int, tuple, list, _NONE),
        "runtime_env": (dict, _NONE),
        "num_cpus": (int, float, _NONE),
        "memory": (int, float, _NONE),
    }

    def __post_init__(self) -> None:
        self.check_types()
        if self.batch_size is not None:
            self.check_positive("batch_size", self.batch_size)
        self.check_concurrency()

    def no_effect(self) -> list[str]:
        """The fields set here that llmbatch does not use, as ``name=value``."""
        return [
            f"{name}={getattr(self, name)!r}"
            for name in _RESOURCE_FIELDS
            if getattr(self, name) is not None
        ]


@dataclass(slots=True, kw_only=True)
class ChatTemplateStageConfig(StageConfig):
    """The chat template stage: ``messages`` -> ``prompt``. ``model_source`` names another model
    whose tokenizer holds the template; ``chat_template`` replaces the template;
    ``chat_template_kwargs`` are passed to it (e.g. Qwen3's ``enable_thinking=False``)."""

    model_source: str | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    _TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "model_source": (str, _NONE),
        "chat_template": (str, _NONE),
        "chat_template_kwargs": (dict, _NONE),
    }


@dataclass(slots=True, kw_only=True)
class TokenizerStageConfig(StageConfig):
    """The tokenize stage: ``prompt`` -> token ids ahead of the engine; ``model_source`` names
    another model whose tokenizer is used."""

    model_source: str | None = None

    _TYPES: ClassVar[dict[str, tuple[type, ...]]] = {"model_source": (str, _NONE)}


@dataclass(slots=True, kw_only=True)
class DetokenizeStageConfig(StageConfig):
    """The detokenize stage: ``generated_tokens`` -> ``generated_text`` for rows the engine did
    not detokenize; ``model_source`` names another model whose tokenizer is used."""

    model_source: str | None = None

    _TYPES: ClassVar[dict[str, tuple[type, ...]]] = {"model_source": (str, _NONE)}


CONTENT_FORMATS = ("string", "openai")


@dataclass(slots=True, kw_only=True)
class PrepareMultimodalStageConfig(StageConfig):
    """Image inputs (llmbatch's ``has_image``): images in ``messages`` or a row's
    ``multimodal_data`` go through the model's own processor. The other fields are vLLM's
    settings for its multimodal parser; llmbatch's own path has no use for them (a warning says
    so when one is set)."""

    model_config_kwargs: dict[str, Any] | None = None
    chat_template_content_format: str | None = "string"
    apply_sys_msg_formatting: bool | None = False

    _TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
        "model_config_kwargs": (dict, _NONE),
        "chat_template_content_format": (str, _NONE),
        "apply_sys_msg_formatting": (bool, _NONE),
    }

    def __post_init__(self) -> None:
        StageConfig.__post_init__(self)
        value = self.chat_template_content_format
        if value is not None and value not in CONTENT_FORMATS:
            raise ValueError(
                f"{type(self).__name__}.chat_template_content_format={value!r}; accepted: "
                f"{', '.join(map(repr, CONTENT_FORMATS))}"
            )

    def no_effect(self) -> list[str]:
        unused = StageConfig.no_effect(self)
        if self.model_config_kwargs:
            unused.append(f"model_config_kwargs={self.model_config_kwargs!r}")
        if self.chat_template_content_format not in (None, "string"):
            unused.append(f"chat_template_content_format={self.chat_template_content_format!r}")
        if self.apply_sys_msg_formatting:
            unused.append("apply_sys_msg_formatting=True")
        return unused


@dataclass(slots=True, kw_only=True)
class HttpRequestStageConfig(StageConfig):
    """The HTTP request stage (it cannot be disabled)."""


S = TypeVar("S", bound=StageConfig)


def resolve_stage_config(value: Any, config_type: type[S], owner: str) -> S:
    """A stage config given as a bool (enabled or not), a dict of its fields or the config
    object, as a config object of `config_type` (a copy: the given one is never changed)."""
    if isinstance(value, config_type):
        return config_type(**value.field_values())
    if isinstance(value, bool):
        return config_type(enabled=value)
    if isinstance(value, dict):
        try:
            return config_type(**value)
        except TypeError as exc:
            raise TypeError(f"{owner}: {exc}") from None
    raise TypeError(
        f"{owner} must be a bool, a dict or a {config_type.__name__}, got "
        f"{type(value).__name__} ({value!r})"
    )
