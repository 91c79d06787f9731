"""n samples per prompt: the `seed` workload with ``n=8`` against the same rows repeated 8 times
with ``n=1``, one engine, same run, alternating rounds.

    PYTHONPATH=src python bench/samples_gpu.py                          # GPU: Llama-8B shape
    PYTHONPATH=src python bench/samples_gpu.py --shape qwen-0.5b --rows 4000

Both runs generate the same number of tokens (8 per prompt row x --max-tokens, EOS ignored,
temperature 1 with a seed per row). With ``n=8`` a prompt is prefilled once and its 8 samples
share its KV blocks; the repeated rows are separate requests (the prefix cache finds their
prompts once the first copy has computed them; ``--no-prefix-cache`` shows the cost without
it). Random weights in the shape (bf16) with SmolLM2's tokenizer, whose ids the seed workload's
prompts are. Prints a table last and appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time

import torch
from report import commit, record
from workloads import seed_workload

SAMPLES = 8


def start_engine(args: argparse.Namespace, tokenizer_dir: str, folder: str, prefix_cache: bool):
    from gpu_throughput import SHAPES
    from transformers import AutoConfig

    from llmbatch import LLM

    shape = dict(SHAPES[args.shape])
    shape.pop("hf_attention", None)
    AutoConfig.for_model(shape.pop("model_type"), **shape).save_pretrained(folder)
    return LLM(
        folder,
        load_format="dummy",
        dtype="bfloat16",
        tokenizer=tokenizer_dir,
        enable_prefix_caching=prefix_cache,
    )


def run(llm, prompts: list[list[int]], max_tokens: int, n: int) -> dict:
    from llmbatch import SamplingParams

    params = [
        SamplingParams(
            n=n, temperature=1.0, seed=i, max_tokens=max_tokens, ignore_eos=True, detokenize=False
        )
        for i in range(len(prompts))
    ]
    torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    assert tokens == max_tokens * n * len(prompts), "every sample must run to max_tokens"
    return {"seconds": seconds, "tok_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama-8b", help="a shape of bench/gpu_throughput.py")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-prefix-cache", action="store_true")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from llmbatch._fixtures.smollm2 import smollm2_dir

    tokenizer_dir = smollm2_dir()
    workload = seed_workload(
        AutoTokenizer.from_pretrained(tokenizer_dir), args.rows, args.max_tokens
    )
    prompts = workload.prompts
    repeated = [p for p in prompts for _ in range(SAMPLES)]
    results: dict[str, list[dict]] = {"n=8": [], "8x rows, n=1": []}
    with tempfile.TemporaryDirectory() as folder:
        llm = start_engine(args, tokenizer_dir, folder, not args.no_prefix_cache)
        run(llm, prompts[:64], args.max_tokens, SAMPLES)
        run(llm, repeated[:64], args.max_tokens, 1)
        for _ in range(args.rounds):
            results["n=8"].append(run(llm, prompts, args.max_tokens, SAMPLES))
            results["8x rows, n=1"].append(run(llm, repeated, args.max_tokens, 1))
            print({k: v[-1] for k, v in results.items()}, flush=True)
        llm.close()
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, list[dict]]) -> None:
    rates = {name: statistics.median(r["tok_s"] for r in runs) for name, runs in results.items()}
    seconds = {
        name: statistics.median(r["seconds"] for r in runs) for name, runs in results.items()
    }
    base = rates["8x rows, n=1"]
    lines = [
        f"## samples_gpu: {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- device: {torch.cuda.get_device_name()}; shape {args.shape}",
        f"- commit: {commit()}",
        f"- command: `python bench/samples_gpu.py {' '.join(sys.argv[1:])}`",
        f"- workload: seed, {args.rows} prompt rows x {SAMPLES} samples x {args.max_tokens} "
        f"tokens (EOS ignored, temperature 1), prefix cache "
        f"{'off' if args.no_prefix_cache else 'on'}, {args.rounds} alternating rounds, medians",
        "",
        "| requests | seconds | output tok/s | vs 8x rows |",
        "| --- | --- | --- | --- |",
        *(
            f"| {name} | {seconds[name]:.1f} | {rate:,.0f} | {rate / base:.2f}x |"
            for name, rate in rates.items()
        ),
        "",
        "Target: n=8 >= 1.5x the 8x rows.",
        "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    record(text)


if __name__ == "__main__":
    main()
