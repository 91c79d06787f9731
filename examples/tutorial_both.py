"""Both parts of the Ray Data LLM batch-inference tutorial in one process: the text part
(tutorial_text.py), then the vision part (tutorial_vision.py).

Each part's processor closes its engine when its job ends, so the vision model finds the GPU
memory the text model held free again. By default the text part runs SmolLM2-135M-Instruct over
generated customers and the vision part Qwen/Qwen2.5-VL-3B-Instruct over the tutorial's
dataset (generated pictures when the Hub cannot be reached):

    python examples/tutorial_both.py --text-model unsloth/Llama-3.1-8B-Instruct \
        --vision-model Qwen/Qwen2.5-VL-3B-Instruct --rows 64 --max-tokens 150
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import tutorial_text
import tutorial_vision


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-model", default=os.environ.get("LLMBATCH_MODEL"))
    parser.add_argument("--csv", default=os.environ.get("LLMBATCH_CSV"))
    parser.add_argument(
        "--vision-model",
        default=os.environ.get("LLMBATCH_VISION_MODEL", tutorial_vision.DEFAULT_MODEL),
    )
    tutorial_vision.add_data_arguments(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.text_model is None:
        from llmbatch._fixtures.smollm2 import smollm2_gguf_path

        args.text_model = smollm2_gguf_path()
    shared = dict(rows=args.rows, max_tokens=args.max_tokens, output=None, summary_json=None)
    with tempfile.TemporaryDirectory() as folder:
        csv = args.csv
        if csv is None:
            csv = os.path.join(folder, "customers.csv")
            from llmbatch._fixtures.customers import write_customers_csv

            write_customers_csv(csv, num_rows=max(args.rows, 1000), seed=0)
        print("== text part ==")
        tutorial_text.run_tutorial(
            argparse.Namespace(model=args.text_model, csv=csv, ignore_eos=False, **shared)
        )
    if torch.cuda.is_available():
        held = torch.cuda.memory_allocated() / 2**20
        print(f"GPU memory held after the text part: {held:.0f} MiB")
    print("== vision part ==")
    tutorial_vision.run_tutorial(
        argparse.Namespace(
            model=args.vision_model,
            dataset=args.dataset,
            dataset_config=args.dataset_config,
            split=args.split,
            generated=args.generated,
            **shared,
        )
    )


if __name__ == "__main__":
    main()
