"""Runs a scheduled batch through the model: flat inputs, paged KV cache, logits, sampling."""

from __future__ import annotations

import gc
import itertools
import logging
from dataclasses import dataclass

import numpy as np
import torch

from llmbatch.engine.block_manager import cdiv
from llmbatch.engine.config import EngineConfig, default_cpu_kv_cache_bytes, kv_cache_torch_dtype
from llmbatch.engine.cuda_graphs import StepGraphs, capture_sizes, prompt_capture_sizes
from llmbatch.engine.multimodal import ImageChunk, mrope_step_positions
from llmbatch.engine.request import Request
from llmbatch.engine.sampler import Sampler
from llmbatch.engine.scheduler import ScheduledBatch
from llmbatch.layers.attention.base import AttentionMetadata
from llmbatch.models import CausalLM

logger = logging.getLogger(__name__)
_NUMPY_DTYPES = {torch.int64: np.int64, torch.int32: np.int32}


@dataclass(slots=True)
class StepResult:
    """The requests that sampled a token this step, with their token and its logprobs."""

    requests: list[Request]
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]


@dataclass(slots=True, eq=False)
class LaunchedStep:
    """A step queued on the device. `sampled` (device) row i is the token of `requests[i]`;
    `host_sampled` receives a copy of it, complete once `done` has fired."""

    requests: list[Request]
    sampled: torch.Tensor | None
    host_sampled: torch.Tensor | None
    logprobs: list[dict[int, float] | None]
    done: torch.cuda.Event | None
    needs_history: bool
    """True when a request of it samples from its whole token history (penalties): the next
    step may not be launched before this one's tokens are known."""


def kv_cache_bytes_per_block(model: CausalLM, block_size: int, dtype: torch.dtype) -> int:
    element_size = torch.empty((), dtype=dtype).element_size()
    return 2 * model.num_layers * block_size * model.num_kv_heads * model.head_dim * element_size


