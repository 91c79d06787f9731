"""Scaling over the GPUs of one host: data-parallel replicas and tensor parallelism.

    PYTHONPATH=src python bench/scale_gpu.py --replicas 2 --out scale_gpu.json

1. Data parallel: the `seed` workload through the processor (chat template, tokenize, engine) on
   a llama-8b-shaped model with random weights, with concurrency 1 and N (one replica per GPU);
   target: N replicas >= 0.9 x N x one replica, in rows/s after start-up.
2. Tensor parallel: the same model with tensor_parallel_size=1 and 2: greedy tokens equal on a
   few prompts, top log-probabilities close (bf16), and output tokens/s on the `short` workload.

Prints one table last and appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from gpu_throughput import SHAPES
from report import commit, record
from workloads import build

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def make_model_folder(folder: Path, shape: str, tokenizer_dir: str) -> None:
    """config.json of `shape` (random weights are drawn at load) and SmolLM2's tokenizer."""
    from transformers import AutoConfig

    kwargs = dict(SHAPES[shape])
    kwargs.pop("hf_attention", None)  # the transformers peer's, not the model's
    AutoConfig.for_model(kwargs.pop("model_type"), **kwargs).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).exists():
            shutil.copy(Path(tokenizer_dir) / name, folder / name)


def data_parallel_row(folder: str, num_rows: int, replicas: int, args) -> dict:
    import llmbatch.data as data
    from llmbatch._fixtures.customers import generate_customers
    from llmbatch.llm import LLMProcessorConfig, build_llm_processor

    dates = []
    for table in generate_customers(num_rows, seed=0):
        dates.extend(table.column("Subscription Date").to_pylist())
    config = LLMProcessorConfig(
        model_source=folder,
        engine_kwargs=dict(
            load_format="dummy",
            dtype="bfloat16",
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            gpu_memory_utilization=0.9,
        ),
        batch_size=256,
        concurrency=(replicas, replicas),
    )

    def preprocess(row):
        return dict(
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {
                    "role": "user",
                    "content": f"Convert this date:\n{row['date']}\n\n as the format:MM-DD-YYYY",
                },
            ],
            sampling_params=dict(temperature=0.0, max_tokens=32, ignore_eos=True, detokenize=False),
        )

    rows = data.from_items([{"date": d} for d in dates[:num_rows]])
    with build_llm_processor(config, preprocess=preprocess) as processor:
        processor(rows.limit(64)).materialize()  # start-up and warm-up out of the timing
        started = time.perf_counter()
        processor(rows).materialize()
        seconds = time.perf_counter() - started
        summary = processor.summary()
    return {
        "test": f"data parallel x{replicas}",
        "rows_per_s": num_rows / seconds,
        "output_tok_per_s": summary.output_tokens / seconds,
        "startup_s": None,
        "check": "",
    }


def tensor_parallel_rows(folder: str, args) -> list[dict]:
    from llmbatch import LLM, SamplingParams

    vocab = SHAPES[args.shape]["vocab_size"]
    probes = build("short", vocab).head(8).prompts
    short = build("short", vocab).head(args.tp_requests)
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=5)
    results, rows = {}, []
    for tp in (1, 2):
        started = time.perf_counter()
        llm = LLM(folder, load_format="dummy", dtype="bfloat16", tensor_parallel_size=tp)
        startup = time.perf_counter() - started
        results[tp] = llm.generate(probes, greedy)
        params = [
            SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
            for n in short.output_lens
        ]
        llm.generate(short.prompts[:256], params[:256])
        started = time.perf_counter()
        outputs = llm.generate(short.prompts, params)
        seconds = time.perf_counter() - started
        llm.close()
        rows.append(
            {
                "test": f"tensor parallel {tp} (short)",
                "rows_per_s": len(outputs) / seconds,
                "output_tok_per_s": sum(len(o.token_ids) for o in outputs) / seconds,
                "startup_s": startup,
                "check": "",
            }
        )
    same = all(a.token_ids == b.token_ids for a, b in zip(results[1], results[2]))
    worst = 0.0
    for a, b in zip(results[1], results[2]):
        for step_a, step_b in zip(a.logprobs, b.logprobs):
            shared = set(step_a) & set(step_b)
            worst = max([worst, *(abs(step_a[t].logprob - step_b[t].logprob) for t in shared)])
    rows[-1]["check"] = f"greedy tokens equal: {same}; max |dlogprob| top-5: {worst:.3f}"
    return rows


def table(rows: list[dict], card: str, num_gpus: int) -> str:
    lines = [
        f"### scale_gpu.py, {datetime.date.today()}, {num_gpus} x {card}, commit {commit()}",
        "",
        "| test | rows/s | output tok/s | start-up s | check |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        startup = "" if r["startup_s"] is None else f"{r['startup_s']:.1f}"
        lines.append(
            f"| {r['test']} | {r['rows_per_s']:.1f} | {r['output_tok_per_s']:.0f} | {startup} "
            f"| {r['check']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-8b")
    parser.add_argument("--replicas", type=int, default=torch.cuda.device_count())
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--max-num-seqs", type=int, default=None, help="default: the engine's")
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--skip-tp", action="store_true")
    parser.add_argument("--skip-dp", action="store_true")
    parser.add_argument("--tp-requests", type=int, default=4096)
    parser.add_argument("--tokenizer", default=None, help="SmolLM2's folder (default: provisioned)")
    parser.add_argument("--out", type=Path, default=Path("scale_gpu.json"))
    args = parser.parse_args()
    if args.tokenizer is None:
        from llmbatch._fixtures.smollm2 import smollm2_dir

        args.tokenizer = smollm2_dir()
    card = torch.cuda.get_device_name()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_model_folder(Path(tmp), args.shape, args.tokenizer)
        for replicas in dict.fromkeys((1, args.replicas)) if not args.skip_dp else ():
            rows.append(data_parallel_row(tmp, args.rows, replicas, args))
            print(rows[-1], flush=True)
        if args.replicas > 1 and not args.skip_dp:
            ratio = rows[-1]["rows_per_s"] / (args.replicas * rows[0]["rows_per_s"])
            rows[-1]["check"] = f"{ratio:.2f} of linear (target >= 0.90)"
        if not args.skip_tp:
            rows.extend(tensor_parallel_rows(tmp, args))
    args.out.write_text(json.dumps(rows, indent=2))
    text = table(rows, card, torch.cuda.device_count())
    print(text)
    record(text + "\n")


if __name__ == "__main__":
    main()
