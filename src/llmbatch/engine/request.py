"""A request's state inside the engine, and how each new token may finish it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from llmbatch.engine.detokenizer import IncrementalDetokenizer, find_stop_string
from llmbatch.engine.multimodal import RequestImages
from llmbatch.engine.outputs import FinishReason, RequestOutput
from llmbatch.engine.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


@dataclass(slots=True, eq=False)
class Request:
    """One sequence: its prompt and generated tokens, progress through the KV cache and output.

    `token_ids` holds the prompt followed by the generated tokens; `num_computed_tokens` of them
    have their K/V in the cache blocks `block_ids`. `block_hashes` chains the hashes of its full
    blocks (kept across preemption); the first `num_registered_blocks` blocks were offered to the
    prefix cache. After preemption the computed count drops back to zero and the whole sequence,
    generated tokens included, is prefilled again.

    With asynchronous scheduling a step may be launched before the tokens of the previous one are
    known: `num_pending` tokens have been sampled on the device but not yet appended, and the
    newest of them is row `pending_row` of the last launched step's sampled tokens.
    """

    request_id: str
    prompt: str | None
    token_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int]
    max_model_len: int
    generator: torch.Generator | None = None
    detokenizer: IncrementalDetokenizer | None = None
    images: RequestImages | None = None
    grammar: Any = None
    """The llguidance matcher of a request with structured outputs: it consumes every
    generated token and gives the mask of allowed next tokens."""
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_registered_blocks: int = 0
    num_pending: int = 0
    num_preemptions: int = 0
    pending_row: int = -1
    text: str = ""
    logprobs: list[dict[int, float]] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    num_prompt_tokens: int = field(init=False)
    stop_token_ids: frozenset[int] = field(init=False)
    length_limit: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.token_ids)
        eos = frozenset() if self.params.ignore_eos else self.eos_token_ids
        self.stop_token_ids = eos | frozenset(self.params.stop_token_ids or ())
        max_tokens = self.params.max_tokens
        self.length_limit = (
            self.max_model_len
            if max_tokens is None
            else min(self.max_model_len, self.num_prompt_tokens + max_tokens)
        )
        if self.params.logprobs is not None:
            self.logprobs = []

    @property
    def num_tokens(self) -> int:
        """Tokens of the sequence, pending ones included."""
        return len(self.token_ids) + self.num_pending

    @property
    def certain_to_finish(self) -> bool:
        """True when the pending tokens reach the length limit: nothing more need be computed."""
        return self.num_pending > 0 and self.num_tokens >= self.length_limit

    @property
    def stops_only_at_length_limit(self) -> bool:
        """True when nothing but the length limit can end it (no EOS, stop tokens or strings)."""
        return not self.stop_token_ids and not self.params.stop

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    @property
    def masks_stop_tokens(self) -> bool:
        """True while min_tokens is not reached: EOS and stop tokens may not be sampled yet."""
        return self.num_output_tokens < self.params.min_tokens and bool(self.stop_token_ids)

    def append_token(self, token_id: int, logprobs: dict[int, float] | None = None) -> bool:
        """Adds a sampled token; finishes the request, and returns True, when a stop condition
        is met."""
        self.token_ids.append(token_id)
        if logprobs is not None and self.logprobs is not None:
            self.logprobs.append(logprobs)
        # the grammar stops once nothing may follow (EOS included, or a wrong token)
        grammar_done = self.grammar is not None and (
            not self.grammar.consume_token(token_id) or self.grammar.is_stopped()
        )
        params = self.params
        num_tokens = len(self.token_ids)
        past_min_tokens = num_tokens - self.num_prompt_tokens >= params.min_tokens
        stopped_by_token = (
            past_min_tokens and bool(self.stop_token_ids) and token_id in self.stop_token_ids
        )
        if self.detokenizer is not None and (
            not stopped_by_token or params.include_stop_str_in_output
        ):
            new_text = self.detokenizer.add(token_id)
            self.text += new_text
            if new_text and params.stop and past_min_tokens and self._stop_at_string(len(new_text)):
                return True
        if stopped_by_token:
            is_eos = token_id in self.eos_token_ids and not params.ignore_eos
            self._finish("stop", None if is_eos else token_id)
        elif grammar_done:
            self._finish("stop", None)
        elif num_tokens >= self.length_limit:
            self._finish("length", None)
        else:
            return False
        return True

    def _stop_at_string(self, num_new_chars: int) -> bool:
        found = find_stop_string(self.text, num_new_chars, self.params.stop or [])
        if found is None:
            return False
        stop, index = found
        end = index + len(stop) if self.params.include_stop_str_in_output else index
        self.text = self.text[:end]
        self._finish("stop", stop)
        return True

    def _finish(self, reason: FinishReason, stop_reason: int | str | None) -> None:
        stopped_by_string = isinstance(stop_reason, str)
        if self.detokenizer is not None and not stopped_by_string:
            self.text += self.detokenizer.flush()
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
        self.stop_reason = stop_reason

    def to_output(self) -> RequestOutput:
        assert self.finish_reason is not None
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.token_ids[: self.num_prompt_tokens],
            text=self.text,
            token_ids=self.output_token_ids,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
            num_prompt_tokens=self.num_prompt_tokens,
            num_cached_tokens=max(self.num_cached_tokens, 0),
            logprobs=self.logprobs,
            num_preemptions=self.num_preemptions,
        )
