"""The engine against transformers generate() on this CPU, in the same run.

SmolLM2-135M-Instruct in float32; 256 chat requests (short, varied user questions under one
system prompt), 32 new tokens each (EOS ignored). llmbatch runs them as one continuous batch;
transformers runs generate() over batches of 32 with left padding. Prints a table last and
appends it to bench/RESULTS.md. Both run the whole workload in alternating rounds; the table
gives each one's median round.

    .venv/bin/python bench/cpu_engine.py [--requests 256] [--max-tokens 32] [--hf-batch 32]
                                         [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from report import commit, record

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and clearly."
SUBJECTS = [
    "a cat",
    "the moon",
    "a bicycle",
    "coffee",
    "a volcano",
    "the ocean",
    "a library",
    "a violin",
    "rain",
    "a robot",
    "bread",
    "a train",
    "winter",
    "a garden",
    "chess",
    "a bridge",
]
QUESTIONS = [
    "What is {}?",
    "Describe {} in one sentence.",
    "Why do people like {}?",
    "Write a short poem about {}.",
    "Give me a fun fact about {}.",
    "How would you explain {} to a child?",
    "What colour is {} usually?",
    "Is {} expensive?",
    "Where can I find {}?",
    "Tell me a joke about {}.",
    "What sound does {} make?",
    "How old can {} get?",
    "Who invented {}?",
    "Can {} be dangerous?",
    "What is the opposite of {}?",
    "Draw {} with words.",
]


def conversations(count: int) -> list[list[dict[str, str]]]:
    pairs = itertools.islice(itertools.cycle(itertools.product(QUESTIONS, SUBJECTS)), count)
    return [
        [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question.format(subject)},
        ]
        for question, subject in pairs
    ]


class LlmbatchRunner:
    """A fresh engine per round, so no round finds the prompts of an earlier one in its prefix
    cache; only generate() is timed."""

    def __init__(self, model_dir: str, max_tokens: int) -> None:
        from llmbatch import SamplingParams

        self.model_dir = model_dir
        self.params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        self.startup = 0.0

    def __call__(self, prompts: list[list[int]]) -> tuple[float, int]:
        from llmbatch import LLM

        started = time.perf_counter()
        with LLM(self.model_dir, dtype="float32") as llm:
            self.startup = time.perf_counter() - started
            started = time.perf_counter()
            outputs = llm.generate(prompts, self.params)
            seconds = time.perf_counter() - started
        return seconds, sum(len(o.token_ids) for o in outputs)


class TransformersRunner:
    def __init__(self, model_dir: str, max_tokens: int, batch_size: int, pad_id: int) -> None:
        from transformers import AutoModelForCausalLM

        started = time.perf_counter()
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.startup = time.perf_counter() - started
        self.max_tokens, self.batch_size, self.pad_id = max_tokens, batch_size, pad_id

    def __call__(self, prompts: list[list[int]]) -> tuple[float, int]:
        started = time.perf_counter()
        tokens = sum(
            self._generate(prompts[i : i + self.batch_size])
            for i in range(0, len(prompts), self.batch_size)
        )
        return time.perf_counter() - started, tokens

    def _generate(self, batch: list[list[int]]) -> int:
        width = max(len(p) for p in batch)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids,
                attention_mask=mask,
                max_new_tokens=self.max_tokens,
                min_new_tokens=self.max_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
            )
        return (out.shape[1] - width) * len(batch)


def machine() -> str:
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()}-core CPU ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hf-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from llmbatch._fixtures.smollm2 import smollm2_dir

    model_dir = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [
        tokenizer.encode(
            tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )
        for c in conversations(args.requests)
    ]
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    runners = {
        "llmbatch": LlmbatchRunner(model_dir, args.max_tokens),
        f"transformers generate() batch {args.hf_batch}": TransformersRunner(
            model_dir, args.max_tokens, args.hf_batch, tokenizer.pad_token_id or 0
        ),
    }
    for run in runners.values():
        run(prompts[:4])  # warm-up
    # Alternating rounds, medians: the load of a shared machine drifts over minutes.
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, run in runners.items():
            elapsed, tokens[name] = run(prompts)
            seconds[name].append(elapsed)

    rows = []
    for name, run in runners.items():
        median = statistics.median(seconds[name])
        rows.append((name, run.startup, args.requests / median, tokens[name] / median, median))
    speedup = rows[0][2] / rows[1][2]
    header = "| engine | start-up s | rows/s | output tok/s | median generation s | speedup |"
    lines = [header, "| --- | --- | --- | --- | --- | --- |"]
    for i, (name, startup, rps, tps, median) in enumerate(rows):
        ratio = f"{speedup:.2f}x" if i == 0 else "1.00x"
        lines.append(f"| {name} | {startup:.1f} | {rps:.2f} | {tps:.1f} | {median:.1f} | {ratio} |")
    table = "\n".join(lines)
    rounds = "; ".join(
        f"{name}: " + ", ".join(f"{s:.1f}" for s in values) for name, values in seconds.items()
    )

    command = "python bench/cpu_engine.py " + " ".join(sys.argv[1:])
    entry = (
        f"\n## cpu_engine: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}\n\n"
        f"- machine: {machine()}\n- commit: {commit()}\n- command: `{command.strip()}`\n"
        f"- workload: {args.requests} chat requests (mean {mean_prompt:.0f} prompt tokens, one "
        f"system prompt), {args.max_tokens} new tokens each, EOS ignored, SmolLM2-135M float32\n"
        f"- generation seconds per round: {rounds}\n\n"
        f"{table}\n"
    )
    record(entry)
    print(
        f"\nSmolLM2-135M float32, {args.requests} requests x {args.max_tokens} tokens "
        f"(mean prompt {mean_prompt:.0f} tokens); target: llmbatch >= 1.5x\n"
    )
    print(table)


if __name__ == "__main__":
    main()
