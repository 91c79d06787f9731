"""Incremental detokenization and stop-string matching."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Prompt tokens decoded ahead of the first output token, so that tokenizers which render a
# token differently at the start of a text (leading-space markers) produce the same text as a
# whole-sequence decode.
PROMPT_CONTEXT_TOKENS = 5
INCOMPLETE_CHARACTER = "\ufffd"


class IncrementalDetokenizer:
    """Appends one token at a time to `text`, holding back bytes of a character not yet complete.

    Each step decodes only a short window: the tokens since the last emitted text plus the few
    before them, and emits what that window adds beyond its already-emitted prefix.
    """

    __slots__ = ("_decode", "_ids", "_prefix_offset", "_read_offset")

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_token_ids: list[int],
        skip_special_tokens: bool,
    ) -> None:
        self._decode = _decoder(tokenizer, skip_special_tokens)
        self._ids = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def add(self, token_id: int) -> str:
        """Feeds one token; returns the text it completes (empty while a character is partial)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(INCOMPLETE_CHARACTER):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]

    def flush(self) -> str:
        """Returns text held back for a character that never completed, as the tokenizer renders it."""
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]


def _decoder(
    tokenizer: PreTrainedTokenizerBase, skip_special_tokens: bool
) -> Callable[[list[int]], str]:
    """The tokenizer's decode; straight to the Rust tokenizer when the Python wrapper would
    only convert types around it (it costs several times the decode itself)."""
    if (
        isinstance(tokenizer, PreTrainedTokenizerFast)
        and type(tokenizer)._decode is PreTrainedTokenizerFast._decode
        and not tokenizer.clean_up_tokenization_spaces
    ):
        return partial(tokenizer.backend_tokenizer.decode, skip_special_tokens=skip_special_tokens)
    return partial(tokenizer.decode, skip_special_tokens=skip_special_tokens)


def find_stop_string(text: str, num_new_chars: int, stops: list[str]) -> tuple[str, int] | None:
    """The stop string that occurs earliest in `text` overlapping its last `num_new_chars`
    characters, with its start index; None when no stop string completes there."""
    best: tuple[str, int] | None = None
    for stop in stops:
        start = max(0, len(text) - num_new_chars - len(stop) + 1)
        index = text.find(stop, start)
        if index >= 0 and (best is None or index < best[1]):
            best = (stop, index)
    return best
