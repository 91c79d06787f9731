"""Runs a model step by step through a paged KV cache, with metadata built by hand."""

from __future__ import annotations

import torch

from llmbatch.layers.attention.base import AttentionMetadata
from llmbatch.models import CausalLM


def build_metadata(
    block_tables: list[list[int]],
    context_lens: list[int],
    query_lens: list[int],
    block_size: int,
    num_padding_tokens: int = 0,
    device: torch.device | str = "cpu",
) -> AttentionMetadata:
    """Metadata for a flat batch: sequence i adds query_lens[i] tokens after context_lens[i] cached.

    Padding tokens, if any, come last and have slot -1.
    """
    slots = []
    for table, context, query in zip(block_tables, context_lens, query_lens):
        for pos in range(context, context + query):
            slots.append(table[pos // block_size] * block_size + pos % block_size)
    slots += [-1] * num_padding_tokens
    seq_lens = [c + q for c, q in zip(context_lens, query_lens)]
    width = max(len(t) for t in block_tables)
    padded_tables = [t + [0] * (width - len(t)) for t in block_tables]
    starts = [0]
    for q in query_lens:
        starts.append(starts[-1] + q)
    return AttentionMetadata(
        num_seqs=len(query_lens),
        num_tokens=len(slots),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor(padded_tables, dtype=torch.int32, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_lens_cpu=list(query_lens),
        seq_lens_cpu=seq_lens,
    )


class PagedRunner:
    """Keeps each sequence's blocks (handed out in a shuffled order, so they are scattered)."""

    def __init__(self, model: CausalLM, num_blocks: int, block_size: int, seed: int = 0) -> None:
        self.model = model
        self.block_size = block_size
        param = next(model.parameters())
        shape = (2, num_blocks, block_size, model.num_kv_heads, model.head_dim)
        self.kv_caches = [
            torch.zeros(shape, dtype=param.dtype, device=param.device)
            for _ in range(model.num_layers)
        ]
        order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))
        self.free_blocks = order.tolist()
        self.block_tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}

    @torch.inference_mode()
    def step(
        self, new_tokens: dict[int, list[int]], num_padding_tokens: int = 0
    ) -> dict[int, torch.Tensor]:
        """Feeds each sequence its new tokens; returns their logits, float32 ``[len(new), vocab]``."""
        seq_ids = list(new_tokens)
        for seq_id in seq_ids:
            table = self.block_tables.setdefault(seq_id, [])
            total = self.lengths.get(seq_id, 0) + len(new_tokens[seq_id])
            while len(table) * self.block_size < total:
                table.append(self.free_blocks.pop())
        contexts = [self.lengths.get(s, 0) for s in seq_ids]
        queries = [len(new_tokens[s]) for s in seq_ids]
        device = self.kv_caches[0].device
        meta = build_metadata(
            [self.block_tables[s] for s in seq_ids],
            contexts,
            queries,
            self.block_size,
            num_padding_tokens,
            device,
        )
        input_ids = [t for s in seq_ids for t in new_tokens[s]] + [0] * num_padding_tokens
        positions = [p for c, q in zip(contexts, queries) for p in range(c, c + q)]
        positions += [0] * num_padding_tokens
        hidden = self.model(
            torch.tensor(input_ids, device=device),
            torch.tensor(positions, device=device),
            self.kv_caches,
            meta,
        )
        logits = self.model.compute_logits(hidden)
        for seq_id, query in zip(seq_ids, queries):
            self.lengths[seq_id] = self.lengths.get(seq_id, 0) + query
        return dict(zip(seq_ids, logits[: sum(queries)].split(queries)))


def assert_logits_close(ours: torch.Tensor, reference: torch.Tensor, rel: float = 1e-4) -> None:
    """Equal up to ``rel`` of the largest reference logit."""
    error = (ours - reference).abs().max().item()
    scale = reference.abs().max().item()
    assert error <= rel * scale, f"max logit error {error:.3g} exceeds {rel} x {scale:.3g}"


def run_chunked(runner: PagedRunner, prompts: list[list[int]], plans: list[list[int]]) -> list:
    """Step i feeds chunk i of each sequence's plan (if it has one); returns logits per sequence.

    Plans that end in single tokens make the last steps decode-only batches.
    """
    for prompt, plan in zip(prompts, plans):
        assert sum(plan) == len(prompt)
    fed = [0] * len(prompts)
    logits: list[list[torch.Tensor]] = [[] for _ in prompts]
    for step in range(max(len(p) for p in plans)):
        chunks = {}
        for i, plan in enumerate(plans):
            if step < len(plan):
                chunks[i] = prompts[i][fed[i] : fed[i] + plan[step]]
                fed[i] += plan[step]
        for i, out in runner.step(chunks, num_padding_tokens=step % 2).items():
            logits[i].append(out)
    return [torch.cat(parts) for parts in logits]
