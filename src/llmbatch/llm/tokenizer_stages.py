"""The stages that use the model's tokenizer: chat template, tokenize and detokenize."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from llmbatch.llm.columns import (
    IMAGES,
    MESSAGES,
    MULTI_MODAL,
    MULTIMODAL_DATA,
    PROMPT,
    PROMPT_TOKEN_IDS,
    SAMPLING_PARAMS,
    TOKENIZATION_KWARGS,
    as_table,
    column_values,
    errors_of,
    format_error,
    set_column,
    with_errors,
)
from llmbatch.llm.image_columns import images_from_arrow, multi_modal_to_arrow
from llmbatch.llm.images import check_no_images

if TYPE_CHECKING:
    from llmbatch.engine.multimodal import MultiModalInputs

TokenizerSource = Callable[[], Any]


def _clean_messages(messages: Any) -> list[dict[str, Any]]:
    """Messages as the chat template expects them; Arrow structs give absent keys as None."""
    if not isinstance(messages, list) or not messages:
        raise TypeError(
            f"'messages' must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}"
        )
    cleaned = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TypeError(f"messages[{i}] must be a dict, got {type(message).__name__}")
        message = {k: v for k, v in message.items() if v is not None}
        if not isinstance(message.get("role"), str) or "content" not in message:
            raise ValueError(f"messages[{i}] needs a str 'role' and a 'content', got {message!r}")
        if isinstance(message["content"], list):
            message["content"] = [
                {k: v for k, v in part.items() if v is not None} if isinstance(part, dict) else part
                for part in message["content"]
            ]
        cleaned.append(message)
    return cleaned


def uses_chat_template(apply_chat_template: bool, messages: Any) -> bool:
    """Whether a row's prompt comes from its messages (they win over a given prompt)."""
    return apply_chat_template and messages is not None


class ChatTemplateStage:
    """``messages`` -> ``prompt`` through the chat template of `tokenizer` (the model's processor
    when rows hold images), with ``chat_template_kwargs`` passed to the template. The
    generation prompt is added, unless the last message is the assistant's: then the template
    continues it (a prefill the answer goes on from). Rows without messages must give
    ``prompt`` themselves.

    Without ``has_image``, a row whose messages hold an image (or that gives
    ``multimodal_data``) stops the job with an error that says to set has_image=True.
    """

    name = "chat_template"

    def __init__(
        self,
        tokenizer: TokenizerSource,
        apply: bool,
        chat_template: str | None,
        has_image: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
    ):
        self._tokenizer = tokenizer
        self._apply = apply
        self._chat_template = chat_template
        self._has_image = has_image
        self._kwargs = dict(chat_template_kwargs or {})

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        tokenizer = self._tokenizer()
        for block in blocks:
            table = as_table(block)
            errors = errors_of(table)
            messages = column_values(table, MESSAGES)
            prompts = column_values(table, PROMPT)
            multimodal = column_values(table, MULTIMODAL_DATA)
            for i in range(table.num_rows):
                if errors[i] is not None:
                    continue
                if not self._has_image:
                    check_no_images(messages[i], multimodal[i])
                try:
                    prompts[i] = self._prompt_of(tokenizer, messages[i], prompts[i])
                except Exception as exc:
                    errors[i] = format_error(self.name, exc)
                    prompts[i] = None
            table = set_column(table, PROMPT, pa.array(prompts, type=pa.string()))
            yield with_errors(table, errors)

    def _prompt_of(self, tokenizer: Any, messages: Any, prompt: Any) -> str:
        if uses_chat_template(self._apply, messages):
            cleaned = _clean_messages(messages)
            prefill = cleaned[-1]["role"] == "assistant"
            options = {
                "add_generation_prompt": not prefill,
                "continue_final_message": prefill,
                **self._kwargs,
            }
            return tokenizer.apply_chat_template(
                cleaned, chat_template=self._chat_template, tokenize=False, **options
            )
        if prompt is None:
            hint = (
                "apply_chat_template is off, so give 'prompt'"
                if messages is not None
                else "return 'messages' or 'prompt' from preprocess"
            )
            raise ValueError(f"the row has neither 'messages' nor 'prompt': {hint}")
        if not isinstance(prompt, str):
            raise TypeError(f"'prompt' must be a str, got {type(prompt).__name__}")
        return prompt


