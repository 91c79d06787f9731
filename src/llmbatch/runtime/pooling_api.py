"""vLLM's pooling methods of `LLM`: ``embed``, ``classify``, ``score`` and ``encode``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch.nn.functional as F

from llmbatch.engine.lora_request import LoRARequest
from llmbatch.engine.pooling_outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    ScoringRequestOutput,
)
from llmbatch.engine.pooling_params import PoolingParams

LoRAArg = LoRARequest | Sequence[LoRARequest | None] | None
ScoreInput = str | list[int] | dict[str, Any]


class PoolingAPI:
    """The pooling methods; `LLM` provides ``llm_engine``, ``_run`` and ``_as_prompts``."""

    llm_engine: Any

    def encode(
        self,
        prompts: Any,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        use_tqdm: bool = False,
        lora_request: LoRAArg = None,
        pooling_task: str | None = None,
        truncate_prompt_tokens: int | None = None,
    ) -> list[PoolingRequestOutput]:
        """The pooled output of each prompt (a ``data`` tensor), in input order, on a pooling
        model (engine argument ``runner="pooling"``, or a checkpoint that is one).
        ``truncate_prompt_tokens`` keeps each prompt's last tokens (unless its params say)."""
        prompts = self._as_prompts(prompts)  # type: ignore[attr-defined]
        task = self._pooler_task()
        if pooling_task not in (None, "encode", "score", task):
            raise ValueError(f"pooling_task={pooling_task!r}: this model runs {task}")
        params = _params_for(pooling_params, len(prompts), task)
        if truncate_prompt_tokens is not None:
            params = [
                p
                if p.truncate_prompt_tokens is not None
                else replace(p, truncate_prompt_tokens=truncate_prompt_tokens)
                for p in params
            ]
        return self._run(prompts, params, use_tqdm, lora_request)  # type: ignore[attr-defined]

    def embed(
        self,
        prompts: Any,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        use_tqdm: bool = False,
        lora_request: LoRAArg = None,
        truncate_prompt_tokens: int | None = None,
    ) -> list[EmbeddingRequestOutput]:
        """One embedding per prompt (``outputs.embedding``), in input order."""
        self._require_task("embed")
        outputs = self.encode(
            prompts,
            pooling_params,
            use_tqdm=use_tqdm,
            lora_request=lora_request,
            pooling_task="embed",
            truncate_prompt_tokens=truncate_prompt_tokens,
        )
        return [EmbeddingRequestOutput.from_base(o) for o in outputs]

    def classify(
        self,
        prompts: Any,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        use_tqdm: bool = False,
        lora_request: LoRAArg = None,
        truncate_prompt_tokens: int | None = None,
    ) -> list[ClassificationRequestOutput]:
        """Class probabilities per prompt (``outputs.probs``), in input order."""
        self._require_task("classify")
        outputs = self.encode(
            prompts,
            pooling_params,
            use_tqdm=use_tqdm,
            lora_request=lora_request,
            pooling_task="classify",
            truncate_prompt_tokens=truncate_prompt_tokens,
        )
        return [ClassificationRequestOutput.from_base(o) for o in outputs]

    def score(
        self,
        data_1: ScoreInput | Sequence[ScoreInput],
        data_2: ScoreInput | Sequence[ScoreInput],
        /,
        *,
        use_tqdm: bool = False,
        pooling_params: PoolingParams | None = None,
        lora_request: LoRAArg = None,
    ) -> list[ScoringRequestOutput]:
        """A score per pair, in order: ``data_1`` (one text or a list) against ``data_2`` (1 to
        1, 1 to N or N to N). A classifier of one label (a cross-encoder or reranker) scores
        the pair tokenized together (``tokenizer(text_1, text_2)``); an embedding model gives
        the cosine similarity of the two texts' embeddings."""
        first, second = _pairs(data_1, data_2)
        if self._pooler_task() == "classify":
            return self._cross_encode(first, second, pooling_params, use_tqdm, lora_request)
        params = pooling_params or PoolingParams()
        texts = first + second
        embeddings = self.encode(
            texts, params, use_tqdm=use_tqdm, lora_request=lora_request, pooling_task="embed"
        )
        outputs = []
        count = len(first)
        for index, (left, right) in enumerate(zip(embeddings[:count], embeddings[count:])):
            similarity = F.cosine_similarity(left.outputs.data, right.outputs.data, dim=0)
            base = PoolingRequestOutput(
                request_id=f"score-{index}",
                outputs=PoolingOutput(similarity.reshape(())),
                prompt_token_ids=left.prompt_token_ids + right.prompt_token_ids,
                num_cached_tokens=left.num_cached_tokens + right.num_cached_tokens,
            )
            outputs.append(ScoringRequestOutput.from_base(base))
        return outputs

    def _cross_encode(
        self,
        first: list[ScoreInput],
        second: list[ScoreInput],
        params: PoolingParams | None,
        use_tqdm: bool,
        lora_request: LoRAArg,
    ) -> list[ScoringRequestOutput]:
        pooler = self.llm_engine.config.pooler
        if pooler.num_labels != 1:
            raise ValueError(
                f"score needs a classifier of one label (a cross-encoder); this one has "
                f"{pooler.num_labels}: use classify"
            )
        tokenizer = self.llm_engine.tokenizer
        prompts: list[list[int]] = []
        for index, (left, right) in enumerate(zip(first, second)):
            if not (isinstance(left, str) and isinstance(right, str)):
                raise ValueError(f"pair {index}: a cross-encoder scores pairs of texts")
            prompts.append(list(tokenizer(left, text_pair=right)["input_ids"]))
        outputs = self.encode(
            prompts,
            params or PoolingParams(),
            use_tqdm=use_tqdm,
            lora_request=lora_request,
            pooling_task="classify",
        )
        return [ScoringRequestOutput.from_base(o) for o in outputs]

    def _pooler_task(self) -> str:
        pooler = self.llm_engine.config.pooler
        if pooler is None:
            raise ValueError(
                "this model runs as a generator; start LLM with runner='pooling' (and "
                "convert='embed' or 'classify') to embed, classify or score"
            )
        return pooler.task

    def _require_task(self, task: str) -> None:
        actual = self._pooler_task()
        if actual != task:
            raise ValueError(f"LLM.{task} needs a model that can {task}; this one runs {actual}")


