"""What a finished request returns, shaped like vLLM's RequestOutput."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length"]


class RequestRejected(ValueError):
    """A request an engine cannot run (bad prompt, parameters or images); other requests are
    unaffected. Raised by ``add_request``, or returned by ``step`` from engines that check a
    request after taking it (data-parallel replicas)."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:
        # keeps request_id when a replica process sends the rejection back
        return type(self), (str(self), self.request_id)


@dataclass(slots=True)
class Logprob:
    """A token's log-probability, its rank in the distribution (1: the most likely) and its
    text, as vLLM gives them."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One dict per generated token: token id -> Logprob (the top `logprobs` ids and the sampled one)
SampleLogprobs = list[dict[int, Logprob]]
# One entry per prompt token (None for the first, which nothing predicts)
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass(slots=True)
class CompletionOutput:
    """One generated sequence of a request (vLLM's shape: ``request_output.outputs[i]``).

    finish_reason is "stop" (EOS, a stop token or string, or a complete structured output;
    stop_reason names the stop token id or string, None otherwise) or "length" (max_tokens or
    max_model_len reached). cumulative_logprob sums the sampled tokens' log-probabilities when
    logprobs were asked for."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None


@dataclass(slots=True)
class RequestMetrics:
    """When a request arrived, was first scheduled, got its first and last token, and finished
    (``time.time()`` seconds)."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None

    @property
    def time_in_queue(self) -> float | None:
        if self.first_scheduled_time is None:
            return None
        return self.first_scheduled_time - self.arrival_time


@dataclass(slots=True)
class RequestOutput:
    """A finished request, shaped like vLLM's: ``outputs`` holds its ``n`` completions.

    prompt_logprobs (when asked for) has one entry per prompt token. num_cached_tokens counts
    prompt tokens served from the prefix cache; num_preemptions how often the request lost its
    KV cache to others and was recomputed. text, token_ids, finish_reason, stop_reason and
    logprobs read the first completion's.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True
    prompt_logprobs: PromptLogprobs | None = None
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    metrics: RequestMetrics | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.outputs[0].finish_reason

    @property
    def stop_reason(self) -> int | str | None:
        return self.outputs[0].stop_reason

    @property
    def logprobs(self) -> SampleLogprobs | None:
        return self.outputs[0].logprobs
