"""What a finished pooling request returns, shaped like vLLM's pooling outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from llmbatch.engine.outputs import RequestMetrics


@dataclass(slots=True)
class PoolingOutput:
    """The pooled result of one prompt: an embedding or class probabilities (float32, CPU)."""

    data: torch.Tensor


_O = TypeVar("_O")


class PoolingRequestOutput(Generic[_O]):
    """A finished pooling request (vLLM's shape): ``outputs`` holds its result."""

    def __init__(
        self,
        request_id: str,
        outputs: _O,
        prompt_token_ids: list[int],
        num_cached_tokens: int = 0,
        finished: bool = True,
        prompt: str | None = None,
        num_preemptions: int = 0,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self.request_id = request_id
        self.outputs = outputs
        self.prompt_token_ids = prompt_token_ids
        self.num_cached_tokens = num_cached_tokens
        self.finished = finished
        self.prompt = prompt
        self.num_preemptions = num_preemptions
        self.metrics = metrics

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    def _with(self, outputs: object) -> dict[str, object]:
        return dict(
            request_id=self.request_id,
            outputs=outputs,
            prompt_token_ids=self.prompt_token_ids,
            num_cached_tokens=self.num_cached_tokens,
            finished=self.finished,
            prompt=self.prompt,
            num_preemptions=self.num_preemptions,
            metrics=self.metrics,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(request_id={self.request_id!r}, outputs={self.outputs!r}, "
            f"prompt_token_ids={self.prompt_token_ids}, "
            f"num_cached_tokens={self.num_cached_tokens}, finished={self.finished})"
        )


def _vector(output: PoolingOutput, what: str) -> list[float]:
    if output.data.ndim != 1:
        raise ValueError(f"a pooling output of shape {tuple(output.data.shape)} is not {what}")
    return output.data.tolist()


@dataclass(slots=True)
class EmbeddingOutput:
    embedding: list[float]

    @staticmethod
    def from_base(output: PoolingOutput) -> EmbeddingOutput:
        return EmbeddingOutput(_vector(output, "one embedding vector"))

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)

    def __repr__(self) -> str:
        return f"EmbeddingOutput(hidden_size={self.hidden_size})"


class EmbeddingRequestOutput(PoolingRequestOutput[EmbeddingOutput]):
    @staticmethod
    def from_base(output: PoolingRequestOutput) -> EmbeddingRequestOutput:
        return EmbeddingRequestOutput(**output._with(EmbeddingOutput.from_base(output.outputs)))


@dataclass(slots=True)
class ClassificationOutput:
    probs: list[float]

    @staticmethod
    def from_base(output: PoolingOutput) -> ClassificationOutput:
        return ClassificationOutput(_vector(output, "one vector of class probabilities"))

    @property
    def num_classes(self) -> int:
        return len(self.probs)

    def __repr__(self) -> str:
        return f"ClassificationOutput(num_classes={self.num_classes})"


class ClassificationRequestOutput(PoolingRequestOutput[ClassificationOutput]):
    @staticmethod
    def from_base(output: PoolingRequestOutput) -> ClassificationRequestOutput:
        return ClassificationRequestOutput(
            **output._with(ClassificationOutput.from_base(output.outputs))
        )


@dataclass(slots=True)
class ScoringOutput:
    score: float

    @staticmethod
    def from_base(output: PoolingOutput) -> ScoringOutput:
        data = output.data.squeeze()
        if data.ndim != 0:
            raise ValueError(
                f"a score is one value; this model gives {tuple(output.data.shape)} (a scoring "
                "classifier has num_labels=1)"
            )
        return ScoringOutput(float(data))

    def __repr__(self) -> str:
        return f"ScoringOutput(score={self.score})"


class ScoringRequestOutput(PoolingRequestOutput[ScoringOutput]):
    @staticmethod
    def from_base(output: PoolingRequestOutput) -> ScoringRequestOutput:
        return ScoringRequestOutput(**output._with(ScoringOutput.from_base(output.outputs)))
