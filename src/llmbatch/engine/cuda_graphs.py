"""CUDA graphs of decode-only steps: one captured forward per padded batch size."""

from __future__ import annotations

import bisect
import logging

import torch

from llmbatch.engine.block_manager import cdiv
from llmbatch.layers.attention.base import AttentionMetadata
from llmbatch.models import CausalLM

logger = logging.getLogger(__name__)


def fastest_at_least(sizes: list[int], seconds: list[float], margin: float = 0.05) -> list[int]:
    """For each captured size, the size at least as large whose graph replays fastest (a larger
    one only when faster by more than `margin`, so that timing noise pads nothing).

    Matmul libraries pick kernels per shape, and some batch sizes get a slow one (a larger,
    padded batch can take less time): a step runs the graph that is fastest among those that
    fit it.
    """
    chosen = list(sizes)
    best = len(sizes) - 1
    for i in range(len(sizes) - 1, -1, -1):
        if seconds[best] >= seconds[i] * (1 - margin):
            best = i
        chosen[i] = sizes[best]
    return chosen


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Batch sizes to capture: small powers of two, then every multiple of 16 up to the max."""
    sizes = {n for n in (1, 2, 4, 8) if n <= max_num_seqs}
    sizes.update(range(16, max_num_seqs + 1, 16))
    sizes.add(max_num_seqs)
    return sorted(sizes)


class DecodeGraphs:
    """Replays a captured model forward for decode-only steps of up to max_num_seqs sequences.

    A step of n sequences runs, among the graphs of captured sizes >= n, the one that replayed
    fastest at start-up; the padding rows write nothing (slot -1) and attend over one cached
    token. Graphs are captured with max_seq_len = max_model_len, so a kernel sized from it
    covers every later context.
    """

    def __init__(
        self,
        model: CausalLM,
        kv_caches: list[torch.Tensor],
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
    ) -> None:
        device = kv_caches[0].device
        self.sizes = capture_sizes(max_num_seqs)
        largest = self.sizes[-1]
        self._input_ids = torch.zeros(largest, dtype=torch.int64, device=device)
        self._positions = torch.zeros(largest, dtype=torch.int64, device=device)
        self._slot_mapping = torch.full((largest,), -1, dtype=torch.int64, device=device)
        self._seq_lens = torch.ones(largest, dtype=torch.int32, device=device)
        self._block_tables = torch.zeros(
            (largest, cdiv(max_model_len, block_size)), dtype=torch.int32, device=device
        )
        self._query_start_loc = torch.arange(largest + 1, dtype=torch.int32, device=device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            # Largest first, so that smaller graphs reuse its memory pool.
            for size in reversed(self.sizes):
                meta = self._metadata(size, max_model_len)
                inputs = (self._input_ids[:size], self._positions[:size], kv_caches, meta)
                model(*inputs)  # warm-up: autotuning and lazy initialisation stay out of the graph
                torch.cuda.synchronize(device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._outputs[size] = model(*inputs)
                self._graphs[size] = graph
        seconds = [self._replay_seconds(size) for size in self.sizes]
        self._chosen = fastest_at_least(self.sizes, seconds)
        padded = {n: c for n, c in zip(self.sizes, self._chosen) if c != n}
        logger.info(
            "captured CUDA graphs for decode batch sizes %s (run padded, being faster: %s)",
            self.sizes,
            padded,
        )

    @property
    def max_batch_size(self) -> int:
        return self.sizes[-1]

    def run(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Hidden states ``[num_seqs, hidden]`` of a decode-only step (one token per sequence)."""
        n = meta.num_seqs
        size = self._chosen[bisect.bisect_left(self.sizes, n)]
        width = meta.block_tables.shape[1]
        self._input_ids[:n].copy_(input_ids)
        self._positions[:n].copy_(positions)
        self._slot_mapping[:n].copy_(meta.slot_mapping)
        self._slot_mapping[n:size].fill_(-1)
        self._seq_lens[:n].copy_(meta.seq_lens)
        self._seq_lens[n:size].fill_(1)
        self._block_tables[:n, :width].copy_(meta.block_tables)
        self._block_tables[n:size].zero_()
        self._graphs[size].replay()
        return self._outputs[size][:n]

    def _replay_seconds(self, size: int, repeats: int = 5) -> float:
        """Median replay time of a graph (its inputs as captured: nothing written, tiny contexts,
        so the matmuls dominate)."""
        graph = self._graphs[size]
        graph.replay()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        return sorted(times)[repeats // 2]

    def _metadata(self, size: int, max_model_len: int) -> AttentionMetadata:
        return AttentionMetadata(
            num_seqs=size,
            num_tokens=size,
            query_start_loc=self._query_start_loc[: size + 1],
            seq_lens=self._seq_lens[:size],
            block_tables=self._block_tables[:size],
            slot_mapping=self._slot_mapping[:size],
            max_query_len=1,
            max_seq_len=max_model_len,
            query_lens_cpu=[1] * size,
            seq_lens_cpu=[max_model_len] * size,
        )
