"""Writes -inf into the logits of tokens a bitmask disallows: a write-only pass over masked rows."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 2048


@triton.jit
def _apply_bitmask_kernel(
    logits_ptr,
    rows_ptr,
    bitmask_ptr,
    stride_logits,
    stride_bitmask,
    vocab_size,
    mask_tokens,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row = tl.load(rows_ptr + i).to(tl.int64)  # rows x vocabulary can pass 2**31 elements
    in_mask = cols < mask_tokens
    words = tl.load(bitmask_ptr + i * stride_bitmask + cols // 32, mask=in_mask, other=0)
    allowed = ((words >> (cols % 32)) & 1) != 0
    tl.store(
        logits_ptr + row * stride_logits + cols,
        float("-inf"),
        mask=(cols < vocab_size) & ~(allowed & in_mask),
    )


def apply_token_bitmask_(logits: torch.Tensor, rows: torch.Tensor, bitmask: torch.Tensor) -> None:
    """See llmbatch.layers.bitmask.apply_token_bitmask_."""
    assert logits.stride(1) == 1 and bitmask.is_contiguous() and bitmask.dtype == torch.int32
    vocab = logits.shape[1]
    grid = (rows.numel(), triton.cdiv(vocab, BLOCK))
    _apply_bitmask_kernel[grid](
        logits,
        rows,
        bitmask,
        logits.stride(0),
        bitmask.stride(0),
        vocab,
        32 * bitmask.shape[1],
        BLOCK=BLOCK,
    )
