"""Structured outputs on llguidance: each distinct constraint compiled once, a matcher per request,
and the next tokens' masks filled on the host, in parallel, for all constrained rows of a step.

llguidance (Rust, no other dependency, one abi3 wheel for every Python) compiles JSON schemas,
regexes, Lark and GBNF grammars into a matcher that gives a bitmask of allowed tokens at each
step: bit ``t % 32`` of 32-bit word ``t // 32`` is set when token ``t`` may come next.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from functools import cache
from typing import Any

import torch

from llmbatch.engine.structured_outputs_params import StructuredOutputsParams

BACKENDS = ("auto", "guidance")
# Compiled constraints kept for reuse (a job of one schema compiles once); least recently used
# ones go first.
MAX_CACHED_GRAMMARS = 256


def check_backend(config: dict[str, Any]) -> str:
    """The backend a ``structured_outputs_config`` names ("auto" and "guidance" run
    llguidance); a ValueError for any other key or backend."""
    unknown = sorted(set(config) - {"backend", "disable_fallback"})
    if unknown:
        raise ValueError(
            f"structured_outputs_config has unknown key(s) {unknown}; accepted: backend, "
            "disable_fallback"
        )
    backend = config.get("backend", "auto")
    if backend not in BACKENDS:
        raise ValueError(
            f"structured outputs backend {backend!r} is not supported; accepted: "
            f"{', '.join(map(repr, BACKENDS))} (llmbatch runs llguidance, vLLM's 'guidance')"
        )
    return "guidance"


class GrammarCompiler:
    """Compiles a request's constraint into its matcher, and fills the token masks of a step.

    Built lazily on the first constrained request: wrapping the tokenizer takes about a second
    for a large vocabulary, which engines without such requests never pay.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        import llguidance.hf

        self._tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=eos_token_ids or None
        )
        self._special_tokens = frozenset(tokenizer.get_added_vocab())
        self._compiled: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def matcher(self, params: StructuredOutputsParams) -> Any:
        """A fresh matcher for one request; a ValueError saying what is wrong with an invalid
        schema, regex or grammar, or with a schema feature llguidance does not support."""
        key = params.key()
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compile(params)
            self._compiled[key] = compiled
            if len(self._compiled) > MAX_CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(key)
        return compiled.deep_copy()

    def _compile(self, params: StructuredOutputsParams) -> Any:
        import llguidance

        grammar = checked_grammar(params, self._tokenizer, self._special_tokens)
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"structured outputs {params.kind} is invalid: {matcher.get_error()}")
        return matcher


def checked_grammar(
    params: StructuredOutputsParams,
    tokenizer: Any = None,
    special_tokens: frozenset[str] = frozenset(),
) -> str:
    """The llguidance grammar of a constraint, checked (against a tokenizer when given); a
    ValueError saying what is wrong with an invalid schema, regex or grammar, or naming a schema
    feature llguidance does not support."""
    import llguidance

    kind = params.kind
    try:
        grammar = _grammar(llguidance, params, special_tokens)
    except (ValueError, TypeError, KeyError, AssertionError) as exc:
        raise ValueError(f"structured outputs {kind}: {exc}") from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        raise ValueError(f"structured outputs {kind} is invalid: {messages[0]}")
    return grammar


def _grammar(
    llguidance: Any, params: StructuredOutputsParams, special_tokens: frozenset[str]
) -> str:
    """The llguidance grammar of a constraint."""
    from_schema = llguidance.LLMatcher.grammar_from_json_schema
    options: dict[str, Any] = {"whitespace_flexible": not params.disable_any_whitespace}
    if params.whitespace_pattern is not None:
        options["whitespace_pattern"] = params.whitespace_pattern
    kind = params.kind
    if kind == "json":
        schema = params.json
        if isinstance(schema, str):
            schema = json.loads(schema)
        if params.disable_additional_properties:
            schema = _without_additional_properties(schema)
        return from_schema(schema, defaults=options)
    if kind == "json_object":
        return from_schema({"type": "object"}, defaults=options)
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(params.regex)
    if kind == "choice":
        return llguidance.grammar_from("choice", json.dumps(params.choice))
    if kind == "grammar":
        # Lark as it is; GBNF/EBNF (with ``::=``) converted to Lark
        return llguidance.grammar_from("grammar", params.grammar)
    return _structural_tag_grammar(llguidance, params.structural_tag, special_tokens)


def mask_words(vocab_size: int) -> int:
    """32-bit words of one token mask."""
    return (vocab_size + 31) // 32


def fill_bitmask(matchers: list[Any], bitmask: torch.Tensor) -> None:
    """Row i of ``bitmask`` (a contiguous int32 CPU tensor ``[len(matchers), mask_words]``)
    becomes matcher i's mask of allowed next tokens; the rows are computed in parallel threads."""
    assert bitmask.dtype == torch.int32 and bitmask.is_contiguous() and not bitmask.is_cuda
    _executor().unsafe_compute_mask_ptr(
        [(matcher, i) for i, matcher in enumerate(matchers)],
        bitmask.data_ptr(),
        bitmask.shape[1] * 4,
        len(matchers),
    )


@cache
def _executor() -> Any:
    import llguidance

    return llguidance.LLExecutor()


def _without_additional_properties(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that does not say."""
    if isinstance(schema, list):
        return [_without_additional_properties(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: _without_additional_properties(value) for key, value in schema.items()}
    if result.get("type") == "object" or "properties" in result:
        result.setdefault("additionalProperties", False)
    return result


def _structural_tag_grammar(llguidance: Any, text: str, special_tokens: frozenset[str]) -> str:
    """vLLM's structural tag, ``{"type": "structural_tag", "structures": [{"begin", "schema",
    "end"}], "triggers": [...]}``: free text in which each structure, once its trigger starts
    it, follows its schema. Triggers are matched as special tokens when the tokenizer has them
    all as such (``<|python_tag|>``), else as text."""
    tag = json.loads(text)
    if not isinstance(tag, dict) or "structures" not in tag or "triggers" not in tag:
        raise ValueError(
            'a structural tag is {"type": "structural_tag", "structures": [{"begin": ..., '
            '"schema": ..., "end": ...}], "triggers": [...]}'
        )
    tags = []
    for structure in tag["structures"]:
        trigger = next((t for t in tag["triggers"] if structure["begin"].startswith(t)), None)
        if trigger is None:
            raise ValueError(f"no trigger starts the structure begin {structure['begin']!r}")
        tags.append(
            llguidance.StructTag(
                trigger=trigger,
                begin=structure["begin"],
                grammar=structure.get("schema", {}),
                end=structure.get("end", ""),
            )
        )
    triggers = {tag.trigger for tag in tags}
    return llguidance.StructTag.to_grammar(tags, assume_special=triggers <= special_tokens)
