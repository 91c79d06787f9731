"""Vision throughput: llmbatch and transformers on a Qwen2.5-VL-3B-shaped model, same random
weights, same card, same run.

    PYTHONPATH=src python bench/vision_gpu.py --tokenizer .cache/smollm2-tokenizer --images 300 \
        --out vision.json

Each row is a multiple-choice question over one picture, in the vision tutorial's form (a system
prompt asking for "Final Answer: <answer>"; the question, the image and the choices as the user's
content), greedy, with a fixed number of new tokens (random weights never stop on their own).
Pictures are generated (deterministic, of COCO's sizes around 640x480) and processed with the
model folder's processor before any timing; the processor's time per image is reported apart.
transformers `generate()` runs static batches (left padding, sdpa) over the first --peer-images
rows; its rates are per-second figures over the rows it ran. Its greedy tokens are compared with
llmbatch's on those rows: equal in float32, while bf16 rounding makes them part after a while.

The model folder (config, SmolLM2's tokenizer with Qwen's chat and vision tokens, image
processor, chat template) is built in a temporary folder; weights are drawn by transformers and
copied into llmbatch's engine, so both run the same model.

CPU smoke run (prints only; nothing is appended to bench/RESULTS.md):

    PYTHONPATH=src python bench/vision_gpu.py --device cpu --shape tiny --images 8 \
        --peer-images 8 --peer-batch 4 --max-tokens 8
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from report import commit
from vision_workload import (
    MIN_PIXELS,
    WARMUP_ROWS,
    Row,
    make_rows,
    process_rows,
    write_model_folder,
)

from llmbatch._fixtures.qwen2_5_vl import PATCH, SHAPES

if TYPE_CHECKING:
    pass

# --- the systems --------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_hf_model(config, device: str, dtype: torch.dtype):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(
            config, dtype=dtype, attn_implementation="sdpa"
        )
    # ignore_eos: decode exactly max_new_tokens, as llmbatch does, without masking the EOS logit
    model.generation_config.eos_token_id = None
    return model.eval()


def run_transformers(config, processor, rows: list[Row], args) -> tuple[dict, list, dict]:
    """transformers over the first --peer-images rows; returns the result, the tokens and the
    model's weights (on the CPU), for llmbatch to run the same model."""
    start = time.perf_counter()
    model = make_hf_model(config, args.device, getattr(torch, args.dtype))
    synchronize(args.device)
    startup = time.perf_counter() - start
    result, token_ids = hf_generate(model, processor, rows[: args.peer_images], args)
    result["startup_s"] = startup
    weights = {name: tensor.to("cpu") for name, tensor in model.state_dict().items()}
    del model
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result, token_ids, weights


def hf_generate(model, processor, rows: list[Row], args) -> tuple[dict, list[list[int]]]:
    """Static batches of --peer-batch rows, left padding; inputs are processed before timing."""
    processor.tokenizer.padding_side = "left"
    pad = processor.tokenizer.pad_token_id
    batches = []
    for first in range(0, len(rows), args.peer_batch):
        chunk = rows[first : first + args.peer_batch]
        inputs = processor(
            text=[r.prompt for r in chunk],
            images=[r.image for r in chunk],
            padding=True,
            return_tensors="pt",
        )
        batches.append(inputs.to(args.device))

    def generate(inputs, new_tokens: int) -> torch.Tensor:
        with torch.no_grad():
            out = model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        return out[:, inputs["input_ids"].shape[1] :]

    generate(batches[0], 2)  # warm-up: kernels and allocator out of the timing
    synchronize(args.device)
    start = time.perf_counter()
    outputs = [generate(inputs, args.max_tokens).cpu() for inputs in batches]
    synchronize(args.device)
    seconds = time.perf_counter() - start
    token_ids = [row.tolist() for out in outputs for row in out]
    return rates("transformers generate()", token_ids, seconds, args.max_tokens), token_ids


def run_llmbatch(folder: str, weights: dict | None, rows: list[Row], warmup: list[Row], args):
    """Start-up, then all rows through the engine at once; returns the result and tokens."""
    from llmbatch import SamplingParams
    from llmbatch.engine.llm_engine import LLMEngine

    start = time.perf_counter()
    engine = LLMEngine.from_engine_args(
        model=folder,
        load_format="dummy",
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
    synchronize(args.device)
    startup = time.perf_counter() - start
    try:
        if weights is not None:
            # The same weights as the transformers peer.
            engine._runner.model.load_weights(weights.items())
        params = SamplingParams(
            temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True, detokenize=False
        )
        # Warm-up rows have pictures of their own, so the prefix cache holds none of the timed
        # rows' images.
        run_engine(engine, warmup, params, "warmup")
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        before = engine.stats
        synchronize(args.device)
        start = time.perf_counter()
        token_ids = run_engine(engine, rows, params, "row")
        synchronize(args.device)
        seconds = time.perf_counter() - start
        after = engine.stats
    finally:
        engine.close()
    result = rates("llmbatch", token_ids, seconds, args.max_tokens)
    result["startup_s"] = startup
    result["prompt_tokens"] = after.num_prompt_tokens - before.num_prompt_tokens
    result["cached_prompt_tokens"] = after.num_cached_tokens - before.num_cached_tokens
    result["steps"] = after.num_steps - before.num_steps
    result["preemptions"] = after.num_preemptions - before.num_preemptions
    if args.device.startswith("cuda"):
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result, token_ids


def run_engine(engine, rows: list[Row], params, prefix: str) -> list[list[int]]:
    for i, row in enumerate(rows):
        engine.add_request(f"{prefix}-{i}", row.token_ids, params, multi_modal=row.multi_modal)
    outputs = {}
    while engine.has_unfinished():
        outputs.update((o.request_id, o.token_ids) for o in engine.step())
    return [list(outputs[f"{prefix}-{i}"]) for i in range(len(rows))]


def rates(system: str, token_ids: list[list[int]], seconds: float, max_tokens: int) -> dict:
    """Rates over the timed rows, each of which must have decoded exactly max_tokens."""
    lengths = {len(t) for t in token_ids}
    if lengths != {max_tokens}:
        raise RuntimeError(f"{system} gave outputs of {sorted(lengths)} tokens, not {max_tokens}")
    generated = len(token_ids) * max_tokens
    return {
        "system": system,
        "rows": len(token_ids),
        "seconds": seconds,
        "rows_per_s": len(token_ids) / seconds,
        "output_tok_s": generated / seconds,
        "startup_s": None,
    }


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> str:
    """How far llmbatch's greedy tokens follow transformers' on the rows both ran."""
    equal = sum(a == b for a, b in zip(ours, theirs))
    shared = [
        next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        for a, b in zip(ours, theirs)
    ]
    return (
        f"Greedy tokens equal to transformers' on {equal}/{len(theirs)} rows; the first "
        f"{np.mean(shared):.1f} of {len(theirs[0])} tokens agree on average"
    )


# --- the report ---------------------------------------------------------------------------------


def card_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()})"


