"""What a request's output must match: vLLM's `StructuredOutputsParams`, checked on construction."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from typing import Any

KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
_TEXT_OR_NONE = (str, type(None))


@dataclass(slots=True)
class StructuredOutputsParams:
    """Exactly one kind of constraint on a request's output, with vLLM's names:

    - json: a JSON schema, as a dict, JSON text or a pydantic model class;
    - regex: a regular expression the whole output matches;
    - choice: a list of strings, one of which is the output;
    - grammar: a context-free grammar in Lark syntax, or GBNF/EBNF (llama.cpp's, with ``::=``);
    - json_object=True: any JSON object;
    - structural_tag: vLLM's structural tag (JSON text or a dict), free text in which each
      tagged section follows its schema.

    Options for JSON: disable_any_whitespace (no whitespace between JSON tokens),
    disable_additional_properties (objects hold only the properties their schema names),
    whitespace_pattern (a regex the whitespace between JSON tokens matches).
    disable_fallback is accepted for compatibility: llmbatch has one grammar backend.
    An invalid value raises ValueError (TypeError for a wrong type) naming the field.
    """

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | dict[str, Any] | None = None
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None

    def __post_init__(self) -> None:
        self.json = _schema_of(self.json)
        if isinstance(self.structural_tag, dict):
            self.structural_tag = json.dumps(self.structural_tag)
        _check_types(self)
        given = [kind for kind in KINDS if getattr(self, kind) not in (None, False)]
        if len(given) != 1:
            raise ValueError(
                "structured outputs take exactly one of json, regex, choice, grammar, "
                f"json_object or structural_tag; got {given or 'none'}"
            )
        if self.choice is not None and not self.choice:
            raise ValueError("structured outputs choice must hold at least one string")
        for name in ("regex", "grammar", "structural_tag"):
            if getattr(self, name) == "":
                raise ValueError(f"structured outputs {name} must not be empty")

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> StructuredOutputsParams:
        """Params from a dict of vLLM's names; an unknown key is a ValueError."""
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ValueError(
                f"unknown structured outputs key(s) {unknown}; accepted: {', '.join(accepted)}"
            )
        return cls(**params)

    @classmethod
    def of(cls, value: Any, name: str = "structured_outputs") -> StructuredOutputsParams | None:
        """A request's value: params, a dict of them, or None."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            # Arrow structs give the keys other rows set (and this one did not) as None.
            return cls.from_dict({k: v for k, v in value.items() if v is not None})
        raise TypeError(
            f"{name} must be a StructuredOutputsParams or a dict, got {type(value).__name__}"
        )

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) not in (None, False))

    def key(self) -> tuple[Any, ...]:
        """Equal for equal constraints: what compiled grammars are cached by."""
        value = getattr(self, self.kind)
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, list):
            value = tuple(value)
        return (
            self.kind,
            value,
            self.disable_any_whitespace,
            self.disable_additional_properties,
            self.whitespace_pattern,
        )

    def to_record(self) -> dict[str, Any]:
        """The given fields as plain values (a JSON schema as JSON text), so that rows with
        different schemas can share one Arrow column."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(record["json"], dict):
            record["json"] = json.dumps(record["json"])
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {k: v for k, v in record.items() if v != defaults[k]}


def from_guided_decoding(value: Any) -> StructuredOutputsParams | None:
    """The older ``guided_decoding`` spelling (earlier vLLM and Ray Data LLM), with a deprecation
    warning (shown once, as Python shows a warning once per place); its ``backend`` key is
    accepted and has no effect."""
    if value is None:
        return None
    warnings.warn(
        "sampling parameter guided_decoding is deprecated: use structured_outputs (the "
        "same keys, e.g. structured_outputs=dict(json=schema))",
        # shown by default (a DeprecationWarning is hidden unless raised in __main__)
        FutureWarning,
        stacklevel=3,
    )
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "backend"}
    elif not isinstance(value, StructuredOutputsParams):
        value = {
            f.name: getattr(value, f.name)
            for f in dataclasses.fields(StructuredOutputsParams)
            if hasattr(value, f.name)
        }
    return StructuredOutputsParams.of(value, "guided_decoding")


def _schema_of(value: Any) -> Any:
    """A JSON schema given as a pydantic model class becomes its schema dict."""
    if isinstance(value, type) and hasattr(value, "model_json_schema"):
        return value.model_json_schema()
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"structured outputs json is not valid JSON text: {exc}") from None
        if not isinstance(parsed, dict | bool):
            raise ValueError(
                f"structured outputs json must be a JSON schema (an object), got {value[:60]!r}"
            )
    return value


def _check_types(params: StructuredOutputsParams) -> None:
    expected: dict[str, tuple[type, ...]] = {
        "json": (str, dict, type(None)),
        "regex": _TEXT_OR_NONE,
        "choice": (list, tuple, type(None)),
        "grammar": _TEXT_OR_NONE,
        "json_object": (bool, type(None)),
        "structural_tag": _TEXT_OR_NONE,
        "disable_fallback": (bool,),
        "disable_any_whitespace": (bool,),
        "disable_additional_properties": (bool,),
        "whitespace_pattern": _TEXT_OR_NONE,
    }
    for name, types in expected.items():
        value = getattr(params, name)
        if not isinstance(value, types):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise TypeError(
                f"structured outputs {name}={value!r} has type {type(value).__name__}; "
                f"expected {names}"
            )
    if params.choice is not None:
        params.choice = list(params.choice)
        bad = [c for c in params.choice if not isinstance(c, str)]
        if bad:
            raise TypeError(f"structured outputs choice must hold strings, got {bad[0]!r}")
