"""The Triton attention backend: paged KV cache writes, varlen prefill and split-K decode on CUDA."""

from __future__ import annotations

import torch

from llmbatch.layers.attention.base import AttentionMetadata
from llmbatch.layers.attention.triton_kernels_cache import write_kv_cache
from llmbatch.layers.attention.triton_kernels_decode import decode_attention
from llmbatch.layers.attention.triton_kernels_prefill import prefill_attention

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_CACHE_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


class TritonAttentionBackend:
    """AttentionBackend running Triton kernels; no host syncs, so decode steps graph-capture.

    ``decode_splits`` fixes the number of key splits per sequence in decode steps; by default it is
    chosen per step from the batch shape. Fix it when a captured CUDA graph will be replayed on
    contexts longer than the one it was captured with.
    """

    name = "triton"

    def __init__(self, decode_splits: int | None = None) -> None:
        if decode_splits is not None and decode_splits < 1:
            raise ValueError(f"decode_splits must be >= 1 or None, got {decode_splits}")
        self.decode_splits = decode_splits

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
        _check_inputs(q, k, v, kv_cache, meta, sliding_window, softcap)
        write_kv_cache(k, v, kv_cache, meta.slot_mapping)
        if meta.is_decode_only:
            return decode_attention(
                q, kv_cache, meta, scale, sliding_window, self.decode_splits, softcap
            )
        return prefill_attention(q, kv_cache, meta, scale, sliding_window, softcap)


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    sliding_window: int | None,
    softcap: float | None,
) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape:
        raise ValueError(
            "q must be [num_tokens, num_heads, head_dim] and k, v [num_tokens, num_kv_heads, "
            f"head_dim]; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if k.shape[0] != num_tokens or k.shape[2] != head_dim:
        raise ValueError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)}")
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    expected_cache = (2, num_kv_heads, head_dim)
    if kv_cache.dim() != 5 or (kv_cache.shape[0], *kv_cache.shape[3:]) != expected_cache:
        raise ValueError(
            "kv_cache must be [2, num_blocks, block_size, num_kv_heads, head_dim] = "
            f"[2, *, *, {num_kv_heads}, {head_dim}]; got {tuple(kv_cache.shape)}"
        )
    if q.dtype not in SUPPORTED_DTYPES or not q.dtype == k.dtype == v.dtype:
        raise ValueError(
            "q, k and v must share one dtype among float16, bfloat16, float32; got "
            f"{q.dtype}, {k.dtype}, {v.dtype}"
        )
    if kv_cache.dtype != q.dtype and kv_cache.dtype not in FP8_CACHE_DTYPES:
        raise ValueError(
            f"kv_cache must be in q's dtype ({q.dtype}) or an fp8 dtype "
            f"(torch.float8_e4m3fn, torch.float8_e5m2); got {kv_cache.dtype}"
        )
    for name, tensor in (("q", q), ("k", k), ("v", v), ("kv_cache", kv_cache)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last (head_dim) dimension")
    if meta.slot_mapping.shape[0] != num_tokens:
        raise ValueError(
            f"slot_mapping has {meta.slot_mapping.shape[0]} entries for {num_tokens} tokens"
        )
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1 or None, got {sliding_window}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be > 0 or None, got {softcap}")