class TokenizeStage:
    """``prompt`` -> ``prompt_token_ids``, a whole table per tokenizer call.

    Templated prompts already hold their special tokens; raw prompts get the tokenizer's
    (e.g. BOS), as the engine would add them. A row's ``tokenization_kwargs``
    (``add_special_tokens``, ``truncation``, ``max_length``) are passed to the tokenizer.
    Given the model's `processor`, a row with images is tokenized with them: each image
    placeholder is expanded to the image's tokens and the processed images go to an
    intermediate column for the engine; a row the processor rejects becomes an error row.
    """

    name = "tokenize"

    def __init__(
        self,
        tokenizer: TokenizerSource,
        apply_chat_template: bool,
        processor: TokenizerSource | None = None,
    ):
        self._tokenizer = tokenizer
        self._apply_chat_template = apply_chat_template
        self._processor = processor

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        tokenizer = self._tokenizer()
        processor = self._processor() if self._processor is not None else None
        for block in blocks:
            table = as_table(block)
            errors = errors_of(table)
            prompts = column_values(table, PROMPT)
            messages = column_values(table, MESSAGES)
            token_ids: list[list[int] | None] = [None] * table.num_rows
            if processor is not None:
                multi_modal = self._with_images(processor, table, prompts, errors, token_ids)
            kwargs = column_values(table, TOKENIZATION_KWARGS)
            groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
            for i in range(table.num_rows):
                if errors[i] is not None or prompts[i] is None or token_ids[i] is not None:
                    continue
                templated = uses_chat_template(self._apply_chat_template, messages[i])
                try:
                    options = tokenization_options(kwargs[i], templated)
                except (TypeError, ValueError) as exc:
                    errors[i] = format_error(self.name, exc)
                    continue
                groups.setdefault(tuple(sorted(options.items())), []).append(i)
            for options, rows in groups.items():
                encoded = tokenizer([prompts[i] for i in rows], **dict(options))["input_ids"]
                for i, ids in zip(rows, encoded):
                    token_ids[i] = ids
            table = set_column(table, PROMPT_TOKEN_IDS, pa.array(token_ids, pa.list_(pa.int64())))
            if processor is not None:
                table = set_column(table, MULTI_MODAL, multi_modal_to_arrow(multi_modal))
                table = table.drop_columns([IMAGES])
            yield with_errors(table, errors)

    def _with_images(
        self,
        processor: Any,
        table: pa.Table,
        prompts: list[Any],
        errors: list[str | None],
        token_ids: list[list[int] | None],
    ) -> list[MultiModalInputs | None]:
        """Tokenizes the rows that hold images (filling `token_ids` and `errors`); returns each
        row's processed images."""
        from llmbatch.engine.multimodal import process_images

        multi_modal: list[MultiModalInputs | None] = [None] * table.num_rows
        for i, stored in enumerate(column_values(table, IMAGES)):
            if errors[i] is not None or not stored:
                continue
            try:
                token_ids[i], multi_modal[i] = process_images(
                    processor, prompts[i], images_from_arrow(stored)
                )
            except Exception as exc:
                errors[i] = format_error(self.name, exc)
        return multi_modal


_TOKENIZATION_TYPES: dict[str, type] = {
    "add_special_tokens": bool,
    "truncation": bool,
    "max_length": int,
}


def tokenization_options(given: Any, templated: bool) -> dict[str, Any]:
    """The tokenizer's options for one prompt: special tokens for raw prompts only (a templated
    prompt holds them), then the row's ``tokenization_kwargs``."""
    options: dict[str, Any] = {"add_special_tokens": not templated}
    if given is None:
        return options
    if not isinstance(given, dict):
        raise TypeError(f"{TOKENIZATION_KWARGS!r} must be a dict, got {type(given).__name__}")
    given = {k: v for k, v in given.items() if v is not None}
    unknown = sorted(set(given) - set(_TOKENIZATION_TYPES))
    if unknown:
        raise ValueError(
            f"unknown {TOKENIZATION_KWARGS} {unknown}; accepted: {', '.join(_TOKENIZATION_TYPES)}"
        )
    for key, value in given.items():
        expected = _TOKENIZATION_TYPES[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise TypeError(
                f"{TOKENIZATION_KWARGS}[{key!r}] must be {expected.__name__}, got {value!r}"
            )
    if given.get("truncation") and "max_length" not in given:
        raise ValueError(f"{TOKENIZATION_KWARGS}: truncation=True needs max_length")
    return {**options, **given}


class DetokenizeStage:
    """``generated_tokens`` -> ``generated_text`` for rows the engine did not detokenize
    (``detokenize=False`` in their sampling params), honouring ``skip_special_tokens``."""

    name = "detokenize"

    def __init__(self, tokenizer: TokenizerSource):
        self._tokenizer = tokenizer

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        tokenizer = self._tokenizer()
        for block in blocks:
            table = as_table(block)
            if "generated_text" not in table.column_names:  # a pooling model's rows
                yield table
                continue
            errors = errors_of(table)
            texts = column_values(table, "generated_text")
            tokens = column_values(table, "generated_tokens")
            params = column_values(table, SAMPLING_PARAMS)
            kind = table.schema.field("generated_text").type
            # rows of n > 1 answers hold a list per row: one text per sample
            per_sample = pa.types.is_list(kind)
            todo = [
                i
                for i in range(table.num_rows)
                if errors[i] is None
                and tokens[i] is not None
                and (None in texts[i] if per_sample else texts[i] is None)
            ]
            for skip_special in (True, False):
                rows = [i for i in todo if _skip_special_tokens(params[i]) == skip_special]
                if not rows:
                    continue
                pieces = [(i, j) for i in rows for j in range(len(tokens[i]))] if per_sample else []
                sequences = (
                    [tokens[i][j] for i, j in pieces] if per_sample else [tokens[i] for i in rows]
                )
                decoded = tokenizer.batch_decode(sequences, skip_special_tokens=skip_special)
                if per_sample:
                    for (i, j), text in zip(pieces, decoded):
                        texts[i][j] = text
                else:
                    for i, text in zip(rows, decoded):
                        texts[i] = text
            yield set_column(table, "generated_text", pa.array(texts, type=kind))


def _skip_special_tokens(params: Any) -> bool:
    if isinstance(params, dict) and params.get("skip_special_tokens") is not None:
        return bool(params["skip_special_tokens"])
    return True
