"""Runs a scheduled batch through the model: flat inputs, paged KV cache, logits, sampling."""

from __future__ import annotations

import gc
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from llmbatch.engine.block_manager import cdiv
from llmbatch.engine.config import EngineConfig
from llmbatch.engine.cuda_graphs import StepGraphs, capture_sizes, prompt_capture_sizes
from llmbatch.engine.kv_cache import allocate_kv_cache
from llmbatch.engine.multimodal import ImageChunk, mrope_step_positions
from llmbatch.engine.outputs import Logprob
from llmbatch.engine.pooler import PooledStep, StepPooler
from llmbatch.engine.request import Request
from llmbatch.engine.sampler import Sampler, token_logprobs
from llmbatch.engine.scheduler import ScheduledBatch
from llmbatch.layers.attention.base import AttentionMetadata
from llmbatch.models import CausalLM

_NUMPY_DTYPES = {torch.int64: np.int64, torch.int32: np.int32}


@dataclass(slots=True)
class StepResult:
    """The requests that sampled a token this step, with their token and its logprobs."""

    requests: list[Request]
    token_ids: list[int]
    logprobs: list[dict[int, Logprob] | None]


@dataclass(slots=True, eq=False)
class LaunchedStep:
    """A step queued on the device. `sampled` (device) row i is the token of `requests[i]`;
    `host_sampled` receives a copy of it, complete once `done` has fired."""

    requests: list[Request]
    needs_history: bool
    """True when a request of it samples from its token history on the host (penalties, bad
    words, logits processors): the next step may not be launched before this one's tokens are
    known."""
    logits: torch.Tensor | None = None
    """Set while the step's sampling waits for the previous step's tokens: a request with a
    grammar needs them consumed before its mask of next tokens exists (`ModelRunner.sample`)."""
    sampled: torch.Tensor | None = None
    host_sampled: torch.Tensor | None = None
    logprobs: list[dict[int, Logprob] | None] = field(default_factory=list)
    done: torch.cuda.Event | None = None
    pooled: PooledStep | None = None
    """A pooling model's results for the prompts the step completes."""


