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
class CompletionOutput:
    """One generated sequence (vLLM's shape: `request_output.outputs[0]`)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    logprobs: list[dict[int, float]] | None
    stop_reason: int | str | None = None


@dataclass(slots=True)
class RequestOutput:
    """A finished request.

    finish_reason is "stop" (EOS, a stop token or a stop string; stop_reason names the stop token
    id or string, None for EOS) or "length" (max_tokens or max_model_len reached). logprobs, when
    asked for, holds one dict per generated token mapping token id to log-probability: the top
    `logprobs` ids plus the sampled one. num_cached_tokens counts prompt tokens served from the
    prefix cache; num_preemptions how often the request lost its KV cache to others and was
    recomputed.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    stop_reason: int | str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    logprobs: list[dict[int, float]] | None = None
    num_preemptions: int = 0

    @property
    def finished(self) -> bool:
        return True

    @property
    def outputs(self) -> list[CompletionOutput]:
        return [
            CompletionOutput(
                index=0,
                text=self.text,
                token_ids=self.token_ids,
                finish_reason=self.finish_reason,
                logprobs=self.logprobs,
                stop_reason=self.stop_reason,
            )
        ]
