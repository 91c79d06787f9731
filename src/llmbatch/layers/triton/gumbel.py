"""Gumbel-max sampling in one pass over the logits: temperature, noise and argmax fused."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
# Enough programs to keep every SM of a large GPU streaming when there are few rows.
TARGET_PROGRAMS = 512


@triton.jit
def _mix32(x):
    # A 32-bit integer hash with full avalanche (the "lowbias32" constants); keep in step with
    # layers/gumbel.py: mix32.
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    x ^= x >> 16
    return x


@triton.jit
def _gumbel_argmax_kernel(
    best_value_ptr,
    best_index_ptr,
    logits_ptr,
    inv_temperature_ptr,
    keys_ptr,
    stride_logits,
    vocab_size,
    chunk,
    num_splits,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # rows x vocabulary can pass 2**31 elements
    split = tl.program_id(1)
    inv_temperature = tl.load(inv_temperature_ptr + row)
    key = tl.load(keys_ptr + row)
    key_lo = (key & 0xFFFFFFFF).to(tl.uint32)
    key_hi = ((key >> 32) & 0xFFFFFFFF).to(tl.uint32)
    start = split * chunk
    end = tl.minimum(start + chunk, vocab_size)
    best_value = tl.full([BLOCK], float("-inf"), tl.float32)
    best_index = tl.zeros([BLOCK], tl.int32)
    for offset in range(start, end, BLOCK):
        cols = offset + tl.arange(0, BLOCK)
        mask = cols < end
        logits = tl.load(logits_ptr + row * stride_logits + cols, mask=mask, other=0.0)
        bits = _mix32(_mix32(cols.to(tl.uint32) + key_lo) ^ key_hi)
        uniform = (bits.to(tl.float32) + 0.5) * (1.0 / 4294967296.0)
        # Exp(1) noise -log(1 - u), by its series where u is small: the likeliest winners
        # draw the smallest noise, and a log near 1 would lose their precision
        series = uniform * (1.0 + uniform * (0.5 + uniform * (1.0 / 3.0)))
        exponential = tl.where(uniform < 1.0 / 1024.0, series, -tl.log(1.0 - uniform))
        score = logits.to(tl.float32) * inv_temperature - tl.log(exponential)
        score = tl.where(mask, score, float("-inf"))
        better = score > best_value
        best_value = tl.where(better, score, best_value)
        best_index = tl.where(better, cols, best_index)
    top = tl.max(best_value, axis=0)
    # the first index among equal maxima, as argmax takes
    index = tl.min(tl.where(best_value == top, best_index, vocab_size), axis=0)
    tl.store(best_value_ptr + row * num_splits + split, top)
    tl.store(best_index_ptr + row * num_splits + split, index)


def gumbel_argmax(
    logits: torch.Tensor, inv_temperature: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Row i's ``argmax(logits[i] * inv_temperature[i] + g)``, where g is Gumbel noise drawn
    from the counter-based hash of (``keys[i]``, token id): a sample of
    ``softmax(logits[i] * inv_temperature[i])``. int64 ``[rows]``."""
    rows, vocab_size = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("logits must be contiguous along the vocabulary")
    if inv_temperature.shape != (rows,) or keys.shape != (rows,):
        raise ValueError(
            f"inv_temperature and keys must have one entry per row ({rows}); got "
            f"{tuple(inv_temperature.shape)} and {tuple(keys.shape)}"
        )
    if keys.dtype != torch.int64:
        raise ValueError(f"keys must be int64, got {keys.dtype}")
    num_blocks = triton.cdiv(vocab_size, BLOCK)
    splits = max(1, min(num_blocks, triton.cdiv(TARGET_PROGRAMS, max(rows, 1))))
    chunk = triton.cdiv(num_blocks, splits) * BLOCK
    splits = triton.cdiv(vocab_size, chunk)
    best_value = torch.empty((rows, splits), dtype=torch.float32, device=logits.device)
    best_index = torch.empty((rows, splits), dtype=torch.int32, device=logits.device)
    if rows:
        _gumbel_argmax_kernel[(rows, splits)](
            best_value,
            best_index,
            logits,
            inv_temperature.float(),
            keys,
            logits.stride(0),
            vocab_size,
            chunk,
            splits,
            BLOCK=BLOCK,
            num_warps=4,
        )
    if splits == 1:
        return best_index[:, 0].long()
    return best_index.gather(1, best_value.argmax(dim=1, keepdim=True)).squeeze(1).long()
