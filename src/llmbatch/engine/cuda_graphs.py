"""CUDA graphs of engine steps: one captured forward per padded size, in two ladders.

Decode-only steps are captured per number of sequences (one token each). Steps that carry prompt
tokens are captured per number of tokens, for up to ``min(tokens, max_num_seqs)`` sequences: an
eager forward launches a few hundred kernels, and for a small model that host time is longer than
the step's device work (bench/RESULTS.md: the Qwen2.5-0.5B shape's `sharegpt` +26-40%).
"""

from __future__ import annotations

import bisect
import logging

import torch

from llmbatch.engine.block_manager import cdiv
from llmbatch.engine.config import EngineConfig
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
    """Decode batch sizes to capture: small powers of two, then every multiple of 16 up to the max."""
    sizes = {n for n in (1, 2, 4, 8) if n <= max_num_seqs}
    sizes.update(range(16, max_num_seqs + 1, 16))
    sizes.add(max_num_seqs)
    return sorted(sizes)


def prompt_capture_sizes(max_tokens: int) -> list[int]:
    """Token counts to capture for steps with prompt tokens: multiples of 16 up to 128, of 32 up
    to 256, of 64 up to 512, then of 128 (a step is padded by less than a quarter)."""
    ladder = [*range(16, 129, 16), *range(160, 257, 32), *range(320, 513, 64)]
    ladder += range(640, max_tokens + 1, 128)
    return [n for n in ladder if n <= max_tokens]


class StepGraphs:
    """Replays captured model forwards for the steps of one ladder.

    ``decode_only``: a size is a number of sequences of one token each; padding rows write
    nothing (slot -1) and attend over one cached token. Otherwise a size is a number of tokens,
    of up to ``min(size, max_num_seqs)`` sequences: padding sequences have no query tokens and
    padding tokens belong to no sequence (their rows are computed and dropped). Graphs are
    captured with max_seq_len = max_model_len, so a kernel sized from it covers every context.
    A step runs, among the graphs of captured sizes that fit it, the one that replayed fastest
    at start-up.
    """

    def __init__(
        self,
        model: CausalLM,
        sizes: list[int],
        kv_caches: list[torch.Tensor],
        config: EngineConfig,
        decode_only: bool,
        pool: tuple[int, int],
    ) -> None:
        device = kv_caches[0].device
        max_model_len, block_size = config.max_model_len, config.block_size
        self.sizes = sizes
        self.decode_only = decode_only
        self._max_num_seqs = config.max_num_seqs
        largest = sizes[-1]
        max_seqs = self._num_seqs(largest)
        self._input_ids = torch.zeros(largest, dtype=torch.int64, device=device)
        self._positions = torch.zeros(largest, dtype=torch.int64, device=device)
        self._slot_mapping = torch.full((largest,), -1, dtype=torch.int64, device=device)
        self._seq_lens = torch.ones(max_seqs, dtype=torch.int32, device=device)
        self._block_tables = torch.zeros(
            (max_seqs, cdiv(max_model_len, block_size)), dtype=torch.int32, device=device
        )
        # Decode rows own one token each, padding included; otherwise nothing until a step runs.
        self._query_start_loc = (
            torch.arange(max_seqs + 1, dtype=torch.int32, device=device)
            if decode_only
            else torch.zeros(max_seqs + 1, dtype=torch.int32, device=device)
        )
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            # Largest first, so that smaller graphs reuse its memory pool.
            for size in reversed(sizes):
                meta = self._metadata(size, max_model_len)
                inputs = (self._input_ids[:size], self._positions[:size], kv_caches, meta)
                model(*inputs)  # warm-up: autotuning and lazy initialisation stay out of the graph
                torch.cuda.synchronize(device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._outputs[size] = model(*inputs)
                self._graphs[size] = graph
        seconds = [self._replay_seconds(size) for size in sizes]
        self._chosen = fastest_at_least(sizes, seconds)
        self.replays = 0
        padded = {n: c for n, c in zip(sizes, self._chosen) if c != n}
        logger.info(
            "captured CUDA graphs for %s steps of %s %s (run padded, being faster: %s)",
            "decode" if decode_only else "prompt",
            sizes,
            "sequences" if decode_only else "tokens",
            padded,
        )

    @property
    def max_size(self) -> int:
        return self.sizes[-1]

    def covers(self, meta: AttentionMetadata) -> bool:
        """Whether a step of this shape can replay one of these graphs."""
        if self.decode_only:
            return meta.is_decode_only and meta.num_seqs <= self.max_size
        return not meta.is_decode_only and meta.num_tokens <= self.max_size

    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """Hidden states ``[num_tokens, hidden]`` of a step that `covers` accepts."""
        n, t = meta.num_seqs, meta.num_tokens
        size = self._chosen[bisect.bisect_left(self.sizes, t)]
        width = meta.block_tables.shape[1]
        self._input_ids[:t].copy_(input_ids)
        self._positions[:t].copy_(positions)
        self._slot_mapping[:t].copy_(meta.slot_mapping)
        self._slot_mapping[t:size].fill_(-1)
        self._seq_lens[:n].copy_(meta.seq_lens)
        self._block_tables[:n, :width].copy_(meta.block_tables)
        if self.decode_only:
            self._seq_lens[n:size].fill_(1)
            self._block_tables[n:size].zero_()
        else:
            self._query_start_loc[: n + 1].copy_(meta.query_start_loc)
            self._query_start_loc[n + 1 : self._num_seqs(size) + 1].fill_(t)
        self._graphs[size].replay()
        self.replays += 1
        return self._outputs[size][:t]

    def _num_seqs(self, size: int) -> int:
        return size if self.decode_only else min(size, self._max_num_seqs)

    def _replay_seconds(self, size: int, repeats: int = 5) -> float:
        """Median replay time of a graph (its inputs as captured: nothing written, tiny or no
        contexts, so the matmuls dominate)."""
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
        seqs = self._num_seqs(size)
        return AttentionMetadata(
            num_seqs=seqs,
            num_tokens=size,
            query_start_loc=self._query_start_loc[: seqs + 1],
            seq_lens=self._seq_lens[:seqs],
            block_tables=self._block_tables[:seqs],
            slot_mapping=self._slot_mapping[:size],
            max_query_len=1 if self.decode_only else size,
            max_seq_len=max_model_len,
            query_lens_cpu=[1] * seqs if self.decode_only else [0] * seqs,
            seq_lens_cpu=[max_model_len] * seqs,
        )
