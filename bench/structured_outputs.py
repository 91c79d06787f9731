"""Structured outputs' cost: the `seed` workload with a JSON schema on every row against the same
rows unconstrained, one engine, same run, alternating rounds.

    PYTHONPATH=src python bench/structured_outputs.py                      # GPU: Llama-8B shape
    PYTHONPATH=src python bench/structured_outputs.py --shape smollm2 --rows 256   # this CPU

Every row generates exactly --max-tokens tokens in both modes (EOS ignored; the schema's last
field is a string longer than that, so no answer completes early): the constrained run does the
same model work plus computing, uploading and applying a grammar mask per token. On the GPU the
model has random weights in the Llama-3.1-8B shape (bf16); on the CPU it is SmolLM2-135M.
Prints a table last and appends it to bench/RESULTS.md.
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
from tutorial_cpu import machine
from workloads import seed_workload

# An extraction record: a date in a pattern, a boolean, an enum, then free text that every
# answer is still writing when --max-tokens ends it.
SCHEMA = {
    "type": "object",
    "properties": {
        "date": {"type": "string", "pattern": "^[0-9]{2}-[0-9]{2}-[0-9]{4}$"},
        "valid": {"type": "boolean"},
        "tier": {"enum": ["gold", "silver", "bronze"]},
        "notes": {"type": "string", "minLength": 2000},
    },
    "required": ["date", "valid", "tier", "notes"],
    "additionalProperties": False,
}


def start_engine(args: argparse.Namespace, model_dir: str, folder: str):
    """SmolLM2 itself, or random weights in a GPU shape with SmolLM2's tokenizer (the seed
    workload's prompts are SmolLM2's token ids)."""
    from llmbatch import LLM

    if args.shape == "smollm2":
        return LLM(model_dir, kv_cache_memory_bytes=1 << 30, max_model_len=1024)
    from gpu_throughput import SHAPES
    from transformers import LlamaConfig

    LlamaConfig(**SHAPES[args.shape]).save_pretrained(folder)
    return LLM(folder, load_format="dummy", dtype="bfloat16", tokenizer=model_dir)


def run(llm, prompts: list[list[int]], max_tokens: int, constrained: bool) -> dict:
    from llmbatch import SamplingParams

    spec = {"json": SCHEMA, "disable_any_whitespace": True} if constrained else None
    params = SamplingParams(
        temperature=1.0,
        max_tokens=max_tokens,
        ignore_eos=True,
        detokenize=False,
        structured_outputs=spec,
    )
    synchronize()
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(len(o.token_ids) for o in outputs)
    assert tokens == max_tokens * len(prompts), "every row must run to max_tokens"
    return {"seconds": seconds, "rows_per_s": len(prompts) / seconds, "tok_s": tokens / seconds}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama-8b", help="llama-8b (GPU) or smollm2 (CPU)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from llmbatch._fixtures.smollm2 import smollm2_dir

    model_dir = smollm2_dir()
    workload = seed_workload(AutoTokenizer.from_pretrained(model_dir), args.rows, args.max_tokens)
    with tempfile.TemporaryDirectory() as folder:
        llm = start_engine(args, model_dir, folder)
        warm = workload.prompts[:64]
        for constrained in (False, True):
            run(llm, warm, args.max_tokens, constrained)
        results: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.rounds):
            for constrained in (False, True):
                results[constrained].append(
                    run(llm, workload.prompts, args.max_tokens, constrained)
                )
                print(constrained, results[constrained][-1], flush=True)
        llm.close()
    report(args, results)


def report(args: argparse.Namespace, results: dict[bool, list[dict]]) -> None:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else machine()
    median = {c: statistics.median(r["rows_per_s"] for r in results[c]) for c in results}
    tok = {c: statistics.median(r["tok_s"] for r in results[c]) for c in results}
    rows = [
        ("unconstrained", median[False], tok[False], 1.0),
        ("JSON schema on every row", median[True], tok[True], median[True] / median[False]),
    ]
    per_row_ms = 1000 * (1 / median[True] - 1 / median[False])
    lines = [
        f"## structured_outputs: {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- device: {device}; shape {args.shape}",
        f"- commit: {commit()}",
        f"- command: `python bench/structured_outputs.py {' '.join(sys.argv[1:])}`",
        f"- workload: seed, {args.rows} rows x {args.max_tokens} tokens (EOS ignored), "
        f"{args.rounds} alternating rounds, medians; schema: date pattern, boolean, enum, "
        "long string",
        "",
        "| rows | rows/s | output tok/s | vs unconstrained |",
        "| --- | --- | --- | --- |",
        *(f"| {name} | {r:.1f} | {t:,.0f} | {x:.3f}x |" for name, r, t, x in rows),
        "",
        f"Grammar cost per row: {per_row_ms:.2f} ms of wall time "
        f"({per_row_ms * 1000 / args.max_tokens:.0f} us per token).",
        "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    record(text)


if __name__ == "__main__":
    main()
