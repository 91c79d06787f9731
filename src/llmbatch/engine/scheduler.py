"""Chooses, each step, how many tokens of which requests to run under a token budget."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmbatch.engine.block_manager import BlockManager, cdiv
from llmbatch.engine.config import SchedulerConfig
from llmbatch.engine.request import Request, RequestStatus

if TYPE_CHECKING:
    from llmbatch.engine.lora_manager import LoRAManager


@dataclass(slots=True)
class ScheduledBatch:
    """One step's work: request i runs its tokens [num_computed_tokens, + num_new_tokens[i])."""

    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __len__(self) -> int:
        return len(self.requests)


class Scheduler:
    """One token-budget loop per step: running requests first (decodes and unfinished prefill
    chunks), then waiting requests' prefills in arrival order.

    With `reserve_output_kv`, a waiting request is admitted only while the free blocks cover
    the outputs the running requests and itself are still expected to generate: all of the
    remaining tokens of a request that can only stop at its length limit (ignore_eos, no stop
    tokens or strings), and for the others the share of their allowed tokens that finished
    requests used (nothing before the first finish, so admission starts greedy). Recomputing a
    preempted sequence costs a prefill; a reservation costs nothing when it is right.

    When a running request needs a block and none is free, the newest running request is
    preempted: its blocks are freed and it goes back to the front of the queue, to be recomputed
    later (mostly from the prefix cache).

    With LoRA `adapters`, a waiting request is admitted only while its adapter has a device
    slot (running requests hold theirs until they stop running).
    """

    def __init__(
        self,
        config: SchedulerConfig,
        block_manager: BlockManager,
        adapters: LoRAManager | None = None,
    ) -> None:
        self.block_manager = block_manager
        self.adapters = adapters
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.max_num_seqs = config.max_num_seqs
        self.enable_chunked_prefill = config.enable_chunked_prefill
        self.reserve_output_kv = config.reserve_output_kv
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        # outputs of finished requests that could stop early: generated and allowed tokens
        self._generated_tokens = 0
        self._allowed_tokens = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self._schedule_running(batch, self.max_num_batched_tokens)
        if batch.num_preempted == 0:
            self._schedule_waiting(batch, budget)
        return batch

    def finish(self, request: Request) -> None:
        """Releases a request that finished in the last step (it may have been preempted since)."""
        try:
            self.running.remove(request)
        except ValueError:
            self.waiting.remove(request)
        self._release(request)
        if not request.stops_only_at_length_limit:
            self._generated_tokens += request.num_output_tokens
            self._allowed_tokens += request.length_limit - request.num_prompt_tokens

    @property
    def output_share(self) -> float:
        """Share of their allowed output tokens that finished requests (those that could stop
        early) generated; 0 before any finished."""
        return self._generated_tokens / self._allowed_tokens if self._allowed_tokens else 0.0

    def abort(self, request_id: str) -> Request | None:
        for queue in (self.waiting, self.running):
            for request in queue:
                if request.request_id == request_id:
                    queue.remove(request)
                    self._release(request)
                    request.status = RequestStatus.FINISHED
                    return request
        return None

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            if request.certain_to_finish:
                index += 1
                continue
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.block_manager.allocate(request, request.num_computed_tokens + num_new):
                victim = self.running.pop()
                self._preempt(victim)
                batch.num_preempted += 1
                if victim is request:
                    return budget
            batch.requests.append(request)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
            index += 1
        return budget

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        reserved = 0
        if self.reserve_output_kv and self.waiting and len(self.running) < self.max_num_seqs:
            reserved = sum(self._expected_growth(r, len(r.block_ids)) for r in self.running)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            # prompt log-probabilities (and MEAN or CLS pooling) need every prompt token
            # computed, none from the cache
            cached_blocks = (
                [] if request.needs_whole_prompt else self.block_manager.find_cached_prefix(request)
            )
            num_cached = len(cached_blocks) * self.block_manager.block_size
            num_new = request.num_tokens - num_cached
            if num_new > budget:
                if not self.enable_chunked_prefill:
                    return
                num_new = budget
            if self.reserve_output_kv and self.running:
                growth = self._expected_growth(request, len(cached_blocks))
                if growth + reserved > self.block_manager.num_free_blocks:
                    return
            if self.adapters is not None and not self.adapters.can_admit(request):
                return
            if not self.block_manager.allocate(request, num_cached + num_new, cached_blocks):
                return
            if self.adapters is not None:
                self.adapters.admit(request)
            if self.reserve_output_kv:
                reserved += self._expected_growth(request, len(request.block_ids))
            self.waiting.popleft()
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_cached
                request.metrics.first_scheduled_time = time.time()
            request.num_computed_tokens = num_cached
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            batch.requests.append(request)
            batch.num_new_tokens.append(num_new)
            budget -= num_new

    def _expected_growth(self, request: Request, num_held_blocks: int) -> int:
        """Blocks beyond `num_held_blocks` the request is expected to need before it finishes."""
        remaining = request.length_limit - request.num_tokens
        if not request.stops_only_at_length_limit:
            remaining = int(remaining * self.output_share)
        return max(
            cdiv(request.num_tokens + remaining, self.block_manager.block_size) - num_held_blocks, 0
        )

    def _release(self, request: Request) -> None:
        """Frees what a request held while it ran: its KV blocks and its adapter's slot."""
        self.block_manager.free(request)
        if self.adapters is not None:
            self.adapters.release(request)

    def _preempt(self, request: Request) -> None:
        request.num_preemptions += 1
        self._release(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