@dataclass(slots=True, frozen=True)
class StepInputs:
    """A step's flat inputs on the device, and which rows of its output are sampled."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    sample_rows: torch.Tensor | None
    """Hidden rows to sample from (None: every row, as in a decode-only step)."""
    sampling: list[Request]
    """The requests that sample this step (those whose prompt is now complete), in row order."""
    image_chunks: list[ImageChunk]
    """Where image encodings replace token embeddings."""


class ModelRunner:
    """Owns the model's KV cache and turns each ScheduledBatch into sampled tokens."""

    def __init__(self, model: CausalLM, config: EngineConfig) -> None:
        """Allocates the KV cache of ``config.num_kv_blocks`` blocks and, with
        ``config.cuda_graphs``, captures the step graphs."""
        self.model = model
        self.config = config
        self.device = config.torch_device
        self.sampler = Sampler(
            self.device,
            config.seed,
            to_device=self._sampler_to_device,
            host_int32=self._host_int32,
        )
        self.kv_caches = allocate_kv_cache(model, config)
        self._pooler = (
            StepPooler(model, lambda size: self._pinned(7, size, torch.float32))
            if model.pooler is not None
            else None
        )
        self._decode_graphs: StepGraphs | None = None
        self._prompt_graphs: StepGraphs | None = None
        # Two sets of pinned buffers, used by alternate steps: while step N+1 is prepared, the
        # copies of step N may still be reading theirs.
        self._host_buffers: list[list[torch.Tensor | None]] = [[None] * 8, [None] * 8]
        self._parity = 0
        if config.cuda_graphs:
            self._capture_cuda_graphs()

    def _capture_cuda_graphs(self) -> None:
        """CUDA graphs for decode-only steps and, up to `cuda_graph_max_tokens` tokens, for
        steps with prompt tokens (the attention backend must allow capture)."""
        config = self.config
        pool = torch.cuda.graph_pool_handle()
        if self.model.lora is not None:
            # the warm-ups compile the LoRA kernels, which every captured graph holds
            self.model.lora.batch.active = True
        prompt_sizes = prompt_capture_sizes(
            min(config.cuda_graph_max_tokens, config.max_num_batched_tokens)
        )
        # prompt graphs first: the largest activations, whose pool the others reuse
        if prompt_sizes and not self.model.uses_mrope:
            self._prompt_graphs = StepGraphs(
                self.model, prompt_sizes, self.kv_caches, config, False, pool
            )
        if self._pooler is not None:
            return  # a pooling model's steps are all prompt tokens
        decode_sizes = capture_sizes(config.max_num_seqs)
        self._decode_graphs = StepGraphs(
            self.model, decode_sizes, self.kv_caches, config, True, pool
        )

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, previous: LaunchedStep | None) -> LaunchedStep:
        """Queues the step on the device and returns without waiting for it. Pending input
        tokens (sampled by `previous`, not yet known on the host) are read from its device rows."""
        self._parity ^= 1
        inputs = self._prepare_inputs(batch, previous)
        hidden = self._forward(inputs)
        if self._pooler is not None:
            pooled = self._pooler.pool(hidden, batch.requests, batch.num_new_tokens)
            return LaunchedStep([], False, pooled=pooled)
        if any(r.wants_prompt_logprobs for r in batch.requests):
            self._score_prompts(batch, hidden)
        sampling = inputs.sampling
        if not sampling:
            return LaunchedStep([], False)
        rows = inputs.sample_rows
        step = LaunchedStep(
            sampling,
            needs_history=any(r.params.needs_host_logits for r in sampling),
            logits=self.model.compute_logits(hidden if rows is None else hidden[rows]),
        )
        if not any(r.grammar is not None and r.num_pending for r in sampling):
            self.sample(step)
        return step

    def _score_prompts(self, batch: ScheduledBatch, hidden: torch.Tensor) -> None:
        """Appends the log-probabilities of the prompt tokens this step's rows predict, for the
        requests that asked for them (rows scored before a preemption are not scored again)."""
        rows: list[int] = []
        targets: list[int] = []
        owners: list[Request] = []
        first_row = 0
        for request, count in zip(batch.requests, batch.num_new_tokens):
            if request.wants_prompt_logprobs:
                start = request.num_computed_tokens
                low = max(len(request.prompt_logprobs), start + 1)
                high = min(request.num_prompt_tokens - 1, start + count)
                for token in range(low, high + 1):
                    rows.append(first_row + token - 1 - start)
                    targets.append(request.token_ids[token])
                    owners.append(request)
            first_row += count
        if not rows:
            return
        index = torch.tensor(rows, device=hidden.device)
        logprobs = torch.log_softmax(self.model.compute_logits(hidden[index]), dim=-1)
        chosen = torch.tensor(targets, device=hidden.device)
        entries = token_logprobs(logprobs, chosen, [r.params.prompt_logprobs for r in owners])
        for request, entry in zip(owners, entries):
            request.prompt_logprobs.append(entry)

    @torch.inference_mode()
    def sample(self, step: LaunchedStep) -> None:
        """Queues the sampling of a launched step, and the copy of its tokens to the host."""
        sampled = self.sampler(step.logits, step.requests)
        step.logits = None
        step.sampled, step.logprobs = sampled.sampled, sampled.logprobs
        if self.device.type != "cuda":
            step.host_sampled = sampled.sampled
            return
        step.host_sampled = self._pinned(2, len(step.requests), torch.int64)
        step.host_sampled.copy_(sampled.sampled, non_blocking=True)
        step.done = torch.cuda.Event()
        step.done.record()

    def _forward(self, inputs: StepInputs) -> torch.Tensor:
        ids, positions, meta = inputs.input_ids, inputs.positions, inputs.meta
        if inputs.image_chunks:
            embeds = self._embed_with_images(ids, inputs.image_chunks)
            return self.model(ids, positions, self.kv_caches, meta, inputs_embeds=embeds)
        for graphs in (self._decode_graphs, self._prompt_graphs):
            if graphs is not None and graphs.covers(meta):
                return graphs.run(ids, positions, meta)
        return self.model(ids, positions, self.kv_caches, meta)

    def resolve(self, step: LaunchedStep) -> StepResult:
        """Waits for a launched step and returns its sampled tokens."""
        if step.host_sampled is None:
            return StepResult([], [], [])
        if step.done is not None:
            step.done.synchronize()
        return StepResult(step.requests, step.host_sampled.tolist(), step.logprobs)

    def _embed_with_images(self, input_ids: torch.Tensor, chunks: list[ImageChunk]) -> torch.Tensor:
        """The step's input embeddings with image placeholders replaced by the images' encodings
        (each request's images are encoded once, at the first chunk of its prompt that needs
        them, and dropped once its prompt is done)."""
        embeds = self.model.embed_input_ids(input_ids)
        at, rows = [], []
        for chunk in chunks:
            images = chunk.images
            if chunk.rows.size:
                if images.embeds is None:
                    images.embeds = self.model.encode_images(
                        images.inputs.pixel_values, images.inputs.image_grid_thw
                    )
                at.append(chunk.at)
                rows.append(images.embeds[torch.from_numpy(chunk.rows).to(self.device)])
            if chunk.completes_prompt:
                images.embeds = None
        if at:
            index = torch.from_numpy(np.concatenate(at)).to(self.device)
            embeds[index] = torch.cat(rows).to(embeds.dtype)
        return embeds

    def close(self) -> None:
        self._decode_graphs = self._prompt_graphs = None
        self.kv_caches = []
        self.model = None  # type: ignore[assignment]
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _prepare_inputs(self, batch: ScheduledBatch, previous: LaunchedStep | None) -> StepInputs:
        """The step's inputs, built on the host and copied to the device in two transfers."""
        requests = batch.requests
        num_seqs = len(requests)
        block_size = self.config.block_size
        context_list = [r.num_computed_tokens for r in requests]
        query_lens = np.array(batch.num_new_tokens, dtype=np.int64)
        context_lens = np.array(context_list, dtype=np.int64)
        seq_lens = context_lens + query_lens
        max_query_len = int(query_lens.max())
        max_seq_len = int(seq_lens.max())
        # A pending token (sampled by the previous step, still on the device) is always a
        # decode's only input token: it is filled in on the device from the previous step.
        pending_at: list[int] = []
        pending_rows: list[int] = []
        if max_query_len == 1:
            num_tokens = num_seqs
            ids: list[int] = []
            for i, (request, start) in enumerate(zip(requests, context_list)):
                if start < len(request.token_ids):
                    ids.append(request.token_ids[start])
                else:
                    ids.append(0)
                    pending_at.append(i)
                    pending_rows.append(request.pending_row)
            token_ids = np.array(ids, dtype=np.int64)
            positions = context_lens
            seq_index = np.arange(num_seqs)
        else:
            num_tokens = int(query_lens.sum())
            ids = []
            for request, start, count in zip(requests, context_list, batch.num_new_tokens):
                if start < len(request.token_ids):
                    ids.extend(request.token_ids[start : start + count])
                else:
                    pending_at.append(len(ids))
                    pending_rows.append(request.pending_row)
                    ids.append(0)
            token_ids = np.array(ids, dtype=np.int64)
            starts = np.cumsum(query_lens) - query_lens
            seq_index = np.repeat(np.arange(num_seqs), query_lens)
            positions = np.arange(num_tokens) - np.repeat(starts - context_lens, query_lens)

        block_counts = np.array([len(r.block_ids) for r in requests], dtype=np.int64)
        width = max(cdiv(max_seq_len, block_size), int(block_counts.max()))
        block_tables = np.zeros((num_seqs, width), dtype=np.int64)
        block_tables[np.arange(width) < block_counts[:, None]] = np.fromiter(
            itertools.chain.from_iterable(r.block_ids for r in requests),
            dtype=np.int64,
            count=int(block_counts.sum()),
        )
        slot_mapping = (
            block_tables[seq_index, positions // block_size] * block_size + positions % block_size
        )
        query_start_loc = np.zeros(num_seqs + 1, dtype=np.int64)
        np.cumsum(query_lens, out=query_start_loc[1:])
        samples = seq_lens == np.array([r.num_tokens for r in requests], dtype=np.int64)
        if self._pooler is not None:
            samples[:] = False  # a pooling model samples nothing
        sampling = requests if samples.all() else list(itertools.compress(requests, samples))
        sample_rows = query_start_loc[1:][samples] - 1

        if self.model.lora is not None:
            slots = np.repeat(np.array([r.lora_slot for r in requests], np.int32), query_lens)
            self.model.lora.batch.set_step(slots, self._lora_to_device)
        num_sample_rows = sample_rows.size if sample_rows.size != num_tokens else 0
        num_pending = len(pending_at)
        model_positions, image_chunks = positions, []
        if self.model.uses_mrope:
            model_positions, image_chunks = mrope_step_positions(
                requests, context_list, batch.num_new_tokens, positions, query_start_loc[:-1]
            )
        token_part = [token_ids, model_positions.ravel(), slot_mapping]
        token_part.append(sample_rows[:num_sample_rows])
        token_part += [np.array(pending_at, np.int64), np.array(pending_rows, np.int64)]
        token_data = self._to_device(token_part, torch.int64, 0)
        seq_data = self._to_device(
            [query_start_loc, seq_lens, block_tables.ravel()], torch.int32, 1
        )
        ids_t, positions_t, slots_t, rows_t, at_t, from_t = token_data.split(
            [num_tokens, model_positions.size, num_tokens, num_sample_rows] + [num_pending] * 2
        )
        positions_t = positions_t.view(model_positions.shape)
        if num_pending:
            if previous is None or previous.sampled is None:
                raise RuntimeError("a step has pending input tokens but no previous step")
            ids_t.index_copy_(0, at_t, previous.sampled.index_select(0, from_t))
        qsl_t, seq_lens_t, tables_t = seq_data.split([num_seqs + 1, num_seqs, block_tables.size])
        meta = AttentionMetadata(
            num_seqs=num_seqs,
            num_tokens=num_tokens,
            query_start_loc=qsl_t,
            seq_lens=seq_lens_t,
            block_tables=tables_t.view(block_tables.shape),
            slot_mapping=slots_t,
            max_query_len=max_query_len,
            max_seq_len=max_seq_len,
            query_lens_cpu=batch.num_new_tokens,
            seq_lens_cpu=seq_lens.tolist(),
        )
        return StepInputs(
            input_ids=ids_t,
            positions=positions_t,
            meta=meta,
            sample_rows=rows_t if num_sample_rows else None,
            sampling=sampling,
            image_chunks=image_chunks,
        )

    def _to_device(self, parts: list[np.ndarray], dtype: torch.dtype, slot: int) -> torch.Tensor:
        """The parts laid end to end on the device, through one reused (pinned) host buffer and
        one copy. Reuse is safe: a buffer's next user is two steps later, and the engine never
        launches a step before the one two back has finished."""
        size = sum(part.size for part in parts)
        if self.device.type == "cpu":
            return torch.from_numpy(np.concatenate(parts).astype(_NUMPY_DTYPES[dtype], copy=False))
        buffer = self._pinned(slot, size, dtype)
        np.concatenate(parts, out=buffer.numpy(), casting="unsafe")
        return buffer.to(self.device, non_blocking=True)

    def _sampler_to_device(self, values: np.ndarray) -> torch.Tensor:
        """The sampler's per-row inputs (int64 noise keys, float32 temperatures), copied
        without a host sync. One array of each dtype per step: a second would overwrite the
        pinned buffer before the first copy has run."""
        if values.dtype == np.int64:
            return self._to_device([values], torch.int64, 3)
        return self._to_device([values], torch.float32, 4)

    def _lora_to_device(self, values: np.ndarray) -> torch.Tensor:
        """The step's LoRA slots or plan, copied without a host sync."""
        return self._to_device(
            [values], torch.int32 if values.dtype == np.int32 else torch.int64, 6
        )

    def _host_int32(self, size: int) -> torch.Tensor:
        """The sampler's int32 buffer of a step (grammar masks), pinned on a GPU host."""
        if self.device.type == "cpu":
            return torch.empty(size, dtype=torch.int32)
        return self._pinned(5, size, torch.int32)

    def _pinned(self, slot: int, size: int, dtype: torch.dtype) -> torch.Tensor:
        """`size` elements of this step's pinned host buffer `slot`."""
        buffers = self._host_buffers[self._parity]
        buffer = buffers[slot]
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            buffer = torch.empty(max(size, 1 << 16), dtype=dtype, pin_memory=True)
            buffers[slot] = buffer
        return buffer[:size]
