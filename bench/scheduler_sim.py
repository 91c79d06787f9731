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


def simulate(
    workload,
    kv_tokens: int,
    max_num_seqs: int,
    budget: int,
    block_size: int,
    reserve: bool,
    cost: str = "serial",
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
            seconds += H100.serial_seconds(batch.num_tokens, context)
        else:  # the floor: weights and FLOPs fully overlapped, every byte at the read ceiling
            seconds += FLOOR.floor_seconds(batch.num_tokens, context)
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
    parser.add_argument("--kv-tokens", type=int, default=430_000)
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
    workload = build(args.workload, 128_256)
    print(
        "| admission | max_num_seqs | steps | preemptions | recomputed tokens | modelled s "
        "| output tok/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for admission in args.admission:
        for seqs in args.max_num_seqs:
            r = simulate(
                workload,
                args.kv_tokens,
                seqs,
                args.max_num_batched_tokens,
                args.block_size,
                reserve=admission == "reserve",
                cost=args.cost,
            )
            print(
                f"| {admission} | {seqs} | {r['steps']} | {r['preemptions']} "
                f"| {r['recomputed_tokens']:,} | {r['modelled_s']:.1f} "
                f"| {r['output_tok_per_s']:,.0f} |"
            )


if __name__ == "__main__":
    main()
