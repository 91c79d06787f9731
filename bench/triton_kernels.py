"""Times the Triton attention backend and fused ops against their torch counterparts on one GPU.

    PYTHONPATH=src python bench/triton_kernels.py [--sweep]

Each row runs the Triton kernel and plain PyTorch (the torch attention backend; unfused torch
math for the ops) on the same random inputs (bf16, Llama-3.1-8B or Qwen2.5-0.5B attention
shapes, block size 16) and reports median milliseconds, the speedup, and what the Triton kernel
reached: TFLOP/s for prefill (causal FLOPs only), GB/s of KV cache read for decode,
GB/s of activations moved for the fused ops. ``--sweep`` also times alternative tile shapes.
"""

from __future__ import annotations

import argparse
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
import triton.testing

from llmbatch.layers.attention import triton_kernels_decode, triton_kernels_prefill
from llmbatch.layers.attention.base import AttentionMetadata
from llmbatch.layers.attention.torch_backend import TorchAttentionBackend
from llmbatch.layers.attention.triton_backend import TritonAttentionBackend
from llmbatch.layers.moe import experts_reference, route
from llmbatch.layers.triton import act_and_mul, apply_rotary, fused_experts, gumbel_argmax, rms_norm

DTYPE = torch.bfloat16
# the KV cache's dtype (--kv-cache-dtype): bf16 unless an fp8 format is asked for
CACHE_DTYPE = {"auto": DTYPE, "fp8": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
cache_dtype = DTYPE
BLOCK_SIZE = 16
HEADS = {"llama-8b": (32, 8, 128), "qwen-0.5b": (14, 2, 64)}


@dataclass(slots=True)
class Scenario:
    name: str
    model: str
    query_lens: list[int]
    seq_lens: list[int]

    @property
    def decode_only(self) -> bool:
        return max(self.query_lens) == 1


SCENARIOS = [
    Scenario("decode 256 x 1k", "llama-8b", [1] * 256, [1024] * 256),
    Scenario("decode 32 x 4k", "llama-8b", [1] * 32, [4096] * 32),
    Scenario("decode 4 x 16k (split)", "llama-8b", [1] * 4, [16384] * 4),
    Scenario("decode 256 x 1k", "qwen-0.5b", [1] * 256, [1024] * 256),
    Scenario("prefill 4 x 2k", "llama-8b", [2048] * 4, [2048] * 4),
    Scenario("prefill 256 x 46 (16 cached)", "llama-8b", [30] * 256, [46] * 256),
    Scenario(
        "chunk 2 x 512 after 3.5k + 64 decodes",
        "llama-8b",
        [512] * 2 + [1] * 64,
        [4096] * 2 + [700] * 64,
    ),
    Scenario("prefill 4 x 2k", "qwen-0.5b", [2048] * 4, [2048] * 4),
    # sharegpt's mixed steps: a prompt or two among many decodes
    Scenario(
        "mixed 512 prompt + 256 decodes x 500", "llama-8b", [512] + [1] * 256, [512] + [500] * 256
    ),
    Scenario(
        "mixed 256 prompt + 32 decodes x 1k", "llama-8b", [256] + [1] * 32, [256] + [1000] * 32
    ),
    Scenario(
        "mixed 64 prompt + 448 decodes x 300", "llama-8b", [64] + [1] * 448, [64] + [300] * 448
    ),
]


def build_step(scenario: Scenario) -> tuple:
    """q, k, v, a KV cache with every sequence's blocks scattered, and the step's metadata."""
    num_heads, num_kv_heads, head_dim = HEADS[scenario.model]
    blocks_per_seq = [-(-s // BLOCK_SIZE) for s in scenario.seq_lens]
    num_blocks = sum(blocks_per_seq)
    kv_cache = torch.randn(2, num_blocks, BLOCK_SIZE, num_kv_heads, head_dim, device="cuda")
    kv_cache = kv_cache.to(cache_dtype)
    order = torch.randperm(num_blocks, device="cuda").to(torch.int32)
    block_tables = torch.zeros(len(blocks_per_seq), max(blocks_per_seq), dtype=torch.int32)
    block_tables = block_tables.cuda()
    slots, used = [], 0
    for seq, (query_len, seq_len) in enumerate(zip(scenario.query_lens, scenario.seq_lens)):
        blocks = order[used : used + blocks_per_seq[seq]]
        used += blocks_per_seq[seq]
        block_tables[seq, : len(blocks)] = blocks
        positions = torch.arange(seq_len - query_len, seq_len, device="cuda")
        slots.append(blocks[positions // BLOCK_SIZE].long() * BLOCK_SIZE + positions % BLOCK_SIZE)
    num_tokens = sum(scenario.query_lens)
    q = torch.randn(num_tokens, num_heads, head_dim, device="cuda", dtype=DTYPE)
    k = torch.randn(num_tokens, num_kv_heads, head_dim, device="cuda", dtype=DTYPE)
    v = torch.randn_like(k)
    query_start_loc = torch.tensor([0, *itertools.accumulate(scenario.query_lens)], device="cuda")
    meta = AttentionMetadata(
        num_seqs=len(scenario.seq_lens),
        num_tokens=num_tokens,
        query_start_loc=query_start_loc.to(torch.int32),
        seq_lens=torch.tensor(scenario.seq_lens, dtype=torch.int32, device="cuda"),
        block_tables=block_tables,
        slot_mapping=torch.cat(slots),
        max_query_len=max(scenario.query_lens),
        max_seq_len=max(scenario.seq_lens),
        query_lens_cpu=list(scenario.query_lens),
        seq_lens_cpu=list(scenario.seq_lens),
    )
    return q, k, v, kv_cache, meta


def attention_work(scenario: Scenario) -> tuple[float, str]:
    """The floor-defining amount: causal FLOPs for steps with prefills, KV bytes for decode."""
    num_heads, num_kv_heads, head_dim = HEADS[scenario.model]
    if scenario.decode_only:
        return sum(scenario.seq_lens) * num_kv_heads * head_dim * 2 * cache_dtype.itemsize, "GB/s"
    flops = sum(
        4 * num_heads * head_dim * (q * (s - q) + q * (q + 1) / 2)
        for q, s in zip(scenario.query_lens, scenario.seq_lens)
    )
    return flops, "TFLOP/s"


def median_ms(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def time_backend(backend: object, scenario: Scenario, step: tuple) -> float:
    q, k, v, kv_cache, meta = step
    scale = HEADS[scenario.model][2] ** -0.5
    return median_ms(lambda: backend.forward(q, k, v, kv_cache, meta, scale))


def rate(work: float, unit: str, ms: float) -> str:
    scale = 1e12 if unit == "TFLOP/s" else 1e9
    return f"{work / (ms * 1e-3) / scale:,.0f} {unit}"


def attention_rows() -> list[tuple[str, ...]]:
    rows = []
    triton_backend, torch_backend = TritonAttentionBackend(), TorchAttentionBackend()
    for scenario in SCENARIOS:
        step = build_step(scenario)
        triton_ms = time_backend(triton_backend, scenario, step)
        torch_ms = time_backend(torch_backend, scenario, step)
        work, unit = attention_work(scenario)
        rows.append(
            (
                f"{scenario.model} {scenario.name}",
                f"{triton_ms:.3f}",
                f"{torch_ms:.3f}",
                f"{torch_ms / triton_ms:.1f}x",
                rate(work, unit, triton_ms),
            )
        )
    return rows


def fused_op_rows(num_tokens: int = 8192) -> list[tuple[str, ...]]:
    rows = []
    hidden, intermediate = 4096, 14336
    x = torch.randn(num_tokens, hidden, device="cuda", dtype=DTYPE)
    residual = torch.randn_like(x)
    weight = torch.randn(hidden, device="cuda", dtype=DTYPE)
    gate_up = torch.randn(num_tokens, 2 * intermediate, device="cuda", dtype=DTYPE)
    num_heads, num_kv_heads, head_dim = HEADS["llama-8b"]
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, device="cuda")
    qkv = qkv.to(DTYPE)
    q = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim]
    k = k.view(num_tokens, num_kv_heads, head_dim)
    angles = torch.rand(8192, head_dim // 2, device="cuda") * 100
    cos, sin = angles.cos(), angles.sin()
    positions = torch.randint(0, 8192, (num_tokens,), device="cuda")

    def torch_rotary() -> None:
        cos_t, sin_t = cos[positions, None].to(DTYPE), sin[positions, None].to(DTYPE)
        for x in (q, k):
            first, second = x.chunk(2, dim=-1)
            x.copy_(torch.cat((first * cos_t - second * sin_t, second * cos_t + first * sin_t), -1))

    def torch_silu_and_mul() -> None:
        gate, up = gate_up.chunk(2, dim=-1)
        F.silu(gate) * up

    def torch_add_norm() -> None:
        summed = (x + residual).float()
        weight * (summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-5)).to(DTYPE)

    item = DTYPE.itemsize
    ops = [
        (
            "rms_norm + residual 8k x 4096",
            lambda: rms_norm(x, weight, 1e-5, residual),
            torch_add_norm,
            4 * x.numel() * item,
        ),
        (
            "silu_and_mul 8k x 14336",
            lambda: act_and_mul(gate_up),
            torch_silu_and_mul,
            1.5 * gate_up.numel() * item,
        ),
        (
            "rotary q+k 8k x (32+8) x 128",
            lambda: apply_rotary(q, k, cos, sin, positions),
            torch_rotary,
            2 * (q.numel() + k.numel()) * item,
        ),
    ]
    for name, triton_fn, torch_fn, bytes_moved in ops:
        triton_ms, torch_ms = median_ms(triton_fn), median_ms(torch_fn)
        rows.append(
            (
                name,
                f"{triton_ms:.3f}",
                f"{torch_ms:.3f}",
                f"{torch_ms / triton_ms:.1f}x",
                rate(bytes_moved, "GB/s", triton_ms),
            )
        )
    return rows


# (experts, top-k, hidden, intermediate) of an MoE layer
MOE_SHAPES = {"qwen3-30b-a3b": (128, 8, 2048, 768), "mixtral-8x7b": (8, 2, 4096, 14336)}


def moe_rows() -> list[tuple[str, ...]]:
    """One MoE layer's experts: the fused kernels (pairs sorted by expert, one grouped GEMM per
    projection) against the per-expert torch loop; the rate is the weights of the experts used
    read once (decode-sized batches) or the FLOPs done (larger ones)."""
    rows = []
    for shape, (num_experts, top_k, hidden, intermediate) in MOE_SHAPES.items():
        w13 = torch.randn(num_experts, 2 * intermediate, hidden, device="cuda", dtype=DTYPE) * 0.02
        w2 = torch.randn(num_experts, hidden, intermediate, device="cuda", dtype=DTYPE) * 0.02
        for num_tokens in (16, 256, 2048, 8192):
            x = torch.randn(num_tokens, hidden, device="cuda", dtype=DTYPE)
            logits = torch.randn(num_tokens, num_experts, device="cuda")
            weights, ids = route(logits, top_k, renormalize=True)
            inputs = (x, w13, w2, weights, ids)
            triton_ms = median_ms(functools.partial(fused_experts, *inputs))
            torch_ms = median_ms(functools.partial(experts_reference, *inputs))
            used = ids.unique().numel()
            weight_bytes = used * (w13[0].numel() + w2[0].numel()) * DTYPE.itemsize
            flops = 2 * num_tokens * top_k * 3 * hidden * intermediate
            rate_text = (
                rate(weight_bytes, "GB/s", triton_ms)
                if num_tokens * top_k <= 16 * num_experts
                else rate(flops, "TFLOP/s", triton_ms)
            )
            rows.append(
                (
                    f"{shape} experts, {num_tokens} tokens",
                    f"{triton_ms:.3f}",
                    f"{torch_ms:.3f}",
                    f"{torch_ms / triton_ms:.1f}x",
                    rate_text,
                )
            )
    return rows


def _torch_race(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    probs = torch.softmax(logits / temperature, dim=-1)
    noise = torch.empty_like(probs).exponential_().clamp_(min=1e-38)
    return probs.div_(noise).argmax(dim=-1)


def sampling_rows(vocab_size: int = 128_256) -> list[tuple[str, ...]]:
    """Temperature sampling of one token per row from float32 logits: the fused Gumbel-max
    kernel against the same draw in torch ops (scale, softmax, exponential race, argmax)."""
    rows = []
    for num_rows in (4, 64, 200, 512):
        logits = torch.randn(num_rows, vocab_size, device="cuda")
        inv_temperature = torch.full((num_rows,), 1 / 0.8, device="cuda")
        keys = torch.randint(0, 2**62, (num_rows,), device="cuda")

        triton_ms = median_ms(functools.partial(gumbel_argmax, logits, inv_temperature, keys))
        torch_ms = median_ms(functools.partial(_torch_race, logits, 0.8))
        rows.append(
            (
                f"sample {num_rows} x {vocab_size // 1000}k",
                f"{triton_ms:.3f}",
                f"{torch_ms:.3f}",
                f"{torch_ms / triton_ms:.1f}x",
                rate(logits.numel() * 4, "GB/s", triton_ms),
            )
        )
    return rows


# the engine's decode steps: the decode workload's bulk, sharegpt's middle, a tail (as captured)
ENGINE_DECODES = [
    (Scenario("decode 200 x 1.5k", "llama-8b", [1] * 200, [1536] * 200), [1, 2, 3]),
    # the decode workload's bulk with an fp8 cache (twice the sequences fit)
    (Scenario("decode 480 x 1.5k", "llama-8b", [1] * 480, [1536] * 480), [1]),
    (Scenario("decode 64 x 300", "llama-8b", [1] * 64, [300] * 64), [1, 2, 4]),
    (Scenario("decode 4 x 1k", "llama-8b", [1] * 4, [1024] * 4), [4, 8, 17]),
]


def sweep_rows(prefill: bool = True) -> list[tuple[str, ...]]:
    """Times other tile shapes of the prefill and decode kernels on their main scenarios."""
    rows = []
    default_prefill, default_decode = (
        triton_kernels_prefill._tile_shape,
        triton_kernels_decode._tile_shape,
    )
    prefill_tiles = [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (64, 128, 8, 2)]
    decode_tiles = [
        (64, 4, 2), (64, 4, 3), (64, 4, 4), (64, 8, 2), (128, 4, 2), (128, 8, 2), (128, 8, 3),
        (32, 4, 3), (32, 2, 3), (128, 4, 4), (256, 8, 2),
        (32, 2, 4), (64, 2, 3), (32, 1, 3), (16, 1, 4),
    ]  # fmt: skip
    try:
        backend = TritonAttentionBackend()
        for scenario in (SCENARIOS[4], SCENARIOS[7], SCENARIOS[5]) if prefill else ():
            step = build_step(scenario)
            work, unit = attention_work(scenario)
            for tile in prefill_tiles:
                triton_kernels_prefill._tile_shape = lambda *_, tile=tile: tile
                ms = time_backend(backend, scenario, step)
                rows.append(
                    (f"{scenario.model} {scenario.name} {tile}", f"{ms:.3f}", rate(work, unit, ms))
                )
        for scenario, splits in ENGINE_DECODES:
            step = build_step(scenario)
            work, unit = attention_work(scenario)
            for tile in decode_tiles:
                triton_kernels_decode._tile_shape = lambda *_, tile=tile: tile
                for num_splits in splits:
                    backend = TritonAttentionBackend(num_splits)
                    ms = time_backend(backend, scenario, step)
                    name = f"{scenario.model} {scenario.name} {tile} splits {num_splits}"
                    rows.append((name, f"{ms:.3f}", rate(work, unit, ms)))
    finally:
        triton_kernels_prefill._tile_shape = default_prefill
        triton_kernels_decode._tile_shape = default_decode
    return rows


# llama-8b's matmuls of one step: (in, out, per step) for qkv, o, gate_up, down and the LM head
LLAMA_8B_LINEARS = [(4096, 6144, 32), (4096, 4096, 32), (4096, 28672, 32), (14336, 4096, 32)]
LLAMA_8B_HEAD = (4096, 128256, 1)


def gemm_rows(batch_sizes: list[int]) -> list[tuple[str, ...]]:
    """A decode step's matmuls at each batch size: ms per step and the weight bytes' read rate."""
    rows = []
    weights = {
        shape: torch.randn(shape[1], shape[0], device="cuda", dtype=DTYPE) / 64
        for shape in [*LLAMA_8B_LINEARS, LLAMA_8B_HEAD]
    }
    for m in batch_sizes:
        total_ms, total_bytes = 0.0, 0
        for shape, weight in weights.items():
            x = torch.randn(m, shape[0], device="cuda", dtype=DTYPE)
            total_ms += shape[2] * median_ms(lambda x=x, weight=weight: F.linear(x, weight))
            total_bytes += shape[2] * weight.numel() * DTYPE.itemsize
        rows.append((f"M={m}", f"{total_ms:.3f}", rate(total_bytes, "GB/s", total_ms)))
    return rows


@triton.jit
def _stream_read_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    program = tl.program_id(0)
    acc = tl.zeros([BLOCK], tl.float32)
    base = program.to(tl.int64) * BLOCK * ITERS
    for i in range(ITERS):
        offsets = base + i * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offsets, mask=offsets < n, other=0.0).to(tl.float32)
    tl.store(out_ptr + program, tl.sum(acc))


def read_ceiling_rows(num_bytes: int = 1_258_291_200) -> list[tuple[str, ...]]:
    """What reading one layer's KV cache of a decode step (200 x 1.5k tokens) takes at best:
    a contiguous streaming read of as many bytes, against which the decode kernel is judged."""
    x = torch.randn(num_bytes // DTYPE.itemsize, device="cuda", dtype=DTYPE)
    rows = []
    for block, iters, warps in [(4096, 16, 4), (2048, 32, 4)]:
        grid = (triton.cdiv(x.numel(), block * iters),)
        out = torch.empty(grid, device="cuda")
        launch = functools.partial(
            _stream_read_kernel[grid], x, out, x.numel(), BLOCK=block, ITERS=iters, num_warps=warps
        )
        ms = median_ms(launch)
        rows.append(
            (f"triton stream read {block}x{iters}", f"{ms:.3f}", rate(num_bytes, "GB/s", ms))
        )
    ms = median_ms(lambda: x.sum())
    rows.append(("torch sum", f"{ms:.3f}", rate(num_bytes, "GB/s", ms)))
    return rows


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also time other tile shapes")
    parser.add_argument(
        "--gemm",
        type=int,
        nargs="*",
        help="also time a llama-8b decode step's matmuls at these batch sizes",
    )
    parser.add_argument("--skip-ops", action="store_true", help="skip the fused ops and backends")
    parser.add_argument(
        "--sampling", action="store_true", help="also time sampling (fused against torch ops)"
    )
    parser.add_argument(
        "--moe", action="store_true", help="also time the fused MoE experts against torch's loop"
    )
    parser.add_argument(
        "--kv-cache-dtype", choices=sorted(CACHE_DTYPE), default="auto", help="the KV cache's dtype"
    )
    parser.add_argument(
        "--skip-prefill-sweep", action="store_true", help="sweep the decode kernel's tiles only"
    )
    args = parser.parse_args()
    global cache_dtype
    cache_dtype = CACHE_DTYPE[args.kv_cache_dtype]
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}, triton {triton.__version__}")
    header = ("bf16", "triton ms", "torch ms", "speedup", "triton rate")
    if not args.skip_ops:
        print_table(header, fused_op_rows())
        print_table(header, attention_rows())
    if args.sampling:
        print_table(("float32 logits", *header[1:]), sampling_rows())
    if args.moe:
        print_table(("bf16 MoE layer", *header[1:]), moe_rows())
    if args.gemm:
        print_table(("matmuls of a step", "ms", "weights read"), gemm_rows(args.gemm))
    if args.sweep:
        print_table(("HBM read ceiling", "ms", "rate"), read_ceiling_rows())
        print_table(("tile sweep", "triton ms", "rate"), sweep_rows(not args.skip_prefill_sweep))


if __name__ == "__main__":
    main()
