"""Quantized weights on CUDA: each format's logits against transformers on its dequantized
weights, and SmolLM2 in FP8 (W8A8) against bfloat16."""

from __future__ import annotations

import pytest
import torch
from paged_runner import PagedRunner, assert_logits_close, run_chunked
from quantized_checkpoints import quantization_configs, save_quantized_model
from tiny_models import random_prompts
from transformers import AutoTokenizer

from llmbatch import LLM, SamplingParams
from llmbatch.models import load_model

pytestmark = pytest.mark.gpu

# (format, relative logit tolerance): 4-bit weights run exactly as dequantized (W4A16, only
# bfloat16 rounding); FP8 also quantizes the activations (W8A8), which moves logits further
FORMATS = [
    ("awq-g128", 3e-2),
    ("gptq-g64-act-order", 3e-2),
    ("gptq-g128-sym", 3e-2),
    ("ct-w4a16-zero-point", 3e-2),
    ("ct-fp8-dynamic", 0.15),
    ("ct-fp8-static", 0.15),
    ("modelopt-fp8", 0.15),
    ("fbgemm-fp8", 0.15),
]


@pytest.mark.parametrize(("format_name", "rel"), FORMATS)
def test_quantized_checkpoints_on_cuda(format_name, rel, tmp_path):
    reference_model = save_quantized_model(tmp_path, quantization_configs()["llama"], format_name)
    prompts = random_prompts([20, 27, 13], seed=1)
    with torch.inference_mode():
        hf = reference_model.to(device="cuda", dtype=torch.bfloat16)
        expected = [hf(torch.tensor([p], device="cuda")).logits[0].float() for p in prompts]
    loaded = load_model(str(tmp_path), device="cuda", dtype="bfloat16", attention_backend="triton")
    plans = [[7, 5] + [1] * 8, [1, 1, 12, 3] + [1] * 10, [13]]
    logits = run_chunked(PagedRunner(loaded.model, 64, 16, seed=2), prompts, plans)
    for ours, reference in zip(logits, expected):
        assert_logits_close(ours, reference, rel)
        assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.8


def teacher_forced_top1(llm: LLM, sequences: list[list[int]], start: list[int]) -> tuple:
    """For each sequence, the model's most likely token and the log-probability it gives the
    sequence's own token, at every position from ``start`` on."""
    params = SamplingParams(max_tokens=1, prompt_logprobs=1, detokenize=False)
    top, own = [], []
    for output, sequence, first in zip(llm.generate(sequences, params), sequences, start):
        entries = output.prompt_logprobs[first:]
        top.append([min(e.items(), key=lambda kv: kv[1].rank)[0] for e in entries])
        own.append([e[t].logprob for e, t in zip(entries, sequence[first:])])
    return top, own


def test_smollm2_fp8_agrees_with_bfloat16(smollm2_dir):
    """64 chat prompts, 32 greedy tokens in bfloat16; the FP8 model (weights quantized at load,
    activations per token, W8A8) fed the same tokens predicts the same next token at >= 95% of
    the positions. The log-probability differences are reported."""
    from llmbatch._fixtures.customers import generate_customers

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    dates = next(generate_customers(64, seed=0)).column("Subscription Date").to_pylist()[:64]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Convert this date: {date} to the format MM-DD-YYYY"}],
            add_generation_prompt=True,
        )
        for date in dates
    ]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    kwargs = dict(dtype="bfloat16", kv_cache_memory_bytes=1 << 30, enable_prefix_caching=False)
    greedy = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True, logprobs=0)
    with LLM(smollm2_dir, **kwargs) as llm:
        outputs = llm.generate(prompts, greedy)
    completions = [output.outputs[0].token_ids for output in outputs]
    bf16_logprobs = [
        [entry[token].logprob for entry, token in zip(output.outputs[0].logprobs, tokens)]
        for output, tokens in zip(outputs, completions)
    ]
    sequences = [p + c for p, c in zip(prompts, completions)]
    with LLM(smollm2_dir, quantization="fp8", **kwargs) as llm:
        top, fp8_logprobs = teacher_forced_top1(llm, sequences, [len(p) for p in prompts])
    agree = sum(t == c for tops, comp in zip(top, completions) for t, c in zip(tops, comp))
    agreement = agree / (64 * 32)
    differences = torch.tensor(
        [a - b for x, y in zip(fp8_logprobs, bf16_logprobs) for a, b in zip(x, y)]
    ).abs()
    report = (
        f"FP8 vs bfloat16 on SmolLM2-135M: next-token agreement {agreement:.1%} of 64 x 32; "
        f"|logprob difference| mean {differences.mean():.4f}, median "
        f"{differences.median():.4f}, p99 {differences.quantile(0.99):.4f}, "
        f"max {differences.max():.4f}"
    )
    print(report)
    assert agreement >= 0.95, report
