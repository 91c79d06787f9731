"""The torch backend against plain per-sequence attention written from the definition."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import accumulate

import pytest
import torch

from llmbatch.layers.attention import get_attention_backend
from llmbatch.layers.attention.base import AttentionMetadata


@dataclass
class Case:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    seqs: list[tuple[int, int]]  # (tokens already cached, new tokens) per sequence
    sliding_window: int | None = None
    softcap: float | None = None


CASES = {
    # prefills of lengths around block boundaries, no cache yet
    "prefill-mha": Case(4, 4, 32, 16, [(0, 1), (0, 15), (0, 16), (0, 17), (0, 33)]),
    # decode-only batches: one new token after contexts ending at and across block boundaries
    "decode-gqa-4to1": Case(8, 2, 64, 16, [(15, 1), (16, 1), (31, 1), (0, 1), (70, 1)]),
    "decode-gqa-7to1": Case(14, 2, 64, 4, [(3, 1), (4, 1), (5, 1), (40, 1)]),
    # chunks after a cached prefix (prefix-cache hits, earlier chunks), mixed with decodes
    "mixed-prefix-gqa-3to1": Case(9, 3, 64, 16, [(16, 5), (32, 1), (7, 9), (0, 20), (48, 16)]),
    "sliding-window-prefill": Case(4, 2, 32, 4, [(0, 30), (10, 12), (0, 5)], sliding_window=7),
    "sliding-window-decode": Case(4, 1, 32, 8, [(30, 1), (6, 1), (7, 1), (100, 1)], 8),
    "sliding-window-mixed": Case(6, 2, 16, 4, [(9, 1), (20, 6), (0, 11)], sliding_window=5),
    # Gemma 2's soft-capped scores (a small cap, so that capping changes them), with and
    # without a window, in prefills, chunks and decodes
    "softcap-mixed": Case(4, 2, 32, 4, [(0, 13), (9, 1), (6, 7), (0, 1)], softcap=2.0),
    "softcap-window-decode": Case(8, 2, 16, 8, [(30, 1), (3, 1)], sliding_window=6, softcap=1.5),
}


def naive_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scale: float,
    window: int | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """The last len(q) tokens of one sequence attending over all its keys, in float64."""
    query_len, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = keys.shape
    group = num_heads // num_kv_heads
    out = torch.empty(q.shape, dtype=torch.float64)
    for i in range(query_len):
        pos = seq_len - query_len + i
        visible = [t for t in range(seq_len) if t <= pos and (window is None or pos - t < window)]
        for h in range(num_heads):
            k = keys[visible, h // group].double()
            v = values[visible, h // group].double()
            scores = k @ q[i, h].double() * scale
            if softcap is not None:
                scores = softcap * torch.tanh(scores / softcap)
            weights = torch.softmax(scores, dim=0)
            out[i, h] = weights @ v
    return out


def make_step(case: Case, dtype: torch.dtype, seed: int, num_padding: int = 2):
    """Random K/V for every token, earlier ones already in scattered blocks of the cache."""
    gen = torch.Generator().manual_seed(seed)
    bs = case.block_size
    blocks_needed = [math.ceil((c + n) / bs) for c, n in case.seqs]
    num_blocks = sum(blocks_needed) + 3
    free = torch.randperm(num_blocks, generator=gen).tolist()
    cache = torch.randn(2, num_blocks, bs, case.num_kv_heads, case.head_dim, generator=gen)
    cache = cache.to(dtype)
    tables, full_kv, q_parts, k_parts, v_parts, slots = [], [], [], [], [], []
    for (context, new), needed in zip(case.seqs, blocks_needed):
        table = [free.pop() for _ in range(needed)]
        tables.append(table)
        kv = torch.randn(2, context + new, case.num_kv_heads, case.head_dim, generator=gen)
        kv = kv.to(dtype)
        full_kv.append(kv)
        for pos in range(context + new):
            slot = (table[pos // bs], pos % bs)
            if pos < context:
                cache[:, slot[0], slot[1]] = kv[:, pos]
            else:
                slots.append(slot[0] * bs + slot[1])
        q_parts.append(torch.randn(new, case.num_heads, case.head_dim, generator=gen).to(dtype))
        k_parts.append(kv[0, context:])
        v_parts.append(kv[1, context:])
    pad = torch.randn(num_padding, 1, case.head_dim, generator=gen).to(dtype)
    q = torch.cat(q_parts + [pad.expand(-1, case.num_heads, -1)])
    k = torch.cat(k_parts + [pad.expand(-1, case.num_kv_heads, -1)])
    v = torch.cat(v_parts + [pad.expand(-1, case.num_kv_heads, -1)])
    query_lens = [n for _, n in case.seqs]
    seq_lens = [c + n for c, n in case.seqs]
    width = max(blocks_needed)
    meta = AttentionMetadata(
        num_seqs=len(case.seqs),
        num_tokens=q.shape[0],
        query_start_loc=torch.tensor(list(accumulate(query_lens, initial=0)), dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        slot_mapping=torch.tensor(slots + [-1] * num_padding, dtype=torch.int64),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_lens_cpu=query_lens,
        seq_lens_cpu=seq_lens,
    )
    return q, k, v, cache, meta, full_kv, tables


@pytest.mark.parametrize("name", list(CASES))
def test_matches_naive_attention(name):
    case = CASES[name]
    q, k, v, cache, meta, full_kv, _ = make_step(case, torch.float32, seed=len(name))
    scale = case.head_dim**-0.5
    out = get_attention_backend("torch").forward(
        q, k, v, cache, meta, scale, sliding_window=case.sliding_window, softcap=case.softcap
    )
    assert out.shape == q.shape
    start = 0
    for (_, new), kv in zip(case.seqs, full_kv):
        expected = naive_attention(
            q[start : start + new], kv[0], kv[1], scale, case.sliding_window, case.softcap
        )
        torch.testing.assert_close(
            out[start : start + new].double(), expected, rtol=1e-5, atol=1e-5
        )
        start += new


def test_writes_new_tokens_to_their_slots_and_skips_padding():
    case = CASES["mixed-prefix-gqa-3to1"]
    q, k, v, cache, meta, full_kv, tables = make_step(case, torch.float32, seed=3, num_padding=4)
    before = cache.clone()
    get_attention_backend("torch").forward(q, k, v, cache, meta, 0.125)
    written = torch.zeros(cache.shape[1:3], dtype=torch.bool)
    for (context, new), kv, table in zip(case.seqs, full_kv, tables):
        for pos in range(context, context + new):
            block, offset = table[pos // case.block_size], pos % case.block_size
            assert torch.equal(cache[:, block, offset], kv[:, pos])
            written[block, offset] = True
    assert torch.equal(cache[:, ~written], before[:, ~written]), "padding tokens were written"


def test_bfloat16_within_bfloat16_tolerance():
    case = CASES["mixed-prefix-gqa-3to1"]
    q, k, v, cache, meta, full_kv, _ = make_step(case, torch.bfloat16, seed=5)
    out = get_attention_backend("torch").forward(q, k, v, cache, meta, case.head_dim**-0.5)
    assert out.dtype == torch.bfloat16
    start = 0
    for (_, new), kv in zip(case.seqs, full_kv):
        expected = naive_attention(q[start : start + new], kv[0], kv[1], case.head_dim**-0.5, None)
        torch.testing.assert_close(
            out[start : start + new].double(), expected, rtol=2e-2, atol=2e-2
        )
        start += new


def test_unknown_backend_names_the_available_ones():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'.*torch"):
        get_attention_backend("flash")


def test_cache_may_be_a_strided_view_of_a_larger_allocation():
    """E.g. layer 1 of a ``[2, num_layers, blocks, ...]`` tensor: writes must land in it."""
    case = CASES["mixed-prefix-gqa-3to1"]
    q, k, v, cache, meta, _, _ = make_step(case, torch.float32, seed=9)
    all_layers = torch.zeros(2, 3, *cache.shape[1:])
    all_layers[:, 1] = cache
    view = all_layers[:, 1]
    assert not view.is_contiguous()
    backend = get_attention_backend("torch")
    expected = backend.forward(q, k, v, cache, meta, 0.125)
    torch.testing.assert_close(backend.forward(q, k, v, view, meta, 0.125), expected)
    assert torch.equal(all_layers[:, 1], cache)
