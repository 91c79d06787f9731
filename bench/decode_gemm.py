"""A decode step's matmuls (Llama-3.1-8B shape, bf16) by cuBLAS and by a plain Triton GEMM, per
batch size: does any Triton tile stream the weights faster than cuBLAS at M of 64-512?

    PYTHONPATH=src python bench/decode_gemm.py [--m 200 256 512]

For each linear (qkv, o, gate_up, down: x32 layers; the LM head once) it times `F.linear` and
each Triton configuration, keeps the fastest Triton one per shape, and prints ms per step and the
weights' read rate for both.
"""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
import triton.testing

DTYPE = torch.bfloat16
# (in, out, times per step)
LINEARS = {
    "qkv": (4096, 6144, 32),
    "o": (4096, 4096, 32),
    "gate_up": (4096, 28672, 32),
    "down": (14336, 4096, 32),
    "lm_head": (4096, 128256, 1),
}
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
CONFIGS = [
    (64, 128, 64, 4, 4),
    (64, 128, 128, 4, 3),
    (64, 64, 128, 4, 4),
    (64, 256, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 64, 128, 4, 3),
    (128, 256, 64, 8, 3),
    (256, 64, 64, 8, 3),
    (256, 128, 64, 8, 3),
]


@triton.jit
def _linear_kernel(
    x_ptr, w_ptr, y_ptr, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # y = x @ w.T; the M tiles of one N tile are neighbours, so they share its weights in L2.
    program = tl.program_id(0)
    m_tiles = tl.cdiv(M, BLOCK_M)
    n_tile, m_tile = program // m_tiles, program % m_tiles
    rows = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    depth = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + rows[:, None] * K + (k + depth)[None, :], mask=rows[:, None] < M)
        w = tl.load(w_ptr + cols[:, None] * K + (k + depth)[None, :], mask=cols[:, None] < N)
        acc = tl.dot(x, tl.trans(w), acc)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], acc.to(tl.bfloat16), mask=mask)


def triton_linear(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, config: tuple) -> None:
    block_m, block_n, block_k, num_warps, num_stages = config
    (m, k), n = x.shape, w.shape[0]
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _linear_kernel[grid](
        x, w, y, m, n, k, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip


def median_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[64, 200, 256, 512])
    args = parser.parse_args()
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}, triton {triton.__version__}")
    weights = {
        name: torch.randn(n, k, device="cuda", dtype=DTYPE) / 64
        for name, (k, n, _) in LINEARS.items()
    }
    step_bytes = sum(w.numel() * 2 * LINEARS[name][2] for name, w in weights.items())
    rows = []
    for m in args.m:
        cublas_ms = triton_ms = 0.0
        best = {}
        for name, w in weights.items():
            times = LINEARS[name][2]
            x = torch.randn(m, w.shape[1], device="cuda", dtype=DTYPE)
            reference = F.linear(x, w)
            cublas_ms += times * median_ms(functools.partial(F.linear, x, w))
            y = torch.empty_like(reference)
            timed = []
            for config in CONFIGS:
                triton_linear(x, w, y, config)
                torch.testing.assert_close(y, reference, atol=2e-2, rtol=2e-2)
                timed.append((median_ms(functools.partial(triton_linear, x, w, y, config)), config))
            ms, best[name] = min(timed)
            triton_ms += times * ms
        rows.append((m, cublas_ms, triton_ms, best))
    print("\n| M | cuBLAS ms/step | read rate | best Triton ms/step | read rate | best tiles |")
    print("| --- | --- | --- | --- | --- | --- |")
    for m, cublas_ms, triton_ms, best in rows:
        tiles = ", ".join(f"{name} {config}" for name, config in best.items())
        print(
            f"| {m} | {cublas_ms:.2f} | {step_bytes / cublas_ms / 1e9:.2f} TB/s | {triton_ms:.2f} | "
            f"{step_bytes / triton_ms / 1e9:.2f} TB/s | {tiles} |"
        )


if __name__ == "__main__":
    main()
