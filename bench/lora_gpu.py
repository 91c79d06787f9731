"""LoRA: requests of 8 adapters interleaved against the same requests on the base model without
LoRA, same card, same run.

    PYTHONPATH=src python bench/lora_gpu.py                       # Llama-8B shape, sharegpt 1000
    PYTHONPATH=src python bench/lora_gpu.py --shape qwen-0.5b --requests 2000

Random bf16 weights in the shape; 8 adapters of rank --rank on every projection (q, k, v, o,
gate, up, down), written in PEFT's format. The LoRA engine holds all 8 on the device
(``max_loras=8``) and request i runs adapter i mod 8; the baseline is an engine without
``enable_lora``. Every request generates its workload's output length (EOS ignored). Prints a
table last and appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import ROOT, commit, record
from workloads import build

sys.path.insert(0, str(ROOT / "tests" / "support"))

NUM_ADAPTERS = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_model(shape: str, folder: Path):
    from gpu_throughput import SHAPES
    from transformers import AutoConfig

    kwargs = dict(SHAPES[shape])
    kwargs.pop("hf_attention", None)
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    config.save_pretrained(folder)
    return config


def run(llm, workload, loras) -> dict:
    from llmbatch import SamplingParams

    params = [
        SamplingParams(max_tokens=n, ignore_eos=True, temperature=0, detokenize=False)
        for n in workload.output_lens
    ]
    torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = llm.generate(workload.prompts, params, lora_request=loras)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert tokens == workload.num_output_tokens
    return {"seconds": seconds, "tok_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama-8b", help="a shape of bench/gpu_throughput.py")
    parser.add_argument("--workload", default="sharegpt")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()

    from tiny_lora import write_peft_adapter

    from llmbatch import LLM, LoRARequest

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        config = write_model(args.shape, folder)
        workload = build(args.workload, config.vocab_size).head(args.requests)
        loras = []
        for index in range(NUM_ADAPTERS):
            adapter = Path(tmp) / f"adapter{index}"
            write_peft_adapter(adapter, config, TARGETS, args.rank, index, 0.01, torch.bfloat16)
            loras.append(LoRARequest(f"adapter{index}", index + 1, str(adapter)))
        chosen = [loras[i % NUM_ADAPTERS] for i in range(len(workload.prompts))]
        common = dict(load_format="dummy", dtype="bfloat16")
        results = {}
        llm = LLM(str(folder), **common)
        run(llm, workload.head(64), None)
        results["base model, no LoRA"] = run(llm, workload, None)
        llm.close()
        torch.cuda.empty_cache()
        llm = LLM(
            str(folder), enable_lora=True, max_loras=NUM_ADAPTERS, max_lora_rank=args.rank, **common
        )
        run(llm, workload.head(64), chosen[:64])
        results[f"{NUM_ADAPTERS} adapters interleaved"] = run(llm, workload, chosen)
        llm.close()
    report(args, workload, results)


def report(args, workload, results: dict[str, dict]) -> None:
    base = results["base model, no LoRA"]["tok_s"]
    lines = [
        f"## lora_gpu: {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- device: {torch.cuda.get_device_name()}; shape {args.shape}",
        f"- commit: {commit()}",
        f"- command: `python bench/lora_gpu.py {' '.join(sys.argv[1:])}`",
        f"- workload: {workload.name}, {len(workload.prompts)} requests "
        f"({workload.num_prompt_tokens:,} prompt, {workload.num_output_tokens:,} output tokens, "
        f"EOS ignored); adapters of rank {args.rank} on q, k, v, o, gate, up and down",
        "",
        "| requests | seconds | output tok/s | vs base |",
        "| --- | --- | --- | --- |",
        *(
            f"| {name} | {r['seconds']:.1f} | {r['tok_s']:,.0f} | {r['tok_s'] / base:.2f}x |"
            for name, r in results.items()
        ),
        "",
        "Target: >= 0.7x the base model's throughput.",
        "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    record(text)


if __name__ == "__main__":
    main()
