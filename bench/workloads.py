"""The benchmark workloads of BENCHMARKS.md, as token-id prompts with fixed output lengths.

Every workload is drawn from a fixed seed, so each run (and each engine in a run) sees the same requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class Workload:
    name: str
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)

    def head(self, n: int) -> Workload:
        return Workload(self.name, self.prompts[:n], self.output_lens[:n])


def _random_prompts(rng: np.random.Generator, lens: np.ndarray, vocab: int) -> list[list[int]]:
    # Stay clear of the low ids, where tokenizers keep their special tokens.
    return [rng.integers(1000, vocab, size=int(n)).tolist() for n in lens]


def seed_workload(tokenizer, num_rows: int = 10_000, max_tokens: int = 32) -> Workload:
    """The seed tutorial's chat messages for rows of the generated customers table."""
    from llmbatch._fixtures.customers import generate_customers

    dates: list[str] = []
    for table in generate_customers(num_rows, seed=0):
        dates.extend(table.column("Subscription Date").to_pylist())
    prompts = []
    for date in dates[:num_rows]:
        messages = [
            {"role": "system", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "content": f"Convert this date:\n{date}\n\n as the format:MM-DD-YYYY",
            },
        ]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        prompts.append(list(ids))
    return Workload("seed", prompts, [max_tokens] * len(prompts))


def sharegpt_like(
    vocab: int, num_requests: int = 1000, seed: int = 0, vllm_filter: bool = False
) -> Workload:
    """Lognormal input and output lengths with the means of the ShareGPT set (~215 in, ~198 out).

    ``vllm_filter`` keeps only pairs that vLLM's throughput benchmark keeps from the real set
    (prompt <= 1,024 tokens, prompt + output <= 2,048), drawing until there are enough."""
    rng = np.random.default_rng(seed)
    sigma = 1.0

    def draw(n: int, mean: float) -> np.ndarray:
        return np.clip(rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, n), 4, 2048).astype(int)

    if not vllm_filter:
        in_lens, out_lens = draw(num_requests, 215), draw(num_requests, 198)
        name = "sharegpt"
    else:
        kept: list[tuple[int, int]] = []
        while len(kept) < num_requests:
            pairs = zip(draw(num_requests, 215), draw(num_requests, 198))
            kept += [(i, o) for i, o in pairs if i <= 1024 and i + o <= 2048]
        in_lens = np.array([i for i, _ in kept[:num_requests]])
        out_lens = np.array([o for _, o in kept[:num_requests]])
        name = "sharegpt-filtered"
    return Workload(name, _random_prompts(rng, in_lens, vocab), out_lens.tolist())


def fixed(name: str, vocab: int, num_requests: int, input_len: int, output_len: int) -> Workload:
    rng = np.random.default_rng(1)
    lens = np.full(num_requests, input_len)
    return Workload(name, _random_prompts(rng, lens, vocab), [output_len] * num_requests)


def build(name: str, vocab: int, tokenizer=None) -> Workload:
    if name == "seed":
        return seed_workload(tokenizer)
    if name == "sharegpt":
        return sharegpt_like(vocab)
    if name == "sharegpt-filtered":
        return sharegpt_like(vocab, vllm_filter=True)
    if name == "decode":
        return fixed("decode", vocab, 1000, 1000, 1000)
    if name == "short":
        return fixed("short", vocab, 4096, 128, 128)
    raise ValueError(
        f"unknown workload {name!r}; choose seed, sharegpt, sharegpt-filtered, decode or short"
    )
