"""A request's state inside the engine, and how each new token may finish it."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from llmbatch.engine.detokenizer import IncrementalDetokenizer, find_stop_string
from llmbatch.engine.lora_request import LoRARequest
from llmbatch.engine.multimodal import RequestImages
from llmbatch.engine.outputs import (
    CompletionOutput,
    FinishReason,
    Logprob,
    PromptLogprobs,
    RequestMetrics,
    RequestOutput,
)
from llmbatch.engine.pooling_params import PoolingParams
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
    bad_words: list[list[int]] | None = None
    """Token sequences never to complete (the request's bad words, tokenized)."""
    output_id: str = ""
    """The id its output is reported under: its own, or for one of ``n`` samples the
    request's (the sequences of a request with n > 1 are ``{output_id}\x1f{index}``)."""
    index: int = 0
    """Which of its prompt's ``n`` samples this sequence is."""
    pooling: PoolingParams | None = None
    """A pooling request's params (its ``params`` are then unused defaults): it computes its
    prompt and returns the pooled result, never a token."""
    pools_every_token: bool = False
    """Its pooling reads every prompt token's hidden state (none may come from the cache)."""
    pooled: Any = None
    """The pooling of its prompt chunks computed so far (MEAN and CLS over several steps)."""
    lora: LoRARequest | None = None
    lora_slot: int = -1
    """The device slot of its adapter while it runs (-1: none)."""
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
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float = 0.0
    prompt_logprobs: PromptLogprobs | None = None
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    num_prompt_tokens: int = field(init=False)
    stop_token_ids: frozenset[int] = field(init=False)
    length_limit: int = field(init=False)
    metrics: RequestMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.output_id = self.output_id or self.request_id
        self.num_prompt_tokens = len(self.token_ids)
        eos = frozenset() if self.params.ignore_eos else self.eos_token_ids
        self.stop_token_ids = eos | frozenset(self.params.stop_token_ids or ())
        max_tokens = self.params.max_tokens
        self.length_limit = (
            self.max_model_len
            if max_tokens is None
            else min(self.max_model_len, self.num_prompt_tokens + max_tokens)
        )
        if self.pooling is not None:
            self.length_limit = self.num_prompt_tokens
        if self.params.logprobs is not None:
            self.logprobs = []
        if self.params.prompt_logprobs is not None:
            self.prompt_logprobs = [None]
        self.metrics = RequestMetrics(arrival_time=time.time())

    @property
    def num_tokens(self) -> int:
        """Tokens of the sequence, pending ones included."""
        return len(self.token_ids) + self.num_pending

    @property
    def certain_to_finish(self) -> bool:
        """True when nothing more need be computed: the pending tokens reach the length limit,
        or a pooling request's whole prompt is computed (its result is on the way)."""
        if self.pooling is not None:
            return self.num_computed_tokens >= self.num_prompt_tokens
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

    @property
    def needs_whole_prompt(self) -> bool:
        """True when every prompt token must be computed, none served from the prefix cache."""
        return self.pools_every_token or self.wants_prompt_logprobs

    @property
    def wants_prompt_logprobs(self) -> bool:
        """True while prompt tokens whose log-probabilities were asked for remain to be scored."""
        return (
            self.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens
        )

    def append_token(self, token_id: int, logprobs: dict[int, Logprob] | None = None) -> bool:
        """Adds a sampled token; finishes the request, and returns True, when a stop condition
        is met."""
        self.token_ids.append(token_id)
        now = time.time()
        if self.metrics.first_token_time is None:
            self.metrics.first_token_time = now
        self.metrics.last_token_time = now
        if logprobs is not None and self.logprobs is not None:
            self.logprobs.append(logprobs)
            self.cumulative_logprob += logprobs[token_id].logprob
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
        self.metrics.finished_time = time.time()

    def finish_pooling(self) -> None:
        """Ends a pooling request once its result is known."""
        self.status = RequestStatus.FINISHED
        self.pooled = None
        self.metrics.finished_time = self.metrics.last_token_time = time.time()

    def to_completion(self, decode: Callable[[int], str] | None = None) -> CompletionOutput:
        """This sequence's completion; `decode` names each logprob's token (``decoded_token``)."""
        assert self.finish_reason is not None
        if decode is not None:
            for entry in [*(self.logprobs or ()), *(self.prompt_logprobs or ())]:
                for token_id, logprob in (entry or {}).items():
                    logprob.decoded_token = decode(token_id)
        return CompletionOutput(
            index=self.index,
            text=self.text,
            token_ids=self.output_token_ids,
            cumulative_logprob=self.cumulative_logprob if self.logprobs is not None else None,
            logprobs=self.logprobs,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )

    def to_output(
        self, request_id: str, completions: list[CompletionOutput], num_cached_tokens: int
    ) -> RequestOutput:
        """The request's output with its completions (this sequence's and its siblings')."""
        return RequestOutput(
            request_id=request_id,
            prompt=self.prompt,
            prompt_token_ids=self.token_ids[: self.num_prompt_tokens],
            outputs=completions,
            prompt_logprobs=self.prompt_logprobs,
            num_cached_tokens=num_cached_tokens,
            num_preemptions=self.num_preemptions,
            metrics=self.metrics,
        )
