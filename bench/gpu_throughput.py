"""GPU throughput: llmbatch and transformers on the same random weights, same card, same run.

    PYTHONPATH=src python bench/gpu_throughput.py --shape llama-8b --out results.json

Workloads and peers are those of BENCHMARKS.md; one table is printed last. transformers runs on a
prefix of each workload (its static batches take minutes on the full sets): its rates are
per-second figures over the requests it ran, which is what the comparison needs.
``--variants "" model_impl=transformers`` times the model's transformers code on llmbatch's
engine (the fallback for architectures without llmbatch code) next to llmbatch's own.

Quantized weights: ``--variants "" quantization=fp8,kv_cache_dtype=fp8`` runs bf16 and FP8
(W8A8, weights quantized at load, FP8 KV cache) in one call; ``--checkpoint-quantization awq``
(or gptq, fp8) writes that format's quantization_config into the model's config, so every
variant loads random weights in its layout, e.g. the Llama-70B shape, which fits one H100 only
quantized (no transformers peer: ``--peers ""``):

    PYTHONPATH=src python bench/gpu_throughput.py --shape llama-70b --checkpoint-quantization awq --peers "" --workloads short --requests 256

Quantized variants run on their own random weights (transformers' are not quantized).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import commit
from step_profile import (
    STEP_KINDS,
    Card,
    StepTrace,
    format_launch_profile,
    format_profiles,
    format_summary,
    profile_kind,
)
from workloads import Workload, build

SHAPES = {
    "llama-8b": dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=14336,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    ),
    "qwen-0.5b": dict(
        architectures=["Qwen2ForCausalLM"],
        model_type="qwen2",
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    ),
    # 70.6B parameters: 141 GB in bf16, 40.6 GB with 4-bit linear layers
    "llama-70b": dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_size=8192,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=28672,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    ),
    # 30.5B parameters, 3.3B active: 128 experts of 768, 8 a token (61 GB in bf16)
    "qwen3-30b-a3b": dict(
        architectures=["Qwen3MoeForCausalLM"],
        model_type="qwen3_moe",
        hidden_size=2048,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        norm_topk_prob=True,
        vocab_size=151936,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
    ),
    # head_dim 256, soft caps 50 (attention) and 30 (logits), 4,096-token windows on every
    # other layer; transformers runs it with eager attention (its sdpa path cannot cap scores)
    "gemma2-9b": dict(
        architectures=["Gemma2ForCausalLM"],
        model_type="gemma2",
        hf_attention="eager",
        hidden_size=3584,
        num_hidden_layers=42,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        intermediate_size=14336,
        vocab_size=256000,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    ),
}


# what a checkpoint of each format says in config.json (random weights load in its layout)
CHECKPOINT_QUANTIZATION = {
    "awq": dict(quant_method="awq", bits=4, group_size=128, zero_point=True, version="gemm"),
    "gptq": dict(quant_method="gptq", bits=4, group_size=128, desc_act=False, sym=True),
    "fp8": dict(
        quant_method="compressed-tensors",
        format="float-quantized",
        config_groups={
            "group_0": dict(
                targets=["Linear"],
                weights=dict(num_bits=8, type="float", strategy="channel", symmetric=True),
                input_activations=dict(num_bits=8, type="float", strategy="token", dynamic=True),
            )
        },
        ignore=["lm_head"],
    ),
}


def make_config(shape: str, checkpoint_quantization: str | None = None):
    from transformers import AutoConfig

    kwargs = dict(SHAPES[shape])
    model_type = kwargs.pop("model_type")
    kwargs.pop("hf_attention", None)
    config = AutoConfig.for_model(model_type, **kwargs)
    config.pad_token_id = 0
    if checkpoint_quantization is not None:
        config.quantization_config = CHECKPOINT_QUANTIZATION[checkpoint_quantization]
    return config


def make_hf_model(shape: str):
    from transformers import AutoModelForCausalLM

    config = make_config(shape)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            config,
            dtype=torch.bfloat16,
            attn_implementation=SHAPES[shape].get("hf_attention", "sdpa"),
        )
    return model.eval()


def hf_generate(model, workload: Workload, batch_size: int) -> dict:
    """Static batches, left padding; each batch decodes to its longest requested output."""
    generated = 0
    torch.cuda.synchronize()
    start = time.perf_counter()
    for first in range(0, len(workload.prompts), batch_size):
        prompts = workload.prompts[first : first + batch_size]
        out_lens = workload.output_lens[first : first + batch_size]
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        with torch.no_grad():
            model.generate(
                input_ids=ids.cuda(),
                attention_mask=mask.cuda(),
                max_new_tokens=max(out_lens),
                min_new_tokens=max(out_lens),
                do_sample=False,
                pad_token_id=0,
            )
        generated += sum(out_lens)
    torch.cuda.synchronize()
    result = _rates(workload, time.perf_counter() - start)
    result["batch_size"] = min(batch_size, len(workload.prompts))
    return result


def hf_generate_batch(model, workload: Workload) -> dict:
    from transformers import GenerationConfig

    model.set_attn_implementation("paged|sdpa")
    config = GenerationConfig(
        max_new_tokens=max(workload.output_lens),
        min_new_tokens=max(workload.output_lens),
        do_sample=False,
        pad_token_id=0,
        eos_token_id=-1,
    )
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        model.generate_batch(inputs=workload.prompts, generation_config=config)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    model.set_attn_implementation("sdpa")
    return _rates(workload, elapsed)


def run_peers(hf_model, name: str, subset: Workload, peers: list[str]) -> list[dict]:
    results = []
    for engine in peers:
        if engine == "generate_batch" and name != "seed":
            continue
        label = {
            "generate": "transformers generate()",
            "generate_batch": "transformers generate_batch()",
        }[engine]
        try:
            if engine == "generate":
                rates = hf_generate(hf_model, subset, 256)
            else:
                rates = hf_generate_batch(hf_model, subset)
        except Exception as exc:  # a peer's failure must not cost the rest of the run
            print(f"{label} on {name} failed: {exc!r}", flush=True)
            continue
        results.append({"engine": label, "workload": name, **rates})
        print(results[-1], flush=True)
    return results


def _rates(workload: Workload, seconds: float) -> dict:
    n = len(workload.prompts)
    return {
        "requests": n,
        "seconds": seconds,
        "rows_per_s": n / seconds,
        "output_tok_s": workload.num_output_tokens / seconds,
        "total_tok_s": (workload.num_output_tokens + workload.num_prompt_tokens) / seconds,
    }


def run_llmbatch(llm, workload: Workload, trace: StepTrace | None = None) -> dict:
    from llmbatch import SamplingParams

    params = [
        SamplingParams(max_tokens=n, ignore_eos=True, temperature=1.0, detokenize=False)
        for n in workload.output_lens
    ]
    warm = workload.head(min(64, len(workload.prompts)))
    llm.generate(warm.prompts, params[: len(warm.prompts)])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = llm.llm_engine.stats
    memory_before = torch.cuda.memory_stats()
    if trace is not None:
        trace.attach(llm.llm_engine)
    start = time.perf_counter()
    outputs = llm.generate(workload.prompts, params)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if trace is not None:
        trace.detach(llm.llm_engine)
    after = llm.llm_engine.stats
    assert [len(o.token_ids) for o in outputs] == workload.output_lens
    result = _rates(workload, elapsed)
    result["cached_prompt_tokens"] = after.num_cached_tokens - before.num_cached_tokens
    result["steps"] = after.num_steps - before.num_steps
    result["preemptions"] = after.num_preemptions - before.num_preemptions
    result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    # cudaMalloc/cudaFree during the run (each free, and each retry after a failed
    # allocation, synchronizes the device)
    memory_after = torch.cuda.memory_stats()
    for key in ("num_alloc_retries", "num_device_alloc", "num_device_free"):
        result[key] = memory_after.get(key, 0) - memory_before.get(key, 0)
    return result


def parse_variant(variant: str) -> dict[str, object]:
    """ "kv_cache_dtype=fp8,cuda_graph_max_tokens=0" -> engine kwargs (numbers parsed as such)."""
    kwargs: dict[str, object] = {}
    for item in filter(None, variant.split(",")):
        name, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--variants: {item!r} is not name=value")
        try:
            kwargs[name.strip()] = int(text)
        except ValueError:
            try:
                kwargs[name.strip()] = float(text)
            except ValueError:
                kwargs[name.strip()] = text.strip()
    return kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-8b")
    parser.add_argument("--workloads", default="seed,sharegpt,short,decode")
    parser.add_argument("--peers", default="generate,generate_batch")
    parser.add_argument("--peer-requests", type=int, default=512)
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="llmbatch runs the first N requests of each workload (default: all of them)",
    )
    parser.add_argument("--max-num-seqs", type=int, default=None, help="default: the engine's")
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[""],
        help="one llmbatch engine per variant, in the order given (repeat them to alternate): "
        "engine arguments as name=value[,name=value], e.g. kv_cache_dtype=fp8 or "
        "cuda_graph_max_tokens=0; an empty string is the engine's defaults",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="SmolLM2's tokenizer folder (for the seed workload's chat template); default: the "
        "provisioned model",
    )
    parser.add_argument(
        "--trace", action="store_true", help="time every step and set it against the floor"
    )
    parser.add_argument(
        "--profile", action="store_true", help="kernel families of a few kinds of steps"
    )
    parser.add_argument(
        "--profile-launches-over",
        type=int,
        default=None,
        help="with --trace: cProfile the host's launch of every step of more tokens than this",
    )
    parser.add_argument(
        "--checkpoint-quantization",
        choices=sorted(CHECKPOINT_QUANTIZATION),
        default=None,
        help="random weights in this format's layout (AWQ and GPTQ: 4-bit, groups of 128; "
        "fp8: compressed-tensors FP8, per-channel weights, dynamic per-token activations)",
    )
    parser.add_argument("--out", type=Path, default=Path("gpu_throughput.json"))
    args = parser.parse_args()
    if args.tokenizer is None:
        from llmbatch._fixtures.smollm2 import smollm2_dir

        args.tokenizer = smollm2_dir()

    from transformers import AutoTokenizer

    from llmbatch import LLM

    card_name = torch.cuda.get_device_name()
    names = [name for name in args.workloads.split(",") if name]
    vocab = SHAPES[args.shape]["vocab_size"]
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if "seed" in names else None
    workloads = {name: build(name, vocab, tokenizer) for name in names}
    if args.requests is not None:
        workloads = {name: w.head(args.requests) for name, w in workloads.items()}
    rows: list[dict] = []

    hf_config = make_config(args.shape, args.checkpoint_quantization)
    peers = [p for p in args.peers.split(",") if p]
    weights = None
    if peers:
        hf_model = make_hf_model(args.shape)
        for name, workload in workloads.items():
            long_outputs = name.startswith("sharegpt") or name == "decode"
            head = min(args.peer_requests, 32) if long_outputs else args.peer_requests
            rows.extend(run_peers(hf_model, name, workload.head(head), peers))
        weights = {k: v.to("cpu") for k, v in hf_model.state_dict().items()}
        del hf_model
        gc.collect()
        torch.cuda.empty_cache()

    reports: list[str] = []
    profiles: list[str] = []
    for variant in args.variants:
        engine = f"llmbatch ({variant})" if variant else "llmbatch"
        variant_kwargs = parse_variant(variant)
        with tempfile.TemporaryDirectory() as folder:
            hf_config.save_pretrained(folder)
            start = time.perf_counter()
            llm = LLM(
                folder,
                load_format="dummy",
                dtype="bfloat16",
                max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens,
                gpu_memory_utilization=args.gpu_memory_utilization,
                **variant_kwargs,
            )
            startup = time.perf_counter() - start
            quantized = llm.llm_engine.config.quantization is not None
            if weights is not None and not quantized:
                # Same weights as the transformers peer.
                llm.llm_engine._runner.model.load_weights(weights.items())
            runner = llm.llm_engine._runner
            card = Card.detect(runner.model, llm.llm_engine.config.kv_cache_dtype)
            for name, workload in workloads.items():
                trace = (
                    StepTrace(profile_launches_over=args.profile_launches_over)
                    if args.trace
                    else None
                )
                result = run_llmbatch(llm, workload, trace)
                rows.append({"engine": engine, "workload": name, "startup_s": startup, **result})
                print(rows[-1], flush=True)
                if trace is not None:
                    reports.append(format_summary(name, trace.summary(card)))
                    print(reports[-1], flush=True)
                    if args.profile_launches_over is not None:
                        print(format_launch_profile(trace), flush=True)
            if args.profile:
                for kind in STEP_KINDS:
                    profiles.append(profile_kind(llm, kind, vocab))
                    print(profiles[-1], flush=True)
                reports.append(format_profiles(profiles))
            llm.close()
            del llm
            gc.collect()
            torch.cuda.empty_cache()
    del weights

    record = {
        "date": datetime.date.today().isoformat(),
        "card": card_name,
        "shape": args.shape,
        "commit": commit(),
        "command": " ".join(sys.argv),
        "startup_s": startup,
        "profiles": profiles,
        "reports": reports,
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=2))
    for report in reports:
        print("\n" + report)
    weights_kind = args.checkpoint_quantization or "bf16"
    print(
        f"\n{card_name}, {args.shape}, {weights_kind} weights (random); llmbatch start-up "
        f"{startup:.1f} s"
    )
    print("| workload | engine | requests | rows/s | output tok/s | total tok/s | vs generate() |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in workloads:
        base = next(
            (r for r in rows if r["workload"] == name and "generate()" in r["engine"]), None
        )
        for r in (r for r in rows if r["workload"] == name):
            ratio = f"{r['output_tok_s'] / base['output_tok_s']:.1f}x" if base else "-"
            print(
                f"| {name} | {r['engine']} | {r['requests']} | {r['rows_per_s']:.1f} | "
                f"{r['output_tok_s']:,.0f} | {r['total_tok_s']:,.0f} | {ratio} |"
            )


if __name__ == "__main__":
    main()
