"""Paged attention in plain PyTorch: the CPU production path and the reference for GPU kernels."""

from __future__ import annotations

from itertools import accumulate

import torch
import torch.nn.functional as F

from llmbatch.layers.attention.base import AttentionMetadata


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Stores each token's K/V at its slot; tokens whose slot is negative (padding) are skipped.

    Indexing by (block, offset) writes in place whatever the cache's strides.
    """
    block_size = kv_cache.shape[2]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    blocks, offsets = slots // block_size, slots % block_size
    kv_cache[0, blocks, offsets] = to_cache_dtype(k[keep], kv_cache.dtype)
    kv_cache[1, blocks, offsets] = to_cache_dtype(v[keep], kv_cache.dtype)


def to_cache_dtype(x: torch.Tensor, cache_dtype: torch.dtype) -> torch.Tensor:
    """``x`` as the cache stores it: fp8 rounds to nearest and saturates (as the GPU's conversion
    does) rather than overflowing to inf or NaN."""
    if x.dtype == cache_dtype:
        return x
    if cache_dtype.is_floating_point and cache_dtype.itemsize == 1:
        largest = torch.finfo(cache_dtype).max
        x = x.clamp(-largest, largest)
    return x.to(cache_dtype)


def gather_context(
    cache: torch.Tensor, block_tables: torch.Tensor, num_tokens: int, dtype: torch.dtype
) -> torch.Tensor:
    """The first ``num_tokens`` cached rows of each sequence, ``[num_seqs, num_tokens, kv_heads,
    dim]``, in ``dtype``.

    ``cache`` is one half of a layer cache (keys or values), ``[num_blocks, block_size, kv_heads, dim]``.
    """
    block_size = cache.shape[1]
    num_blocks = -(-num_tokens // block_size)
    blocks = block_tables[:, :num_blocks].reshape(-1)
    # index_select on the block dimension is several times faster than advanced indexing.
    rows = cache.index_select(0, blocks).view(block_tables.shape[0], -1, *cache.shape[2:])
    return rows[:, :num_tokens].to(dtype)


def scaled_dot_product(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    softcap: float | None,
    is_causal: bool = False,
) -> torch.Tensor:
    """q ``[B, H, Tq, D]``, keys/values ``[B, KVH, Tk, D]`` (H a multiple of KVH), ``mask`` True
    where a key is visible -> ``[B, H, Tq, D]``.

    With ``softcap``, scores become ``softcap * tanh(scores / softcap)`` before masking, in the
    order transformers' eager attention computes them (sdpa cannot cap scores).
    """
    if softcap is None:
        return F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=True
        )
    group = q.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(group, dim=1)
    values = values.repeat_interleave(group, dim=1)
    scores = torch.matmul(q, keys.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    if is_causal:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, values)


def _attend(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    softcap: float | None,
    is_causal: bool = False,
) -> torch.Tensor:
    """q ``[B, Tq, H, D]``, keys/values ``[B, Tk, KVH, D]`` -> ``[B, Tq, H, D]``."""
    out = scaled_dot_product(
        q.transpose(1, 2),
        keys.transpose(1, 2),
        values.transpose(1, 2),
        mask,
        scale,
        softcap,
        is_causal,
    )
    return out.transpose(1, 2)


def decode_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seq_len: int,
    scale: float,
    sliding_window: int | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """One query token per sequence (its last), all sequences in one masked computation.

    q ``[num_seqs, H, D]``; block_tables/seq_lens select the rows of those sequences.
    """
    keys = gather_context(kv_cache[0], block_tables, max_seq_len, q.dtype)
    values = gather_context(kv_cache[1], block_tables, max_seq_len, q.dtype)
    key_positions = torch.arange(max_seq_len, device=q.device)
    seq_lens = seq_lens[:, None]
    visible = key_positions < seq_lens
    if sliding_window is not None:
        visible &= key_positions >= seq_lens - sliding_window
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = keys.shape[2]
    # The query heads sharing a KV head become that head's query rows: one product per KV head.
    grouped_q = q.reshape(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = scaled_dot_product(
        grouped_q,
        keys.transpose(1, 2),
        values.transpose(1, 2),
        visible[:, None, None, :],
        scale,
        softcap,
    )
    return out.reshape(num_seqs, num_heads, head_dim)


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_len: int,
    scale: float,
    sliding_window: int | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """The last ``len(q)`` tokens of one sequence of ``seq_len``, causal over the whole context.

    q ``[Tq, H, D]``; k/v are the same tokens' fresh keys and values ``[Tq, KVH, D]``.
    """
    query_len = q.shape[0]
    context_len = seq_len - query_len
    if context_len == 0:
        # what the cache now holds for these tokens (rounded, when it stores fp8)
        keys = to_cache_dtype(k[None], kv_cache.dtype).to(q.dtype)
        values = to_cache_dtype(v[None], kv_cache.dtype).to(q.dtype)
    else:
        keys = gather_context(kv_cache[0], block_table[None], seq_len, q.dtype)
        values = gather_context(kv_cache[1], block_table[None], seq_len, q.dtype)
    if context_len == 0 and (sliding_window is None or sliding_window >= seq_len):
        return _attend(q[None], keys, values, None, scale, softcap, is_causal=True)[0]
    query_positions = torch.arange(context_len, seq_len, device=q.device)[:, None]
    key_positions = torch.arange(seq_len, device=q.device)
    visible = key_positions <= query_positions
    if sliding_window is not None:
        visible &= key_positions > query_positions - sliding_window
    return _attend(q[None], keys, values, visible, scale, softcap)[0]


class TorchAttentionBackend:
    """Decode rows of a step go through one batched computation; prefill chunks one by one."""

    name = "torch"

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        write_kv_cache(k, v, kv_cache, meta.slot_mapping)
        if meta.is_decode_only:
            out = torch.zeros_like(q)
            n = meta.num_seqs
            out[:n] = decode_attention(
                q[:n],
                kv_cache,
                meta.block_tables[:n],
                meta.seq_lens[:n],
                meta.max_seq_len,
                scale,
                sliding_window,
                softcap,
            )
            return out
        return self._mixed(q, k, v, kv_cache, meta, scale, sliding_window, softcap)

    def _mixed(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
        softcap: float | None,
    ) -> torch.Tensor:
        out = torch.zeros_like(q)
        starts = list(accumulate(meta.query_lens_cpu, initial=0))
        decodes = [i for i, n in enumerate(meta.query_lens_cpu) if n == 1]
        if decodes:
            rows = torch.tensor([starts[i] for i in decodes], device=q.device)
            seqs = torch.tensor(decodes, device=q.device)
            max_seq_len = max(meta.seq_lens_cpu[i] for i in decodes)
            out[rows] = decode_attention(
                q[rows],
                kv_cache,
                meta.block_tables[seqs],
                meta.seq_lens[seqs],
                max_seq_len,
                scale,
                sliding_window,
                softcap,
            )
        for i, query_len in enumerate(meta.query_lens_cpu):
            if query_len <= 1:
                continue
            span = slice(starts[i], starts[i + 1])
            out[span] = prefill_attention(
                q[span],
                k[span],
                v[span],
                kv_cache,
                meta.block_tables[i],
                meta.seq_lens_cpu[i],
                scale,
                sliding_window,
                softcap,
            )
        return out
