"""Embeddings: llmbatch's engine against transformers with length-sorted batches, on the same
random weights in the Qwen3-Embedding-0.6B shape, same card, same run.

    PYTHONPATH=src python bench/embeddings_gpu.py                     # 100k documents
    PYTHONPATH=src python bench/embeddings_gpu.py --docs 20000 --baseline-docs 5000

Documents are random token ids of lognormal lengths (mean ~300, 16 to 1,024). llmbatch embeds
them all (`LLM.embed`, last-token pooling, normalised); transformers (``AutoModel``, sdpa,
bfloat16) embeds a prefix of them, sorted by length and cut into batches of at most
--batch-tokens padded tokens, pooling each row's last real token: the usual hand-written
baseline. Rates are prompt tokens per second of each. The first 256 documents' embeddings of the
two are compared (cosine similarity). Prints a table last and appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from report import commit, record

QWEN3_EMBEDDING_0_6B = dict(
    architectures=["Qwen3ForCausalLM"],
    model_type="qwen3",
    hidden_size=1024,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=3072,
    vocab_size=151669,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
_ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {
        "idx": 2,
        "name": "2",
        "path": "2_Normalize",
        "type": "sentence_transformers.models.Normalize",
    },
]


def documents(count: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    sigma = 0.6
    lengths = np.clip(rng.lognormal(np.log(300) - sigma**2 / 2, sigma, count), 16, 1024)
    vocab = QWEN3_EMBEDDING_0_6B["vocab_size"]
    return [rng.integers(1000, vocab, size=int(n)).tolist() for n in lengths]


def save_model(folder: Path) -> None:
    """Random bfloat16 weights of the shape as a base-model checkpoint with sentence-transformers
    files, as Qwen3-Embedding ships."""
    from transformers import AutoModel, Qwen3Config

    config = Qwen3Config(**QWEN3_EMBEDDING_0_6B)
    torch.manual_seed(0)
    model = AutoModel.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    saved["architectures"] = QWEN3_EMBEDDING_0_6B["architectures"]
    (folder / "config.json").write_text(json.dumps(saved))
    (folder / "modules.json").write_text(json.dumps(_ST_MODULES))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))


def run_llmbatch(
    folder: Path, docs: list[list[int]], args: argparse.Namespace
) -> tuple[float, list]:
    from llmbatch import LLM
    from llmbatch._fixtures.smollm2 import smollm2_dir

    llm = LLM(
        str(folder),
        tokenizer=smollm2_dir(),  # the documents are token ids: any tokenizer loads the model
        dtype="bfloat16",
        max_model_len=1024,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    llm.embed(docs[:256])  # warm-up: kernels compiled, graphs captured
    torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = llm.embed(docs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    llm.close()
    return seconds, [torch.tensor(o.outputs.embedding) for o in outputs[:256]]


def run_transformers(folder: Path, docs: list[list[int]], batch_tokens: int) -> tuple[float, list]:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa")
    model = model.to("cuda").eval()
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
    embeddings: dict[int, torch.Tensor] = {}

    def embed(batch: list[int]) -> None:
        width = max(len(docs[i]) for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(docs[i])] = torch.tensor(docs[i])
            mask[row, : len(docs[i])] = 1
        ids, mask = ids.to("cuda"), mask.to("cuda")
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = mask.sum(dim=1) - 1
        pooled = F.normalize(hidden[torch.arange(len(batch), device="cuda"), last].float(), dim=-1)
        for row, i in enumerate(batch):
            if i < 256:
                embeddings[i] = pooled[row].cpu()

    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * len(docs[i]) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    with torch.inference_mode():
        embed(batches[0])  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in batches:
            embed(batch)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, [embeddings[i] for i in sorted(embeddings)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--baseline-docs", type=int, default=20_000)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--max-num-batched-tokens", type=int, default=16384)
    args = parser.parse_args()
    docs = documents(args.docs)
    baseline_docs = docs[: args.baseline_docs]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_model(folder)
        ours_s, ours_head = run_llmbatch(folder, docs, args)
        torch.cuda.empty_cache()
        theirs_s, theirs_head = run_transformers(folder, baseline_docs, args.batch_tokens)
    cosine = [F.cosine_similarity(a, b, dim=0).item() for a, b in zip(ours_head, theirs_head)]
    ours_rate = sum(map(len, docs)) / ours_s
    theirs_rate = sum(map(len, baseline_docs)) / theirs_s
    report(args, ours_s, ours_rate, theirs_s, theirs_rate, cosine)


def report(args, ours_s, ours_rate, theirs_s, theirs_rate, cosine) -> None:
    lines = [
        f"## embeddings_gpu: {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- device: {torch.cuda.get_device_name()}",
        f"- commit: {commit()}",
        f"- command: `python bench/embeddings_gpu.py {' '.join(sys.argv[1:])}`",
        f"- workload: {args.docs} documents (llmbatch), the first {args.baseline_docs} "
        "(transformers), lognormal lengths mean ~300 tokens; Qwen3-Embedding-0.6B shape, random "
        f"bf16 weights; transformers batches of <= {args.batch_tokens} padded tokens, sorted by "
        "length",
        f"- agreement: cosine similarity of the first 256 embeddings: min {min(cosine):.4f}, "
        f"median {statistics.median(cosine):.4f}",
        "",
        "| engine | seconds | prompt tok/s | speedup |",
        "| --- | --- | --- | --- |",
        f"| llmbatch LLM.embed | {ours_s:.1f} | {ours_rate:,.0f} | {ours_rate / theirs_rate:.2f}x |",
        f"| transformers, length-sorted batches | {theirs_s:.1f} | {theirs_rate:,.0f} | 1.00x |",
        "",
        "Target: >= 3x transformers' tokens/s.",
        "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    record(text)


if __name__ == "__main__":
    main()
