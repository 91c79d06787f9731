"""What the driver tells tensor-parallel workers each step, and how a step's inputs travel.

Commands go over a pipe per worker (so an idle worker waits without a collective timing out,
and exits when the driver's end closes); a step's tensors follow in one broadcast over the
process group, already on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch
import torch.distributed as dist

from llmbatch.layers.attention.base import AttentionMetadata
from llmbatch.layers.tensor_parallel import TensorParallel


class Op(IntEnum):
    STOP = 0
    ALLOCATE_KV_CACHE = 1
    FORWARD = 2
    LOGITS = 3


@dataclass(slots=True, frozen=True)
class ForwardHeader:
    """The sizes and host-side fields of a step; the rest arrives as one packed int64 tensor."""

    num_tokens: int
    num_seqs: int
    table_width: int
    max_query_len: int
    max_seq_len: int
    query_lens: list[int]
    seq_lens: list[int]

    @classmethod
    def of(cls, meta: AttentionMetadata) -> ForwardHeader:
        return cls(
            meta.num_tokens,
            meta.num_seqs,
            meta.block_tables.shape[1],
            meta.max_query_len,
            meta.max_seq_len,
            meta.query_lens_cpu,
            meta.seq_lens_cpu,
        )


def send_forward_inputs(
    tp: TensorParallel, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
) -> None:
    packed = torch.cat(
        [
            input_ids,
            positions,
            meta.slot_mapping,
            meta.query_start_loc.long(),
            meta.seq_lens.long(),
            meta.block_tables.long().ravel(),
        ]
    )
    dist.broadcast(packed, src=0, group=tp.group)


def receive_forward_inputs(
    tp: TensorParallel, header: ForwardHeader, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    t, s, w = header.num_tokens, header.num_seqs, header.table_width
    sizes = [t, t, t, s + 1, s, s * w]
    packed = torch.empty(sum(sizes), dtype=torch.int64, device=device)
    dist.broadcast(packed, src=0, group=tp.group)
    ids, positions, slots, query_start_loc, seq_lens, tables = packed.split(sizes)
    meta = AttentionMetadata(
        num_seqs=s,
        num_tokens=t,
        query_start_loc=query_start_loc.to(torch.int32),
        seq_lens=seq_lens.to(torch.int32),
        block_tables=tables.view(s, w).to(torch.int32),
        slot_mapping=slots,
        max_query_len=header.max_query_len,
        max_seq_len=header.max_seq_len,
        query_lens_cpu=header.query_lens,
        seq_lens_cpu=header.seq_lens,
    )
    return ids, positions, meta