def _params_for(
    params: PoolingParams | Sequence[PoolingParams] | None, count: int, task: str
) -> list[PoolingParams]:
    if params is None:
        params = PoolingParams()
    listed = [params] * count if isinstance(params, PoolingParams) else list(params)
    if len(listed) != count:
        raise ValueError(
            f"got {len(listed)} pooling params for {count} prompts; give one or one each"
        )
    result = []
    for index, item in enumerate(listed):
        if not isinstance(item, PoolingParams):
            raise TypeError(
                f"pooling params {index} must be a PoolingParams, got {type(item).__name__}"
            )
        result.append(item if item.task is not None else item.for_task(task))
    return result


def _pairs(
    data_1: ScoreInput | Sequence[ScoreInput], data_2: ScoreInput | Sequence[ScoreInput]
) -> tuple[list[ScoreInput], list[ScoreInput]]:
    first = _score_list(data_1)
    second = _score_list(data_2)
    if len(first) == 1 and len(second) > 1:
        first = first * len(second)
    if len(first) != len(second):
        raise ValueError(
            f"score pairs data_1 ({len(first)} inputs) with data_2 ({len(second)}): give one "
            "against many, or as many of each"
        )
    if not first:
        raise ValueError("score needs at least one pair")
    return first, second


def _score_list(data: ScoreInput | Sequence[ScoreInput]) -> list[ScoreInput]:
    if isinstance(data, str | dict) or (
        isinstance(data, list) and data and all(isinstance(t, int) for t in data)
    ):
        return [data]
    return list(data)