class ModelRunner:
    """Owns the model's KV cache and turns each ScheduledBatch into sampled tokens."""

    def __init__(self, model: CausalLM, config: EngineConfig, dtype: torch.dtype) -> None:
        self.model = model
        self.config = config
        self.device = config.torch_device
        self.dtype = dtype
        self.kv_cache_dtype = kv_cache_torch_dtype(config.kv_cache_dtype, dtype)
        self.block_size = config.block_size
        self.sampler = Sampler(self.device, config.seed, to_device=self._sampler_to_device)
        self.kv_caches: list[torch.Tensor] = []
        self.num_blocks = 0
        self._decode_graphs: StepGraphs | None = None
        self._prompt_graphs: StepGraphs | None = None
        # Two sets of pinned buffers, used by alternate steps: while step N+1 is prepared, the
        # copies of step N may still be reading theirs.
        self._host_buffers: list[list[torch.Tensor | None]] = [[None] * 5, [None] * 5]
        self._parity = 0

    def allocate_kv_cache(self, max_num_batched_tokens: int, max_model_len: int) -> int:
        """Sizes and allocates the KV cache; returns its number of blocks."""
        bytes_per_block = kv_cache_bytes_per_block(self.model, self.block_size, self.kv_cache_dtype)
        if self.config.num_gpu_blocks_override is not None:
            num_blocks = self.config.num_gpu_blocks_override
        else:
            budget = self.config.kv_cache_memory_bytes
            if budget is None:
                budget = (
                    self._profile_free_gpu_memory(max_num_batched_tokens, max_model_len)
                    if self.device.type == "cuda"
                    else default_cpu_kv_cache_bytes()
                )
            num_blocks = budget // bytes_per_block
        # every tensor-parallel rank indexes the same block ids into its own shard of the cache
        num_blocks = self.model.tensor_parallel.min_over_ranks(num_blocks, self.device)
        if num_blocks < 1:
            raise ValueError(
                f"no memory is left for the KV cache (one block of {self.block_size} tokens needs "
                f"{bytes_per_block} bytes); raise gpu_memory_utilization or kv_cache_memory_bytes, "
                "or use a smaller model"
            )
        # One allocation, zeroed: attention may read (and mask out) padding slots, which must
        # hold finite values.
        storage = torch.zeros(
            (self.model.num_layers, 2, num_blocks, self.block_size)
            + (self.model.num_kv_heads, self.model.head_dim),
            dtype=self.kv_cache_dtype,
            device=self.device,
        )
        self.kv_caches = list(storage.unbind(0))
        self.num_blocks = num_blocks
        logger.info(
            "KV cache: %d blocks of %d tokens in %s (%.2f GiB)",
            num_blocks,
            self.block_size,
            str(self.kv_cache_dtype).removeprefix("torch."),
            num_blocks * bytes_per_block / 2**30,
        )
        return num_blocks

    def capture_cuda_graphs(self, max_model_len: int, max_num_batched_tokens: int) -> None:
        """Captures CUDA graphs for decode-only steps and, up to `cuda_graph_max_tokens` tokens,
        for steps with prompt tokens (the attention backend must allow capture)."""
        max_num_seqs = self.config.max_num_seqs
        shape = (self.kv_caches, max_num_seqs, max_model_len, self.block_size)
        pool = torch.cuda.graph_pool_handle()
        prompt_sizes = prompt_capture_sizes(
            min(self.config.cuda_graph_max_tokens, max_num_batched_tokens)
        )
        # prompt graphs first: the largest activations, whose pool the others reuse
        if prompt_sizes and not self.model.uses_mrope:
            self._prompt_graphs = StepGraphs(self.model, prompt_sizes, *shape, False, pool)
        decode_sizes = capture_sizes(max_num_seqs)
        self._decode_graphs = StepGraphs(self.model, decode_sizes, *shape, True, pool)

    def execute(self, batch: ScheduledBatch) -> StepResult:
        """Runs one step to completion."""
        return self.resolve(self.launch(batch, None))

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, previous: LaunchedStep | None) -> LaunchedStep:
        """Queues the step on the device and returns without waiting for it. Pending input
        tokens (sampled by `previous`, not yet known on the host) are read from its device rows."""
        self._parity ^= 1
        inputs = self._prepare_inputs(batch, previous)
        input_ids, positions, meta, sample_rows, sampling, image_chunks = inputs
        hidden = self._forward(input_ids, positions, meta, image_chunks)
        if not sampling:
            return LaunchedStep([], None, None, [], None, False)
        logits = self.model.compute_logits(hidden if sample_rows is None else hidden[sample_rows])
        sampled = self.sampler(logits, sampling)
        needs_history = any(r.params.needs_penalties for r in sampling)
        if self.device.type != "cuda":
            return LaunchedStep(
                sampling, sampled.sampled, sampled.sampled, sampled.logprobs, None, needs_history
            )
        host = self._pinned(2, len(sampling), torch.int64)
        host.copy_(sampled.sampled, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return LaunchedStep(sampling, sampled.sampled, host, sampled.logprobs, done, needs_history)

    def _forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        image_chunks: list[ImageChunk],
    ) -> torch.Tensor:
        if image_chunks:
            embeds = self._embed_with_images(input_ids, image_chunks)
            return self.model(input_ids, positions, self.kv_caches, meta, inputs_embeds=embeds)
        for graphs in (self._decode_graphs, self._prompt_graphs):
            if graphs is not None and graphs.covers(meta):
                return graphs.run(input_ids, positions, meta)
        return self.model(input_ids, positions, self.kv_caches, meta)

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

    def _prepare_inputs(
        self, batch: ScheduledBatch, previous: LaunchedStep | None
    ) -> tuple[
        torch.Tensor,
        torch.Tensor,
        AttentionMetadata,
        torch.Tensor | None,
        list[Request],
        list[ImageChunk],
    ]:
        """Flat inputs of the step, the hidden rows to sample from (None: every row, as in a
        decode-only step), the requests that sample (those whose prompt is now complete) and
        where image encodings replace token embeddings."""
        requests = batch.requests
        num_seqs = len(requests)
        block_size = self.block_size
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
        sampling = requests if samples.all() else list(itertools.compress(requests, samples))
        sample_rows = query_start_loc[1:][samples] - 1

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
        sample_rows_t = rows_t if num_sample_rows else None
        return ids_t, positions_t, meta, sample_rows_t, sampling, image_chunks

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

    def _pinned(self, slot: int, size: int, dtype: torch.dtype) -> torch.Tensor:
        """`size` elements of this step's pinned host buffer `slot`."""
        buffers = self._host_buffers[self._parity]
        buffer = buffers[slot]
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            buffer = torch.empty(max(size, 1 << 16), dtype=dtype, pin_memory=True)
            buffers[slot] = buffer
        return buffer[:size]

    def _profile_free_gpu_memory(self, max_num_batched_tokens: int, max_model_len: int) -> int:
        """Bytes left for the KV cache under gpu_memory_utilization, after a forward pass of a
        full token budget (plus the logits and sampler sort of a full batch) shows the peak
        activation memory."""
        seq_len = min(max_model_len, max_num_batched_tokens)
        num_seqs = max(1, min(self.config.max_num_seqs, max_num_batched_tokens // seq_len))
        num_tokens = num_seqs * seq_len
        scratch_cache = [
            torch.zeros(
                (2, 1, self.block_size, self.model.num_kv_heads, self.model.head_dim),
                dtype=self.kv_cache_dtype,
                device=self.device,
            )
            for _ in range(self.model.num_layers)
        ]
        seq_lens = torch.full((num_seqs,), seq_len, dtype=torch.int32, device=self.device)
        meta = AttentionMetadata(
            num_seqs=num_seqs,
            num_tokens=num_tokens,
            query_start_loc=torch.arange(
                0, num_tokens + 1, seq_len, dtype=torch.int32, device=self.device
            ),
            seq_lens=seq_lens,
            block_tables=torch.zeros(
                (num_seqs, cdiv(seq_len, self.block_size)), dtype=torch.int32, device=self.device
            ),
            # -1: the scratch cache holds one block; nothing is written to it.
            slot_mapping=torch.full((num_tokens,), -1, dtype=torch.int64, device=self.device),
            max_query_len=seq_len,
            max_seq_len=seq_len,
            query_lens_cpu=[seq_len] * num_seqs,
            seq_lens_cpu=[seq_len] * num_seqs,
        )
        generator = torch.Generator(device=self.device).manual_seed(0)
        input_ids = torch.randint(
            0, self.model.vocab_size, (num_tokens,), device=self.device, generator=generator
        )
        positions = torch.arange(seq_len, device=self.device).repeat(num_seqs)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        baseline = torch.cuda.memory_allocated(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids, positions, scratch_cache, meta)
            rows = min(self.config.max_num_seqs, num_tokens)
            logits = self.model.compute_logits(hidden[:rows])
            logits.sort(dim=-1)
        torch.cuda.synchronize(self.device)
        activation_peak = torch.cuda.max_memory_allocated(self.device) - baseline
        del hidden, logits, scratch_cache
        gc.collect()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        available = (
            int(total * self.config.gpu_memory_utilization) - (total - free) - activation_peak
        )
        logger.info(
            "GPU memory: %.2f GiB total, %.2f GiB in use, %.2f GiB activation peak, "
            "%.2f GiB for the KV cache",
            total / 2**30,
            (total - free) / 2**30,
            activation_peak / 2**30,
            max(available, 0) / 2**30,
        )
        return max(available, 0)
