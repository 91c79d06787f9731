"""A pooling model's step: the hidden states of the prompts it completes, pooled, through the
model's head (normalised embeddings or class probabilities), copied to the host with the step.

Prompts split over several steps (chunked prefill) keep what MEAN and CLS pooling need from
each chunk on the request; LAST pooling reads only the chunk that ends the prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from llmbatch.engine.request import Request
from llmbatch.models import CausalLM
from llmbatch.models.pooling import PoolerConfig, finish_embeddings, finish_logits


@dataclass(slots=True, eq=False)
class PooledStep:
    """The results of the pooling requests a step completes: row i of ``host`` (complete once
    ``done`` has fired) is ``requests[i]``'s, its first ``widths[i]`` values."""

    requests: list[Request]
    host: torch.Tensor
    widths: list[int]
    done: torch.cuda.Event | None = None

    def results(self) -> list[torch.Tensor]:
        if self.done is not None:
            self.done.synchronize()
        return [row[:width] for row, width in zip(self.host, self.widths)]


def finish_pooled(
    values: torch.Tensor, requests: list[Request], pooler: PoolerConfig
) -> tuple[torch.Tensor, list[int]]:
    """Each request's result from its pooled hidden state (embed: truncated to its
    ``dimensions`` and normalised) or its classifier logits (classify: probabilities unless it
    turned the activation off); and each row's width."""
    params = [r.pooling for r in requests]
    if pooler.task == "classify":
        use = [
            pooler.use_activation if p.use_activation is None else p.use_activation for p in params
        ]
        return finish_logits(values, pooler.activation, use), [pooler.num_labels] * len(requests)
    dims = [p.dimensions for p in params]
    normalize = [pooler.normalize if p.normalize is None else p.normalize for p in params]
    width = values.shape[-1]
    return finish_embeddings(values, dims, normalize), [d or width for d in dims]


class StepPooler:
    """Pools a pooling model's steps (`pool`), on the step's device."""

    def __init__(self, model: CausalLM, host_float32: Callable[[int], torch.Tensor]) -> None:
        """``host_float32(n)``: a pinned host buffer of n floats that stays the step's until
        the step is read back."""
        assert model.pooler is not None
        self.model = model
        self.pooler: PoolerConfig = model.pooler
        self._host_float32 = host_float32

    def pool(
        self, hidden: torch.Tensor, requests: list[Request], num_new_tokens: list[int]
    ) -> PooledStep | None:
        """Queues the pooling of the prompts this step completes; None when it completes none.
        Runs before the engine counts the step's tokens as computed."""
        kind = self.pooler.pooling_type
        first_rows = np.cumsum([0, *num_new_tokens[:-1]])
        completed: list[Request] = []
        last_rows: list[int] = []
        for request, count, first in zip(requests, num_new_tokens, first_rows.tolist()):
            start = request.num_computed_tokens
            completes = start + count >= request.num_prompt_tokens
            if kind == "MEAN":
                part = hidden[first : first + count].sum(dim=0, dtype=torch.float32)
                request.pooled = part if start == 0 else request.pooled + part
            elif kind == "CLS" and start == 0:
                # a copy: a CUDA graph's output buffer is overwritten by the next replay
                request.pooled = hidden[first].clone()
            if completes:
                completed.append(request)
                last_rows.append(first + count - 1)
        if not completed:
            return None
        if kind == "LAST":
            rows = torch.tensor(last_rows, device=hidden.device)
            pooled = hidden.index_select(0, rows)
        elif kind == "MEAN":
            lengths = torch.tensor([float(r.num_prompt_tokens) for r in completed])
            pooled = torch.stack([r.pooled for r in completed]) / lengths.to(hidden.device)[:, None]
        else:
            pooled = torch.stack([r.pooled for r in completed])
        if self.pooler.task == "classify":
            score = self.model.score
            pooled = score(pooled.to(score.weight.dtype))
        return self._to_host(completed, *finish_pooled(pooled, completed, self.pooler))

    def _to_host(
        self, requests: list[Request], values: torch.Tensor, widths: list[int]
    ) -> PooledStep:
        if values.device.type != "cuda":
            return PooledStep(requests, values, widths)
        host = self._host_float32(values.numel()).view(values.shape)
        host.copy_(values, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return PooledStep(requests, host, widths, done)
