"""Gumbel-max sampling with counter-based noise: a draw from softmax(logits / temperature) per row.

The noise for token v of a row is a hash of (the row's 64-bit key, v), so a draw depends only
on the logits and the key: a seeded request keys its draws by its seed and the position being
sampled, and its tokens never depend on the rest of the batch. On CUDA one Triton kernel reads
the logits once (layers/triton/gumbel.py); elsewhere the same arithmetic runs in PyTorch.
"""

from __future__ import annotations

import numpy as np
import torch

from llmbatch.layers.dispatch import triton_ops_for

_MASK32 = 0xFFFFFFFF
_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15


def gumbel_argmax(
    logits: torch.Tensor, inv_temperature: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """int64 ``[rows]``: row i's ``argmax(logits[i] * inv_temperature[i] + gumbel(keys[i], v))``."""
    ops = triton_ops_for(logits)
    if ops is not None:
        return ops.gumbel_argmax(logits, inv_temperature, keys)
    return torch_gumbel_argmax(logits, inv_temperature, keys)


def torch_gumbel_argmax(
    logits: torch.Tensor, inv_temperature: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """The same draw in PyTorch (on any device), with the kernel's arithmetic."""
    return gumbel_scores(logits, inv_temperature, keys).argmax(dim=-1)


def gumbel_scores(
    logits: torch.Tensor, inv_temperature: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """float32 ``[rows, vocab]``: tempered logits plus each token's Gumbel noise, ``-log(E)``
    with ``E = -log(1 - u) ~ Exp(1)`` for a 32-bit uniform ``u`` of the hash."""
    vocab = torch.arange(logits.shape[1], dtype=torch.int64, device=logits.device)
    key_lo, key_hi = keys[:, None] & _MASK32, (keys[:, None] >> 32) & _MASK32
    bits = mix32(mix32((vocab[None, :] + key_lo) & _MASK32) ^ key_hi)
    uniform = (bits.float() + 0.5) * (1.0 / 4294967296.0)
    series = uniform * (1.0 + uniform * (0.5 + uniform * (1.0 / 3.0)))
    exponential = torch.where(uniform < 1.0 / 1024.0, series, -torch.log(1.0 - uniform))
    return logits.float() * inv_temperature.float()[:, None] - torch.log(exponential)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """The kernel's 32-bit hash on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    # (x * constant) mod 2**32 without overflowing int64: multiply by 16-bit halves
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def splitmix64(values: np.ndarray) -> np.ndarray:
    """A 64-bit mix of each uint64 value (splitmix64's finalizer): keys from seeds and positions."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(_SPLITMIX_GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
