"""The matmuls of quantized weights against bf16 cuBLAS, per shape and number of rows, on one GPU.

    PYTHONPATH=src python bench/quantized_gemm.py [--shape llama-8b llama-70b] [--m 1 16 64 256 1024 4096] [--sweep]

For each linear of the shape (qkv, o, gate_up, down) and each M it times ``F.linear`` in bf16,
FP8 W8A8 (activations quantised per token by the Triton kernel, then ``torch._scaled_mm``; and
``_scaled_mm`` alone) and the W4A16 Triton kernel (groups of 128), with CUDA graphs so launch
time does not count, and prints median microseconds with the weights' read rate (GB/s) and the
product's rate (TFLOP/s). ``--sweep`` also times other W4A16 tiles and prints the fastest per
shape: what ``_tile_shape`` in layers/triton/w4a16.py should pick.
"""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F
import triton.testing

from llmbatch.layers.quantization import fp8, int4
from llmbatch.layers.triton import w4a16_matmul

# (in, out) of each linear layer
SHAPES = {
    "llama-8b": {
        "qkv": (4096, 6144),
        "o": (4096, 4096),
        "gate_up": (4096, 28672),
        "down": (14336, 4096),
    },
    "llama-70b": {
        "qkv": (8192, 10240),
        "o": (8192, 8192),
        "gate_up": (8192, 57344),
        "down": (28672, 8192),
    },
}
GROUP = 128
# (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages) tried by --sweep
SWEEP = [
    (bm, bn, bk, split, warps, stages)
    for bm, bn, bk in [
        (16, 64, 128),
        (16, 128, 128),
        (32, 64, 128),
        (64, 64, 128),
        (64, 128, 64),
        (128, 128, 64),
        (128, 256, 64),
    ]
    for split, warps, stages in [(1, 4, 3), (2, 4, 4), (4, 4, 4), (1, 8, 3)]
]


def graphed_us(fn) -> float:
    """Median microseconds of ``fn`` replayed from a CUDA graph."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return 1000 * triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median")


def time_products(k: int, n: int, m: int, sweep: bool) -> dict[str, object]:
    """Microseconds of each product of ``[m, k]`` bf16 activations and an ``[n, k]`` weight."""
    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    q8, s8 = fp8.quantize_weight(weight)
    q4 = int4.pack_int4_rows(torch.randint(0, 16, (k, n), device="cuda", dtype=torch.uint8))
    scales = torch.full((k // GROUP, n), 0.01, device="cuda", dtype=torch.float16)
    zeros = torch.full((k // GROUP, n), 8.0, device="cuda", dtype=torch.float16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    xq, xs = fp8.quantize_per_token(x)
    times: dict[str, object] = {
        "bf16": graphed_us(lambda: F.linear(x, weight)),
        "fp8": graphed_us(lambda: fp8.fp8_linear(x, q8, s8)),
        "fp8_mm": graphed_us(
            lambda: torch._scaled_mm(
                xq, q8.t(), scale_a=xs, scale_b=s8.view(1, -1), out_dtype=torch.bfloat16
            )
        ),
        "w4a16": graphed_us(lambda: w4a16_matmul(x, q4, scales, zeros, GROUP)),
        "best": "-",
    }
    if sweep:
        timed = []
        for tile in SWEEP:
            try:
                run = functools.partial(w4a16_matmul, x, q4, scales, zeros, GROUP, tile=tile)
                timed.append((graphed_us(run), tile))
            except Exception:  # a tile that does not fit the card's shared memory
                continue
        fastest, tile = min(timed)
        times["best"] = f"{tile}: {fastest:.1f} us"
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", nargs="+", default=["llama-8b", "llama-70b"], choices=sorted(SHAPES)
    )
    parser.add_argument("--m", nargs="+", type=int, default=[1, 16, 64, 256, 1024, 4096])
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(
        "| shape | linear | M | bf16 us | fp8 us (quant + mm) | fp8 mm us | w4a16 us "
        "| bf16 GB/s | w4a16 GB/s | bf16 TFLOP/s | fp8 TFLOP/s | w4a16 TFLOP/s | best w4a16 tile |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for shape in args.shape:
        for name, (k, n) in SHAPES[shape].items():
            for m in args.m:
                t = time_products(k, n, m, args.sweep)
                tflops = 2 * m * n * k / 1e6  # TFLOP in a microsecond's units
                print(
                    f"| {shape} | {name} | {m} | {t['bf16']:.1f} | {t['fp8']:.1f} | "
                    f"{t['fp8_mm']:.1f} | {t['w4a16']:.1f} | {2 * n * k / t['bf16'] / 1e3:.0f} | "
                    f"{n * k / 2 / t['w4a16'] / 1e3:.0f} | {tflops / t['bf16']:.0f} | "
                    f"{tflops / t['fp8']:.0f} | {tflops / t['w4a16']:.0f} | {t['best']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
