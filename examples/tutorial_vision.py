"""The Ray Data LLM batch-inference tutorial (vision part), run by llmbatch.

Only the imports differ from the tutorial: `ray.data` -> `llmbatch.data` and `ray.data.llm` ->
`llmbatch.llm`. It runs Qwen/Qwen2.5-VL-3B-Instruct over the tutorial's COCO captions questions
(lmms-lab/LMMs-Eval-Lite, coco2017_cap_val, split "lite"); when the Hugging Face Hub cannot be
reached, over generated pictures of coloured shapes with a question each. Point it elsewhere with:

    python examples/tutorial_vision.py --model /models/Qwen2.5-VL-3B-Instruct \
        --dataset lmms-lab/LMMs-Eval-Lite --dataset-config coco2017_cap_val --rows 500

(or the environment variables LLMBATCH_VISION_MODEL, LLMBATCH_VISION_DATASET, LLMBATCH_ROWS,
LLMBATCH_MAX_TOKENS). `--generated` always uses the generated pictures. Reading Hugging Face
datasets needs the `hf` extra: `pip install llmbatch[hf]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from io import BytesIO

import datasets
from PIL import Image, ImageDraw

import llmbatch.data as data
from llmbatch.llm import build_llm_processor, vLLMEngineProcessorConfig

logger = logging.getLogger("llmbatch")

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_DATASET = "lmms-lab/LMMs-Eval-Lite"
SYSTEM_PROMPT = """Look at the image and the question carefully and reason step by step.
First describe the image, then give your reasoning, and end with one line in this format:
Final Answer: <answer>
where <answer> is the letter of the right choice when choices are given (the letter only),
or else a short phrase or number (a number without its unit). Always give an answer."""
CHOICE_LETTERS = "ABCDEFGHIJKLMNOP"
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
}
SHAPES = ("circle", "square", "triangle")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset and generation options (shared with tutorial_both.py)."""
    parser.add_argument(
        "--dataset", default=os.environ.get("LLMBATCH_VISION_DATASET", DEFAULT_DATASET)
    )
    parser.add_argument("--dataset-config", default="coco2017_cap_val")
    parser.add_argument("--split", default="lite")
    parser.add_argument(
        "--generated", action="store_true", help="use generated pictures, not --dataset"
    )
    parser.add_argument("--rows", type=int, default=int(os.environ.get("LLMBATCH_ROWS", "16")))
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=int(os.environ.get("LLMBATCH_MAX_TOKENS", "32")),
        help="new tokens per row at most (the tutorial's value is 150)",
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("LLMBATCH_VISION_MODEL", DEFAULT_MODEL))
    add_data_arguments(parser)
    parser.add_argument("--output", help="write the results as Parquet to this folder")
    parser.add_argument("--summary-json", help="write the run summary as JSON to this file")
    return parser.parse_args()


def generated_dataset(num_rows: int) -> datasets.Dataset:
    """Pictures of one coloured shape each, in the tutorial dataset's columns: ``question_id``,
    ``image`` (an ``Image()`` feature), ``question`` and ``answer`` (the choices)."""
    rows: dict[str, list] = {"question_id": [], "image": [], "question": [], "answer": []}
    colours = list(COLOURS)
    for i in range(num_rows):
        colour, shape = colours[i % len(colours)], SHAPES[i // len(colours) % len(SHAPES)]
        rows["question_id"].append(i)
        rows["image"].append(draw_shape(shape, COLOURS[colour], size=224 + 32 * (i % 3)))
        if i % 2 == 0:
            rows["question"].append("What colour is the shape in the picture?")
            rows["answer"].append(colours)
        else:
            rows["question"].append("Which shape does the picture show?")
            rows["answer"].append(list(SHAPES))
    features = datasets.Features(
        {
            "question_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Sequence(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def draw_shape(shape: str, colour: tuple[int, int, int], size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(size // 2, size // 4), box[:1] + box[3:], box[2:]], fill=colour)
    return image


def load_vision_dataset(args: argparse.Namespace) -> datasets.Dataset:
    """The tutorial's dataset from the Hub (or a local copy); generated pictures when it cannot
    be reached or `--generated` is given."""
    if not args.generated:
        try:
            return datasets.load_dataset(args.dataset, args.dataset_config, split=args.split)
        except Exception as exc:
            logger.warning(
                "cannot load %s (%s: %s); using %d generated pictures instead",
                args.dataset,
                type(exc).__name__,
                exc,
                args.rows,
            )
    return generated_dataset(args.rows)


def run_tutorial(args: argparse.Namespace) -> data.Dataset:
    hf_dataset = load_vision_dataset(args)
    # --- the tutorial, imports changed ---
    vision_dataset = data.from_huggingface(hf_dataset)

    vision_processor_config = vLLMEngineProcessorConfig(
        model_source=args.model,
        engine_kwargs=dict(
            tensor_parallel_size=1,
            pipeline_parallel_size=1,
            max_model_len=4096,
            enable_chunked_prefill=True,
            max_num_batched_tokens=2048,
        ),
        runtime_env=dict(env_vars=dict(VLLM_USE_V1="1")),
        batch_size=16,
        accelerator_type="L4",
        concurrency=4,
        has_image=True,
    )

    def vision_preprocess(row):
        choices = "\n".join(
            f"{CHOICE_LETTERS[i]}) {choice}" for i, choice in enumerate(row["answer"])
        )
        return dict(
            messages=[
                {"role": "system", "content": SYSTEM_PROMPT},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": row["question"] + "\n\n"},
                        {"type": "image", "image": Image.open(BytesIO(row["image"]["bytes"]))},
                        {"type": "text", "text": "\n\nChoices:\n" + choices},
                    ],
                },
            ],
            sampling_params=dict(temperature=0.3, max_tokens=args.max_tokens, detokenize=False),
        )

    def vision_postprocess(row):
        return dict(resp=row["generated_text"])

    vision_processor = build_llm_processor(
        vision_processor_config, preprocess=vision_preprocess, postprocess=vision_postprocess
    )
    vision_processed_ds = vision_processor(vision_dataset.limit(args.rows)).materialize()
    vision_processed_ds.show(3)
    # --- end of the tutorial ---
    if args.output is not None:
        vision_processed_ds.write_parquet(args.output)
    summary = vision_processor.summary()
    print(summary.format())
    if args.summary_json is not None:
        with open(args.summary_json, "w") as f:
            json.dump(dataclasses.asdict(summary), f)
    return vision_processed_ds


def main() -> None:
    run_tutorial(parse_args())


if __name__ == "__main__":
    main()
