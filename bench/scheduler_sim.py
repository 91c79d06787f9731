"""The engine's scheduler and KV block manager over a workload, without a model: steps, preemptions,
recomputed prompt tokens, and a modelled GPU time, for trying scheduling policies on a CPU.

    PYTHONPATH=src python bench/scheduler_sim.py --workload decode --kv-tokens 430000 --max-num-seqs 512

Each step costs, on the modelled card: reading the weights once, the prefill and decode tokens'
FLOPs, and reading the KV cache of every scheduled token's context. The defaults describe the
llama-8b shape in bf16 on one H100 (16 GB of weights, 16 GFLOP a token, 128 KiB of KV a token,
~430k tokens of KV cache at gpu_memory_utilization 0.9); with them the model predicts, at 512
sequences, `short` at 14.7k output tok/s (15.2k measured) and `decode` at 6.6k with 582 preemptions
(7.2k and 607 measured): good for comparing policies, about 5-10% low in absolute terms.
Outputs are the workload's fixed lengths (EOS ignored); prompts use no prefix cache hits beyond
what the workload's token ids share. ``--cost floor`` prices each step at the card's floor
instead (weights or FLOPs, whichever is longer, plus the KV reads): what no kernel can beat
under the scheduler's first-come-first-served order.

``--shape``, ``--weights`` and ``--kv-cache-dtype`` price other models on the same card: the
Llama-3.1-70B shape, FP8 weights (one byte a parameter, products on FP8 tensor cores at twice
the bf16 rate) or 4-bit weights (half a byte, plus a float16 scale and zero point per group of
128; products in bf16), an FP8 KV cache (half the bytes a token). The embeddings and LM head
stay in bf16. Unless ``--kv-tokens`` is given, the KV cache holds what 90% of an 80 GB card
leaves after the weights and 4.9 GB of activations and graphs (the llama-8b bf16 runs' 430k).

    PYTHONPATH=src python bench/scheduler_sim.py --workload short --weights fp8 --kv-cache-dtype fp8 --cost floor
    PYTHONPATH=src python bench/scheduler_sim.py --shape llama-70b --weights int4 --workload short --requests 256 --cost floor
"""

from __future__ import annotations

import argparse

from step_profile import Card
from workloads import build

from llmbatch.engine.block_manager import BlockManager
from llmbatch.engine.config import SchedulerConfig
from llmbatch.engine.request import Request
from llmbatch.engine.sampling_params import SamplingParams
from llmbatch.engine.scheduler import Scheduler

# An H100 as this model sees it (fitted to measured runs: see the docstring)
H100 = Card(bytes_per_s=3.0e12, flops_per_s=6.5e14, weight_bytes=16e9, flops_per_token=16e9)
# The same card at its limits: the measured streaming-read ceiling, ~800 TFLOP/s in matmuls
FLOOR = Card(bytes_per_s=3.0e12, flops_per_s=8.0e14, weight_bytes=16.06e9, flops_per_token=15e9)

SHAPES = {
    "llama-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336),
    "llama-70b": dict(hidden=8192, layers=80, heads=64, kv_heads=8, intermediate=28672),
}
HEAD_DIM, VOCAB = 128, 128_256
# bytes of a linear layer's weights per parameter, with their scales
BYTES_PER_PARAMETER = {"bf16": 2.0, "fp8": 1.0 + 4 / 4096, "int4": 0.5 + 4 / 128}
# matmul rate at the card's limit: FP8 tensor cores run twice bf16's
FLOPS_PER_S = {"bf16": 8.0e14, "fp8": 1.6e15, "int4": 8.0e14}
# KV cache budget: 90% of the card, less the weights and the activations and graphs
CARD_BYTES, ACTIVATION_BYTES = 0.9 * 80 * 2**30, 4.9e9


