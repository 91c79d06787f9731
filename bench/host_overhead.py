"""Host (Python) cost of the engine's steady decode steps, measured on the CPU.

A tiny Llama-shaped model with random weights (2 layers, hidden 64) but a real 128,256-token
vocabulary, so that logits and sampling have their real width; 256 requests with 128-token
prompts decode together (EOS ignored). For each case (greedy or temperature 1.0, with or
without detokenization) the steady decode steps are timed, then profiled with cProfile and
split by engine component. "torch ops" is the time spent inside torch's C functions (the work
a GPU would run); "host" is everything else: the Python a GPU would wait for.

    .venv/bin/python bench/host_overhead.py [--requests 256] [--steps 10]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from llmbatch.engine.llm_engine import LLMEngine
from llmbatch.engine.sampling_params import SamplingParams

VOCAB_SIZE = 128_256
PROMPT_LEN = 128

# (label, file suffix, function name): cumulative time of these functions per step.
COMPONENTS = [
    ("schedule", "engine/scheduler.py", "schedule"),
    ("inputs", "engine/model_runner.py", "_prepare_inputs"),
    ("logits", "models/llama.py", "compute_logits"),
    ("sample", "engine/sampler.py", "__call__"),
    ("detok", "engine/detokenizer.py", "add"),
]


@dataclass(slots=True)
class CaseResult:
    label: str
    wall_ms: float
    profile_ms: dict[str, float]


def save_model_folder(folder: Path) -> None:
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    config.save_pretrained(folder)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, VOCAB_SIZE)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")
    PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(folder)


def start_decoding(
    folder: Path, num_requests: int, max_tokens: int, params: SamplingParams
) -> LLMEngine:
    """An engine whose requests have all finished their prefill."""
    engine = LLMEngine.from_engine_args(
        model=str(folder),
        load_format="dummy",
        dtype="float32",
        max_num_seqs=num_requests,
        max_model_len=PROMPT_LEN + max_tokens + 16,
        kv_cache_memory_bytes=64 << 20,
    )
    generator = torch.Generator().manual_seed(0)
    for i in range(num_requests):
        prompt = torch.randint(3, VOCAB_SIZE, (PROMPT_LEN,), generator=generator).tolist()
        engine.add_request(f"r{i}", prompt, params)
    while engine.stats.num_generated_tokens < num_requests:
        engine.step()
    return engine


def profile_breakdown(profiler: cProfile.Profile, steps: int) -> dict[str, float]:
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    result: dict[str, float] = {}
    torch_seconds = 0.0
    for (filename, _, name), (_, _, own, cumulative, _) in stats.items():
        if name == "step" and filename.endswith("engine/llm_engine.py"):
            result["step"] = cumulative
        for label, suffix, function in COMPONENTS:
            if name == function and filename.endswith(suffix):
                result[label] = result.get(label, 0.0) + cumulative
        if filename == "~" and "torch" in name:
            torch_seconds += own
    result["torch ops"] = torch_seconds
    result["host"] = result["step"] - torch_seconds
    return {label: seconds * 1e3 / steps for label, seconds in result.items()}


def run_case(
    folder: Path, num_requests: int, steps: int, greedy: bool, detokenize: bool
) -> CaseResult:
    params = SamplingParams(
        temperature=0.0 if greedy else 1.0,
        max_tokens=2 * steps + 8,
        ignore_eos=True,
        detokenize=detokenize,
    )
    engine = start_decoding(folder, num_requests, params.max_tokens, params)
    for _ in range(3):
        engine.step()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    wall_ms = (time.perf_counter() - start) * 1e3 / steps
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        engine.step()
    profiler.disable()
    engine.close()
    label = f"{'greedy' if greedy else 'temp 1.0'}, detokenize={detokenize}"
    return CaseResult(label, wall_ms, profile_breakdown(profiler, steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_model_folder(folder)
        results = [
            run_case(folder, args.requests, args.steps, greedy, detokenize)
            for greedy in (True, False)
            for detokenize in (False, True)
        ]
    columns = ["step", "host", "torch ops"] + [label for label, _, _ in COMPONENTS]
    print(
        f"\n{args.requests} decoding requests, vocab {VOCAB_SIZE}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; ms per step (profiled columns under cProfile)"
    )
    print("| case | wall | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (len(columns) + 2))
    for result in results:
        cells = [f"{result.profile_ms.get(c, 0.0):.2f}" for c in columns]
        print(f"| {result.label} | {result.wall_ms:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
