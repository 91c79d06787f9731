"""4-bit integer weights with group-wise scales and zero points (W4A16), in one layout.

Checkpoints pack eight 4-bit values into each int32 in one of three ways: AWQ along the output
features in its interleaved order, GPTQ along the input features, compressed-tensors along the
input features of each output row. Each is unpacked once at load into llmbatch's layout:

- ``qweight`` int32 ``[K / 8, N]``: input row ``8 * i + j`` of column ``n`` in bits ``4j..4j+3``
  of ``qweight[i, n]`` (unsigned, 0..15);
- ``scales`` and ``zeros`` ``[G, N]``: group ``g``'s scale and zero point (the zero point as a
  float, e.g. 8.0 for symmetric weights), ``w = (q - zero) * scale``;
- for act-order checkpoints (GPTQ ``desc_act``), the input features sorted by group, so that each
  group's rows are contiguous: ``perm`` (the input features in that order, which the activations
  are gathered by) and, where groups are no longer ``group_size`` rows apart (a row-parallel
  shard), each row's group, ``group_index``.

On CUDA the product runs in a Triton kernel that dequantises each tile of the weight on its way
to the tensor cores (layers/triton/w4a16.py); elsewhere the weight is dequantised whole.
"""

from __future__ import annotations

import torch

from llmbatch.layers.dispatch import triton_ops_for

PACK = 8  # 4-bit values per int32
# AutoAWQ's packing: nibble i of each int32 holds column AWQ_ORDER[i] of its group of eight
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def unpack_int4(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 ``packed`` -> uint8 values 0..15, eight times longer along ``dim``: value ``8 * i +
    j`` of that dimension comes from nibble ``j`` (bits ``4j..4j+3``) of element ``i``."""
    dim = dim % packed.dim()
    view = [1] * (packed.dim() + 1)
    view[dim + 1] = PACK  # the nibbles of each element follow it along ``dim``
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device).view(view)
    nibbles = (packed.unsqueeze(dim + 1) >> shifts) & 0xF
    shape = list(packed.shape)
    shape[dim] *= PACK
    return nibbles.to(torch.uint8).reshape(shape)


def pack_int4_rows(values: torch.Tensor) -> torch.Tensor:
    """uint8 values 0..15 ``[K, N]`` -> int32 ``[K / 8, N]`` (the inverse of ``unpack_int4`` along
    dimension 0)."""
    k, n = values.shape
    grouped = values.to(torch.int32).view(k // PACK, PACK, n)
    packed = torch.zeros((k // PACK, n), dtype=torch.int32, device=values.device)
    for j in range(PACK):
        packed |= grouped[:, j] << (4 * j)
    return packed


def awq_unpack(packed: torch.Tensor) -> torch.Tensor:
    """AWQ's int32 ``[R, N / 8]`` (packed along the output features in AWQ_ORDER) -> uint8
    ``[R, N]`` in column order."""
    values = unpack_int4(packed, dim=1)
    rows, cols = values.shape
    order = torch.tensor(AWQ_ORDER, device=packed.device)
    inverse = torch.argsort(order)
    return values.view(rows, cols // PACK, PACK)[:, :, inverse].reshape(rows, cols)


def sort_by_group(
    values: torch.Tensor, group_of_row: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Rows of ``values`` ``[K, N]`` sorted by their group ``group_of_row`` ``[K]`` (stable):
    (the sorted values, ``perm`` (None: already sorted), and each sorted row's group, None
    where it is ``k // group_size``)."""
    group_of_row = group_of_row.to(values.device, torch.int64)
    perm = None
    if not bool((group_of_row[1:] >= group_of_row[:-1]).all()):
        perm = torch.argsort(group_of_row, stable=True)
        values, group_of_row = values[perm], group_of_row[perm]
    k = values.shape[0]
    natural = torch.arange(k, device=values.device) // group_size
    if k % group_size == 0 and torch.equal(group_of_row, natural):
        return values, perm, None
    return values, perm, group_of_row.to(torch.int32)


def dequantize_int4(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    group_index: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """llmbatch's layout -> the weight ``[K, N]`` in ``dtype``, ``(q - zero) * scale`` computed in
    float32."""
    q = unpack_int4(qweight, dim=0).float()
    k, n = q.shape
    if group_index is not None:
        index = group_index.long()
        return ((q - zeros.float()[index]) * scales.float()[index]).to(dtype)
    grouped = q.view(k // group_size, group_size, n)
    weight = (grouped - zeros.float()[:, None]) * scales.float()[:, None]
    return weight.view(k, n).to(dtype)


def int4_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    perm: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x`` ``[..., K]`` times the int4 weight ``[K, N]`` -> ``[..., N]`` in ``x``'s dtype."""
    flat = x.reshape(-1, x.shape[-1])
    if perm is not None:
        flat = flat.index_select(1, perm)
    ops = triton_ops_for(flat)
    if ops is not None:
        out = ops.w4a16_matmul(flat, qweight, scales, zeros, group_size, group_index)
    else:
        out = flat @ dequantize_int4(qweight, scales, zeros, group_size, group_index, x.dtype)
    return out.view(*x.shape[:-1], qweight.shape[1])
