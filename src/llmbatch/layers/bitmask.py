"""Token bitmasks applied to logits: disallowed tokens get -inf before sampling.

A mask row has one bit per token: bit ``t % 32`` of 32-bit word ``t // 32`` is set when token
``t`` is allowed (the layout structured-output matchers fill). On CUDA one Triton kernel writes
-inf where a bit is clear (layers/triton/bitmask.py); elsewhere numpy unpacks the bits.
"""

from __future__ import annotations

import numpy as np
import torch

from llmbatch.layers.dispatch import triton_ops_for


def apply_token_bitmask_(logits: torch.Tensor, rows: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Sets ``logits[rows[i], t] = -inf`` for every token t whose bit is clear in
    ``bitmask[i]`` (int32 ``[len(rows), ceil(vocab / 32)]`` on the logits' device); tokens past
    the mask's last word are disallowed too."""
    if rows.numel() == 0:
        return
    ops = triton_ops_for(logits)
    if ops is not None:
        ops.apply_token_bitmask_(logits, rows, bitmask)
        return
    allowed = allowed_tokens(bitmask.cpu(), logits.shape[1]).to(logits.device)
    logits[rows] = logits[rows].masked_fill(~allowed, -torch.inf)


def allowed_tokens(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bool ``[rows, vocab_size]`` of a CPU bitmask: True where a token is allowed."""
    masks = bitmask.contiguous().numpy()
    bits = np.unpackbits(masks.view(np.uint8), axis=1, count=vocab_size, bitorder="little")
    if bits.shape[1] < vocab_size:
        bits = np.pad(bits, ((0, 0), (0, vocab_size - bits.shape[1])))
    return torch.from_numpy(bits.astype(bool))
