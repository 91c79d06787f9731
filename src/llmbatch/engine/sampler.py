"""Batched sampling of the next token of every sequence that samples in a step."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llmbatch.engine.outputs import Logprob
from llmbatch.engine.request import Request
from llmbatch.engine.structured_outputs import fill_bitmask, mask_words
from llmbatch.layers.bitmask import apply_token_bitmask_
from llmbatch.layers.gumbel import gumbel_argmax, splitmix64


@dataclass(slots=True)
class SamplerOutput:
    """The sampled ids stay on the device (reading them waits for the step); logprobs, when any
    row asks for them, are already on the host."""

    sampled: torch.Tensor
    logprobs: list[dict[int, Logprob] | None]

    @property
    def token_ids(self) -> list[int]:
        return self.sampled.tolist()


class Sampler:
    """Samples one token per row of a logits batch, on the logits' device.

    Order, as in vLLM: log-probabilities of the raw logits (when asked for); the tokens a
    request's grammar disallows masked (structured outputs: its matcher fills a bitmask on the
    host, applied on the device); EOS and stop tokens masked until min_tokens; repetition, frequency and presence penalties; greedy rows take the
    argmax; other rows apply temperature, min-p, top-k and top-p and draw: on a GPU by a Gumbel
    race (argmax of logit / temperature + Gumbel noise, one fused pass: layers/gumbel.py), on a
    CPU from one uniform number per row through the cumulative distribution (drawing a number
    per vocabulary entry is most of a CPU step's sampling time). A request with a seed draws
    from its own noise: its generator (cumulative), or keys made from its seed and the position
    it samples (race); either way its output never depends on the rest of the batch.
    """

    def __init__(
        self,
        device: torch.device,
        seed: int,
        gumbel_race: bool | None = None,
        to_device: Callable[[np.ndarray], torch.Tensor] | None = None,
        host_int32: Callable[[int], torch.Tensor] | None = None,
    ) -> None:
        self.device = device
        # how per-row inputs reach the device: the model runner stages them in pinned memory,
        # as a blocking copy would wait for the steps queued before it
        self._to_device = to_device or (lambda values: torch.from_numpy(values).to(device))
        # a host int32 buffer of a given size for the step's grammar masks (pinned on GPUs)
        self._host_int32 = host_int32 or (lambda size: torch.empty(size, dtype=torch.int32))
        # None: the race on GPUs, the cumulative distribution on CPUs
        self.gumbel_race = device.type != "cpu" if gumbel_race is None else gumbel_race
        if self.gumbel_race:
            self._keys = np.random.default_rng(seed)
        else:
            self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, logits: torch.Tensor, requests: list[Request]) -> SamplerOutput:
        raw_logprobs = self._raw_logprobs(logits, requests)
        self._apply_grammars(logits, requests)
        self._apply_token_filters(logits, requests)
        self._mask_stop_tokens(logits, requests)
        self._apply_penalties(logits, requests)
        self._apply_logits_processors(logits, requests)
        random_rows = [i for i, r in enumerate(requests) if not r.params.is_greedy]
        if not random_rows:
            sampled = logits.argmax(dim=-1)
        elif len(random_rows) == len(requests):
            sampled = self._sample_random(logits, requests)
        else:
            sampled = logits.argmax(dim=-1)
            rows = torch.tensor(random_rows, device=logits.device)
            sampled[rows] = self._sample_random(logits[rows], [requests[i] for i in random_rows])
        return SamplerOutput(sampled, self._gather_logprobs(raw_logprobs, requests, sampled))

    def _raw_logprobs(
        self, logits: torch.Tensor, requests: list[Request]
    ) -> tuple[list[int], torch.Tensor] | None:
        rows = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
        if not rows:
            return None
        return rows, torch.log_softmax(logits[rows], dim=-1)

    def _gather_logprobs(
        self,
        raw: tuple[list[int], torch.Tensor] | None,
        requests: list[Request],
        sampled: torch.Tensor,
    ) -> list[dict[int, Logprob] | None]:
        result: list[dict[int, Logprob] | None] = [None] * len(requests)
        if raw is None:
            return result
        rows, logprobs = raw
        entries = token_logprobs(
            logprobs, sampled[rows], [requests[i].params.logprobs for i in rows]
        )
        for i, entry in zip(rows, entries):
            result[i] = entry
        return result

    def _apply_token_filters(self, logits: torch.Tensor, requests: list[Request]) -> None:
        """-inf outside a row's allowed_token_ids, and on each bad word's last token where the
        tokens before it end the row's output so far."""
        for i, request in enumerate(requests):
            allowed = request.params.allowed_token_ids
            if allowed is not None:
                index = torch.tensor(allowed, device=logits.device)
                kept = logits[i, index]
                logits[i] = float("-inf")
                logits[i, index] = kept
            if request.bad_words:
                output = request.output_token_ids
                banned = [
                    word[-1]
                    for word in request.bad_words
                    if len(word) == 1 or output[len(output) - len(word) + 1 :] == word[:-1]
                ]
                if banned:
                    logits[i, banned] = float("-inf")

    def _apply_logits_processors(self, logits: torch.Tensor, requests: list[Request]) -> None:
        """A row's own functions over its logits: ``f(output_ids, logits)`` or ``f(prompt_ids,
        output_ids, logits)``, as vLLM calls them."""
        for i, request in enumerate(requests):
            for processor in request.params.logits_processors or ():
                prompt, output = (
                    request.token_ids[: request.num_prompt_tokens],
                    request.output_token_ids,
                )
                takes_prompt = _num_positional_parameters(processor) >= 3
                args = (prompt, output) if takes_prompt else (output,)
                logits[i] = processor(*args, logits[i])

    def _apply_grammars(self, logits: torch.Tensor, requests: list[Request]) -> None:
        """-inf for the tokens each constrained row's grammar disallows next (its matcher must
        have consumed every earlier token)."""
        rows = [i for i, r in enumerate(requests) if r.grammar is not None]
        if not rows:
            return
        num_rows, words = len(rows), mask_words(logits.shape[1])
        # the masks and their row numbers in one buffer, so that one copy takes them over
        host = self._host_int32(num_rows * (words + 1))
        fill_bitmask([requests[i].grammar for i in rows], host[: num_rows * words].view(-1, words))
        host[num_rows * words :] = torch.tensor(rows, dtype=torch.int32)
        staged = host.to(logits.device, non_blocking=True)
        bitmask, row_index = staged.split([num_rows * words, num_rows])
        apply_token_bitmask_(logits, row_index, bitmask.view(num_rows, words))

    def _mask_stop_tokens(self, logits: torch.Tensor, requests: list[Request]) -> None:
        rows: list[int] = []
        cols: list[int] = []
        vocab_size = logits.shape[1]
        for i, request in enumerate(requests):
            if request.masks_stop_tokens:
                ids = [t for t in request.stop_token_ids if t < vocab_size]
                rows.extend([i] * len(ids))
                cols.extend(ids)
        if rows:
            logits[rows, cols] = float("-inf")

    def _apply_penalties(self, logits: torch.Tensor, requests: list[Request]) -> None:
        rows = [i for i, r in enumerate(requests) if r.params.needs_penalties]
        if not rows:
            return
        penalized = [requests[i] for i in rows]
        device, vocab_size = logits.device, logits.shape[1]
        sub = logits[rows]
        seen = _token_counts([r.token_ids for r in penalized], vocab_size, device) > 0
        output_counts = _token_counts([r.output_token_ids for r in penalized], vocab_size, device)
        repetition = _column([r.params.repetition_penalty for r in penalized], device)
        frequency = _column([r.params.frequency_penalty for r in penalized], device)
        presence = _column([r.params.presence_penalty for r in penalized], device)
        scaled = torch.where(sub > 0, sub / repetition, sub * repetition)
        sub = torch.where(seen, scaled, sub)
        sub -= frequency * output_counts + presence * (output_counts > 0).float()
        logits[rows] = sub

    def _sample_random(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        """Draws from rows that may be modified in place."""
        params = [r.params for r in requests]
        vocab_size = logits.shape[1]
        min_p_rows = [i for i, p in enumerate(params) if p.min_p > 0]
        top_k_rows = [i for i, p in enumerate(params) if 0 < p.top_k < vocab_size]
        top_p_rows = [i for i, p in enumerate(params) if p.top_p < 1]
        # the race tempers as it draws, unless filters need the tempered distribution first
        tempered = not self.gumbel_race or bool(min_p_rows or top_k_rows or top_p_rows)
        if tempered:
            temperatures = {p.temperature for p in params}
            if len(temperatures) == 1:
                logits.div_(temperatures.pop())
            else:
                logits.div_(_column([p.temperature for p in params], logits.device))
        if min_p_rows:
            logits[min_p_rows] = _apply_min_p(
                logits[min_p_rows], [params[i].min_p for i in min_p_rows]
            )
        if top_k_rows:
            logits[top_k_rows] = _apply_top_k(
                logits[top_k_rows], [params[i].top_k for i in top_k_rows]
            )
        if top_p_rows:
            logits[top_p_rows] = _apply_top_p(
                logits[top_p_rows], [params[i].top_p for i in top_p_rows]
            )
        if self.gumbel_race:
            inv_temperature = [1.0 if tempered else 1.0 / p.temperature for p in params]
            temperatures = self._to_device(np.array(inv_temperature, dtype=np.float32))
            keys = self._to_device(self._race_keys(requests))
            return gumbel_argmax(logits, temperatures, keys)
        # unnormalized weights: the cumulative sum's last entry is their total
        weights = logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
        return _inverse_cdf(weights, self._uniform_draws(weights, requests))

    def _race_keys(self, requests: list[Request]) -> np.ndarray:
        """int64 noise keys per row: the sampler's own stream, or for a seeded request a mix of
        its seed and the position of the token it samples."""
        keys = self._keys.integers(0, 2**63, size=len(requests), dtype=np.int64)
        seeded = [i for i, r in enumerate(requests) if r.params.seed is not None]
        if seeded:
            seeds = np.array([requests[i].params.seed for i in seeded], dtype=np.uint64)
            positions = np.array([requests[i].num_tokens for i in seeded], dtype=np.uint64)
            keys[seeded] = splitmix64(splitmix64(seeds) ^ positions).view(np.int64)
        return keys

    def _uniform_draws(self, weights: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        """One uniform number per row, from the request's own generator when it has a seed."""
        draws = torch.empty(len(requests), dtype=torch.float64, device=weights.device)
        unseeded = [i for i, r in enumerate(requests) if r.generator is None]
        if len(unseeded) == len(requests):
            return draws.uniform_(generator=self.generator)
        if unseeded:
            draws[unseeded] = draws.new_empty(len(unseeded)).uniform_(generator=self.generator)
        for i, request in enumerate(requests):
            if request.generator is not None:
                draws[i].uniform_(generator=request.generator)
        return draws


def token_logprobs(
    logprobs: torch.Tensor, chosen: torch.Tensor, num_top: list[int | None]
) -> list[dict[int, Logprob]]:
    """Per row of log-probabilities ``[rows, vocab]``: the chosen token's and the top
    ``num_top[row]`` tokens' Logprobs, with their ranks (1: the most likely)."""
    chosen_values = logprobs.gather(1, chosen[:, None])
    chosen_ranks = (logprobs > chosen_values).sum(dim=-1) + 1
    max_top = max((n or 0 for n in num_top), default=0)
    top_values, top_ids = logprobs.topk(max_top, dim=-1)
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    rows = zip(chosen.tolist(), chosen_values.squeeze(1).tolist(), chosen_ranks.tolist())
    entries = []
    for j, (token_id, value, rank) in enumerate(rows):
        count = num_top[j] or 0
        entry = {
            top_id: Logprob(top_value, rank=k + 1)
            for k, (top_id, top_value) in enumerate(zip(top_ids[j][:count], top_values[j][:count]))
        }
        entry[token_id] = Logprob(value, rank=rank)
        entries.append(entry)
    return entries


def _num_positional_parameters(fn: Callable[..., Any]) -> int:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in parameters if p.kind in kinds)


def _inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Per row, the token whose interval of the cumulative weights holds uniform * total."""
    cdf = weights.cumsum(dim=-1)
    targets = (uniform[:, None] * cdf[:, -1:].double()).to(cdf.dtype)
    tokens = torch.searchsorted(cdf, targets, right=True).squeeze(1)
    tokens.clamp_(max=weights.shape[1] - 1)
    # rounding at the very top can land past the last token of nonzero weight
    impossible = weights.gather(1, tokens[:, None]).squeeze(1) == 0
    if impossible.any():
        tokens[impossible] = weights[impossible].argmax(dim=-1)
    return tokens


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None]


def _token_counts(
    token_lists: list[list[int]], vocab_size: int, device: torch.device
) -> torch.Tensor:
    """[len(token_lists), vocab_size] float32 occurrence counts."""
    width = max((len(tokens) for tokens in token_lists), default=0)
    # Padding points at an extra column that is dropped at the end.
    padded = torch.full((len(token_lists), width), vocab_size, dtype=torch.int64)
    for i, tokens in enumerate(token_lists):
        padded[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    counts = torch.zeros(len(token_lists), vocab_size + 1, dtype=torch.float32, device=device)
    counts.scatter_add_(
        1, padded.to(device), torch.ones_like(padded, dtype=torch.float32, device=device)
    )
    return counts[:, :vocab_size]


def _apply_min_p(logits: torch.Tensor, min_p: list[float]) -> torch.Tensor:
    probs = torch.softmax(logits, dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * _column(min_p, logits.device)
    return logits.masked_fill(probs < threshold, float("-inf"))


def _apply_top_k(logits: torch.Tensor, top_k: list[int]) -> torch.Tensor:
    top_values = logits.topk(max(top_k), dim=-1).values
    kth = torch.tensor(top_k, device=logits.device)[:, None] - 1
    return logits.masked_fill(logits < top_values.gather(1, kth), float("-inf"))


def _apply_top_p(logits: torch.Tensor, top_p: list[float]) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    # The most likely token always stays, whatever top_p.
    drop = mass_before > _column(top_p, logits.device)
    return torch.empty_like(logits).scatter_(
        1, order, sorted_logits.masked_fill(drop, float("-inf"))
    )
