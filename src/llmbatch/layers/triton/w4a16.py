"""W4A16: activations times 4-bit weights, dequantised tile by tile inside the GEMM.

Each program loads a ``BLOCK_K x BLOCK_N`` tile of packed weights (one int32 holds eight
consecutive input rows of a column; see layers/quantization/int4.py), unpacks it, applies its
groups' zero points and scales in float32, rounds it to the activations' dtype and feeds the
tensor cores. Decode steps (a few rows) are bound by reading the weights once, a quarter of the
bytes of bfloat16 ones: their K dimension is split over several programs (added with atomics)
so that enough of them stream the weights. Prefill steps reuse each weight tile from L2 for
neighbouring row tiles.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _w4a16_kernel(
    x_ptr,
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    group_index_ptr,
    out_ptr,
    m_size,
    n_size,
    k_size,
    stride_x_row,
    stride_q_row,
    stride_s_row,
    stride_out_row,
    GROUP_SIZE: tl.constexpr,
    HAS_GROUP_INDEX: tl.constexpr,
    TILE_IN_ONE_GROUP: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # the row tiles of one column tile are neighbours, so they share its weights in L2
    program = tl.program_id(0)
    m_tiles = tl.cdiv(m_size, BLOCK_M)
    n_tile, m_tile = program // m_tiles, program % m_tiles
    rows = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    row_valid, col_valid = rows < m_size, cols < n_size
    k_span = tl.cdiv(k_size, SPLIT_K * BLOCK_K) * BLOCK_K
    k_first = tl.program_id(1) * k_span
    k_last = tl.minimum(k_first + k_span, k_size)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k_start in range(k_first, k_last, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_valid = ks < k_last
        x = tl.load(
            x_ptr + rows[:, None].to(tl.int64) * stride_x_row + ks[None, :],
            mask=row_valid[:, None] & k_valid[None, :],
            other=0.0,
        )
        packed = tl.load(
            qweight_ptr + (ks // 8)[:, None].to(tl.int64) * stride_q_row + cols[None, :],
            mask=k_valid[:, None] & col_valid[None, :],
            other=0,
        )
        q = ((packed >> ((ks % 8) * 4)[:, None]) & 0xF).to(tl.float32)
        if TILE_IN_ONE_GROUP:  # one scale and zero point per column for the whole tile
            group = k_start // GROUP_SIZE
            at = scales_ptr + group * stride_s_row + cols[None, :]
            scale = tl.load(at, mask=col_valid[None, :], other=0.0).to(tl.float32)
            zero = tl.load(
                zeros_ptr + group * stride_s_row + cols[None, :], mask=col_valid[None, :]
            ).to(tl.float32)
        else:
            if HAS_GROUP_INDEX:
                groups = tl.load(group_index_ptr + ks, mask=k_valid, other=0)
            else:
                groups = ks // GROUP_SIZE
            at = groups[:, None].to(tl.int64) * stride_s_row + cols[None, :]
            mask = k_valid[:, None] & col_valid[None, :]
            scale = tl.load(scales_ptr + at, mask=mask, other=0.0).to(tl.float32)
            zero = tl.load(zeros_ptr + at, mask=mask, other=0.0).to(tl.float32)
        w = ((q - zero) * scale).to(x.dtype)
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
    at = out_ptr + rows[:, None].to(tl.int64) * stride_out_row + cols[None, :]
    mask = row_valid[:, None] & col_valid[None, :]
    if SPLIT_K == 1:
        tl.store(at, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(at, acc, mask=mask)


# shared memory per block on an H100 (the most any CUDA device of compute capability 9.0 gives)
_DEFAULT_SHARED_BYTES = 232_448


def _shared_bytes(block_m: int, block_n: int, block_k: int, stages: int, element: int) -> int:
    """An upper bound of the kernel's shared memory: each pipeline stage holds an input tile and
    a packed-weight tile (int32 per k row), plus the dequantized tile and the output tile."""
    staged = stages * (block_m * block_k * element + block_k * block_n * 4)
    return staged + block_k * block_n * element + block_m * block_n * 4


# the host works this out once per shape, not at every product
@functools.cache
def _tile_shape(m: int, n: int, k: int, device: torch.device, element: int) -> tuple[int, ...]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages) for an ``[m, k] x [k, n]``
    product of inputs of ``element`` bytes; fewer stages where float32 tiles would not fit
    the device's shared memory."""
    if device.type != "cuda":
        # the interpreter: small tiles keep it quick and still cross tile boundaries in tests
        return 16, 32, 32, 2 if k >= 128 else 1, 1, 1
    properties = torch.cuda.get_device_properties(device)
    programs = 2 * properties.multi_processor_count
    limit = getattr(properties, "shared_memory_per_block_optin", 0) or _DEFAULT_SHARED_BYTES
    if m <= 16:
        block_m, block_n, block_k, warps, stages = 16, 64, 128, 4, 4
    elif m <= 64:
        block_m, block_n, block_k, warps, stages = 64, 64, 128, 4, 4
    else:
        block_m, block_n, block_k, warps, stages = 128, 128, 64, 8, 3
    while stages > 1 and _shared_bytes(block_m, block_n, block_k, stages, element) > limit:
        stages -= 1
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    split = 1
    # split K while the tiles alone leave the card idle and each split keeps 4+ K blocks
    while tiles * split < programs and k // (block_k * split * 2) >= 4:
        split *= 2
    return block_m, block_n, block_k, split, warps, stages


def w4a16_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    group_index: torch.Tensor | None = None,
    tile: tuple[int, int, int, int, int, int] | None = None,
) -> torch.Tensor:
    """``x`` ``[M, K]`` times the 4-bit weight ``[K, N]`` (``qweight`` int32 ``[K / 8, N]``,
    ``scales`` and ``zeros`` ``[G, N]``; row k in group ``k // group_size``, or
    ``group_index[k]``) -> ``[M, N]`` in ``x``'s dtype. ``tile``: (BLOCK_M, BLOCK_N, BLOCK_K,
    SPLIT_K, num_warps, num_stages), chosen by shape when None (bench/quantized_gemm.py tries
    others)."""
    m, k = x.shape
    n = qweight.shape[1]
    if qweight.shape[0] * 8 != k or scales.shape != zeros.shape or scales.shape[1] != n:
        raise ValueError(
            f"x {tuple(x.shape)} does not fit qweight {tuple(qweight.shape)} (must be "
            f"[{k // 8}, N]) with scales {tuple(scales.shape)} and zeros {tuple(zeros.shape)}"
        )
    x = x.contiguous()
    block_m, block_n, block_k, split, warps, stages = tile or _tile_shape(
        m, n, k, x.device, x.element_size()
    )
    if split == 1:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    else:
        out = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n), split)
    _w4a16_kernel[grid](
        x,
        qweight,
        scales,
        zeros,
        group_index if group_index is not None else qweight,
        out,
        m,
        n,
        k,
        x.stride(0),
        qweight.stride(0),
        scales.stride(0),
        out.stride(0),
        GROUP_SIZE=group_size,
        HAS_GROUP_INDEX=group_index is not None,
        TILE_IN_ONE_GROUP=group_index is None and group_size % block_k == 0,
        SPLIT_K=split,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=warps,
        num_stages=stages,
    )
    return out if out.dtype == x.dtype else out.to(x.dtype)