def shaped_cards(shape: str, weights: str, kv_cache_dtype: str) -> tuple[Card, Card, int]:
    """(the fitted serial card, the floor card, the KV tokens that fit) for a Llama shape."""
    d = SHAPES[shape]
    q, kv = d["heads"] * HEAD_DIM, d["kv_heads"] * HEAD_DIM
    hidden, layers = d["hidden"], d["layers"]
    linear = layers * (hidden * (q + 2 * kv) + q * hidden + 3 * hidden * d["intermediate"])
    embeddings = 2 * VOCAB * hidden  # embedding and LM head, untied, bf16
    weight_bytes = linear * BYTES_PER_PARAMETER[weights] + 2 * embeddings
    flops = 2 * (linear + VOCAB * hidden)
    kv_bytes = 2 * layers * kv * (1 if kv_cache_dtype == "fp8" else 2)
    kv_tokens = int((CARD_BYTES - weight_bytes - ACTIVATION_BYTES) // kv_bytes)
    if kv_tokens <= 0:
        raise SystemExit(
            f"{shape} in {weights} ({weight_bytes / 1e9:.0f} GB) does not fit the card"
        )
    # the fitted model keeps its measured efficiency relative to the floor
    serial = Card(3.0e12, FLOPS_PER_S[weights] * 6.5 / 8, weight_bytes, flops * 16 / 15, kv_bytes)
    floor = Card(3.0e12, FLOPS_PER_S[weights], weight_bytes, flops, kv_bytes)
    return serial, floor, kv_tokens


def simulate(
    workload,
    kv_tokens: int,
    max_num_seqs: int,
    budget: int,
    block_size: int,
    reserve: bool,
    cost: str = "serial",
    cards: tuple[Card, Card] = (H100, FLOOR),
) -> dict:
    blocks = BlockManager(kv_tokens // block_size, block_size, enable_prefix_caching=True)
    config = SchedulerConfig(budget, max_num_seqs, reserve_output_kv=reserve)
    scheduler = Scheduler(config, blocks)
    for i, (prompt, output_len) in enumerate(zip(workload.prompts, workload.output_lens)):
        params = SamplingParams(max_tokens=output_len, ignore_eos=True, detokenize=False)
        scheduler.add(Request(str(i), None, list(prompt), params, frozenset(), 1 << 30))
    steps = preemptions = computed = 0
    seconds = 0.0
    while scheduler.has_unfinished():
        batch = scheduler.schedule()
        steps += 1
        preemptions += batch.num_preempted
        context = 0
        for request, num_new in zip(batch.requests, batch.num_new_tokens):
            request.num_computed_tokens += num_new
            context += request.num_computed_tokens
        computed += batch.num_tokens
        if cost == "serial":
            seconds += cards[0].serial_seconds(batch.num_tokens, context)
        else:  # the floor: weights and FLOPs fully overlapped, every byte at the read ceiling
            seconds += cards[1].floor_seconds(batch.num_tokens, context)
        for request in batch.requests:
            # a token is sampled once the whole sequence so far is computed
            if request.num_computed_tokens == request.num_tokens and request.append_token(5):
                scheduler.finish(request)
    prompt_tokens = workload.num_prompt_tokens
    return {
        "steps": steps,
        "preemptions": preemptions,
        # every output token but the last is fed back; anything more was recomputed
        "recomputed_tokens": computed
        - prompt_tokens
        - (workload.num_output_tokens - len(workload.prompts)),
        "modelled_s": seconds,
        "output_tok_per_s": workload.num_output_tokens / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workload", default="decode", choices=["decode", "short", "sharegpt", "sharegpt-filtered"]
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-8b")
    parser.add_argument("--weights", choices=sorted(BYTES_PER_PARAMETER), default="bf16")
    parser.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto")
    parser.add_argument("--requests", type=int, default=None, help="the workload's first N")
    parser.add_argument(
        "--kv-tokens", type=int, default=None, help="default: what the card holds (see above)"
    )
    parser.add_argument("--max-num-seqs", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument(
        "--cost",
        choices=["serial", "floor"],
        default="serial",
        help="serial: the fitted model (weights, FLOPs and KV reads one after another); floor: "
        "a lower bound (weights and FLOPs overlapped, reads at the measured ceiling)",
    )
    parser.add_argument(
        "--admission",
        nargs="+",
        choices=["reserve", "greedy"],
        default=["reserve", "greedy"],
        help="reserve: the engine's reserve_output_kv; greedy: admit while blocks are free",
    )
    args = parser.parse_args()
    workload = build(args.workload, VOCAB)
    if args.requests is not None:
        workload = workload.head(args.requests)
    plain = (args.shape, args.weights, args.kv_cache_dtype) == ("llama-8b", "bf16", "auto")
    serial, floor, kv_tokens = shaped_cards(args.shape, args.weights, args.kv_cache_dtype)
    cards = (H100, FLOOR) if plain else (serial, floor)
    kv_tokens = args.kv_tokens or (430_000 if plain else kv_tokens)
    print(
        f"{args.shape}, {args.weights} weights ({cards[1].weight_bytes / 1e9:.1f} GB), "
        f"{args.kv_cache_dtype} KV cache of {kv_tokens:,} tokens, {args.cost} cost"
    )
    print(
        "| admission | max_num_seqs | steps | preemptions | recomputed tokens | modelled s "
        "| output tok/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for admission in args.admission:
        for seqs in args.max_num_seqs:
            r = simulate(
                workload,
                kv_tokens,
                seqs,
                args.max_num_batched_tokens,
                args.block_size,
                reserve=admission == "reserve",
                cost=args.cost,
                cards=cards,
            )
            print(
                f"| {admission} | {seqs} | {r['steps']} | {r['preemptions']} "
                f"| {r['recomputed_tokens']:,} | {r['modelled_s']:.1f} "
                f"| {r['output_tok_per_s']:,.0f} |"
            )


if __name__ == "__main__":
    main()