def table(record: dict) -> str:
    lines = [
        f"### vision_gpu.py, {record['date']}, {record['card']}, commit {record['commit']}",
        "",
        f"`{record['command']}`",
        "",
        f"{record['shape']}, {record['dtype']}, random weights; {record['images']} rows of one "
        f"{record['mean_image_tokens']:.0f}-token image and {record['mean_prompt_tokens']:.0f} "
        f"prompt tokens on average, {record['max_tokens']} new tokens each (greedy, ignore_eos)",
        "",
        "| system | rows | rows/s | output tok/s | start-up s | vs transformers |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    peer = next((r for r in record["results"] if r["system"] != "llmbatch"), None)
    for r in record["results"]:
        startup = "" if r["startup_s"] is None else f"{r['startup_s']:.1f}"
        speedup = f"{r['output_tok_s'] / peer['output_tok_s']:.1f}x" if peer else "-"
        lines.append(
            f"| {r['system']} | {r['rows']} | {r['rows_per_s']:.2f} | {r['output_tok_s']:,.0f} "
            f"| {startup} | {speedup} |"
        )
    lines += [
        "",
        f"Image processing (before timing, one image at a time): "
        f"{record['processor_ms_per_image']:.1f} ms per image.",
    ]
    if record["check"]:
        lines.append(record["check"] + ".")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tokenizer", default=None, help="SmolLM2's tokenizer folder")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-vl-3b")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        default=None,
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    parser.add_argument("--images", type=int, default=300, help="rows (one image each)")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per row")
    parser.add_argument("--max-pixels", type=int, default=448 * 448)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-num-seqs", type=int, default=None, help="default: the engine's")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--peer-images", type=int, default=64, help="0: skip transformers")
    parser.add_argument("--peer-batch", type=int, default=16)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--out", type=Path, default=Path("vision_gpu.json"))
    args = parser.parse_args()
    for name in ("images", "max_tokens", "peer_batch", "max_pixels"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.peer_images <= args.images:
        parser.error(f"--peer-images must be between 0 and --images ({args.images})")
    if args.max_pixels < MIN_PIXELS:
        parser.error(f"--max-pixels must be at least {MIN_PIXELS}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; pass --device cpu (with --shape tiny for a smoke run)")
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    if args.tokenizer is None:
        from llmbatch._fixtures.smollm2 import smollm2_dir

        args.tokenizer = smollm2_dir()
    return args


def main() -> None:
    args = parse_args()
    from llmbatch.models.processor import load_processor

    results: list[dict] = []
    check = ""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = write_model_folder(folder, args.shape, args.tokenizer, args.max_pixels)
        processor = load_processor(str(folder))
        rows = make_rows(processor, 0, args.images)
        warmup = make_rows(processor, args.images, WARMUP_ROWS)
        processor_s = process_rows(processor, rows)
        process_rows(processor, warmup)
        print(f"processed {len(rows)} images in {processor_s:.1f} s", flush=True)

        weights = None
        peer_tokens: list[list[int]] = []
        if args.peer_images:
            peer, peer_tokens, weights = run_transformers(config, processor, rows, args)
            results.append(peer)
            print(peer, flush=True)
        ours, our_tokens = run_llmbatch(str(folder), weights, rows, warmup, args)
        del weights
        results.append(ours)
        print(ours, flush=True)
        if peer_tokens:
            check = agreement(our_tokens[: len(peer_tokens)], peer_tokens)

    merge = PATCH["spatial_merge_size"] ** 2
    image_tokens = [int(r.multi_modal.image_grid_thw.prod()) // merge for r in rows]
    record = {
        "date": datetime.date.today().isoformat(),
        "card": card_name(args.device),
        "commit": commit(),
        "command": "PYTHONPATH=src python3 " + shlex.join(sys.argv),
        "shape": args.shape,
        "dtype": args.dtype,
        "images": args.images,
        "max_tokens": args.max_tokens,
        "max_pixels": args.max_pixels,
        "mean_prompt_tokens": float(np.mean([len(r.token_ids) for r in rows])),
        "mean_image_tokens": float(np.mean(image_tokens)),
        "processor_ms_per_image": 1000 * processor_s / len(rows),
        "check": check,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    text = table(record)
    print("\n" + text)
    if args.device.startswith("cuda") and not args.no_record:
        record(text + "\n")


if __name__ == "__main__":
    main()
