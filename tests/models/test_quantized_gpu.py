"""Quantized weights on CUDA: each format's logits against transformers on its dequantized
weights, and SmolLM2 in FP8 (W8A8) against bfloat16."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from paged_runner import PagedRunner, run_chunked
from quantized_checkpoints import quantization_configs, save_quantized_model
from safetensors import safe_open
from tiny_models import random_prompts
from transformers import AutoTokenizer

from llmbatch import LLM, SamplingParams
from llmbatch.models import load_model

pytestmark = pytest.mark.gpu

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max
# 4-bit weights run as dequantized (W4A16); FP8 formats also quantize the activations (W8A8):
# per token, or with the checkpoint's one static scale per layer
FORMATS = [
    "awq-g128",
    "gptq-g64-act-order",
    "gptq-g128-sym",
    "ct-w4a16-zero-point",
    "ct-fp8-dynamic",
    "ct-fp8-static",
    "modelopt-fp8",
    "fbgemm-fp8",
]


def input_scales(folder) -> dict[str, torch.Tensor]:
    """The static activation scales a checkpoint gives, by linear layer."""
    scales = {}
    for path in Path(folder).glob("*.safetensors"):
        with safe_open(path, "pt") as tensors:
            for name in tensors.keys():
                if name.endswith(".input_scale"):
                    scales[name.removesuffix(".input_scale")] = tensors.get_tensor(name).float()
    return scales


def fp8_activations(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``x`` rounded to e4m3 with this scale (per token when None), plainly in torch."""
    x32 = x.float()
    if scale is None:
        scale = (x32.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    scale = scale.to(x.device)
    quantized = (x32 / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return (quantized.float() * scale).to(x.dtype)


def quantize_input(_module, args: tuple, scale: torch.Tensor | None) -> tuple:
    return (fp8_activations(args[0], scale), *args[1:])


def reference_logits(model, folder, format_name: str, dtype, prompts) -> list[torch.Tensor]:
    """transformers on the dequantized weights in ``dtype``; for FP8 formats each linear
    layer's input is first rounded to FP8 as the format says (W8A8)."""
    model = model.to(device="cuda", dtype=dtype)
    hooks = []
    if "fp8" in format_name:
        static = input_scales(folder)
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                hook = partial(quantize_input, scale=static.get(name))
                hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            return [model(torch.tensor([p], device="cuda")).logits[0].float() for p in prompts]
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("format_name", FORMATS)
def test_quantized_checkpoints_on_cuda(format_name, tmp_path):
    """Our bfloat16 logits are as close to the float32 reference (W8A8 emulated for FP8) as
    transformers' own bfloat16 run of it is (twice its error, or 3e-2 of the largest logit):
    tiny random models amplify rounding, so a fixed tolerance would judge the model."""
    reference_model = save_quantized_model(tmp_path, quantization_configs()["llama"], format_name)
    prompts = random_prompts([20, 27, 13], seed=1)
    exact = reference_logits(reference_model, tmp_path, format_name, torch.float32, prompts)
    rounded = reference_logits(reference_model, tmp_path, format_name, torch.bfloat16, prompts)
    loaded = load_model(str(tmp_path), device="cuda", dtype="bfloat16", attention_backend="triton")
    plans = [[7, 5] + [1] * 8, [1, 1, 12, 3] + [1] * 10, [13]]
    logits = run_chunked(PagedRunner(loaded.model, 64, 16, seed=2), prompts, plans)
    for ours, reference, theirs in zip(logits, exact, rounded):
        scale = reference.abs().max().item()
        bound = max(3e-2, 2 * (theirs - reference).abs().max().item() / scale)
        error = (ours - reference).abs().max().item() / scale
        assert error <= bound, f"logit error {error:.3g} of the largest beyond {bound:.3g}"
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
