"""Fused Triton ops (RMSNorm + residual, SiLU-and-mul, rotary, Gumbel-max sampling) against
references.

On the CPU they run under Triton's interpreter in a child process, as in test_triton_attention.py;
bfloat16 is checked on the GPU only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import torch
from interpreted import interpreted_results as run_interpreted
from interpreted import print_results

# (atol, rtol) for comparing against a float32 reference rounded to the op's dtype.
TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def mismatch(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Worst element error in units of the dtype's tolerance: <= 1 means close."""
    atol, rtol = TOLERANCE[actual.dtype]
    expected = expected.float()
    return ((actual.float() - expected).abs() / (atol + rtol * expected.abs())).max().item()


def random(shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(dtype).to(device)


def reference_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if residual is not None:
        x = x + residual
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype), x


def check_rms_norm(
    device: str, shape: tuple[int, ...], dtype: torch.dtype, with_residual: bool
) -> dict[str, float]:
    from llmbatch.layers.triton import rms_norm

    x = random(shape, dtype, device, seed=0)
    weight = (1 + 0.1 * random(shape[-1:], torch.float32, device, seed=1)).to(dtype)
    residual = random(shape, dtype, device, seed=2) if with_residual else None
    expected, expected_residual = reference_rms_norm(x, weight, 1e-6, residual)
    if residual is None:
        return {"normed": mismatch(rms_norm(x, weight, 1e-6), expected)}
    normed, new_residual = rms_norm(x, weight, 1e-6, residual=residual)
    residual_is_exact = torch.equal(new_residual, expected_residual)
    return {
        "normed": mismatch(normed, expected),
        "residual": 0.0 if residual_is_exact else float("inf"),
    }


def check_act_and_mul(
    device: str, shape: tuple[int, ...], dtype: torch.dtype, activation: str = "silu"
) -> dict:
    from llmbatch.layers.triton import act_and_mul

    x = random(shape, dtype, device, seed=3)
    gate, up = x.float().chunk(2, dim=-1)
    if activation == "silu":
        expected = torch.nn.functional.silu(gate) * up
    else:
        expected = torch.nn.functional.gelu(gate, approximate="tanh") * up
    return {"out": mismatch(act_and_mul(x, activation), expected)}


def check_gemma_rms_norm(device: str, shape: tuple[int, ...], dtype: torch.dtype) -> dict:
    """Gemma's order: a float32 scale applied before rounding to the model's dtype."""
    from llmbatch.layers.triton import rms_norm

    x = random(shape, dtype, device, seed=0)
    residual = random(shape, dtype, device, seed=2)
    weight = 1 + 0.3 * random(shape[-1:], torch.float32, device, seed=1)
    summed = (x + residual).float()
    expected = summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-6) * weight
    normed, _ = rms_norm(x, weight, 1e-6, residual=residual, round_before_weight=False)
    return {"normed": mismatch(normed, expected.to(dtype))}


def rotary_tables(max_position: int, rotary_dim: int, device: str) -> tuple[torch.Tensor, ...]:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    angles = torch.outer(torch.arange(max_position).float(), inv_freq)
    return angles.cos().to(device), angles.sin().to(device)


def reference_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotate-half formula of transformers' Llama, in float32, on the first rotary dims."""
    rotary_dim = 2 * cos.shape[-1]
    rotated, rest = x.float()[..., :rotary_dim], x.float()[..., rotary_dim:]
    first, second = rotated.chunk(2, dim=-1)
    cos, sin = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]
    rotated = rotated * cos + torch.cat([-second, first], -1) * sin
    return torch.cat([rotated, rest], -1)


def check_rotary(
    device: str,
    num_tokens: int,
    heads: tuple[int, int],
    head_dim: int,
    rotary_dim: int,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Rotates q and k that are views into one fused QKV output, as the model produces them."""
    from llmbatch.layers.triton import apply_rotary

    num_heads, num_kv_heads = heads
    qkv = random((num_tokens, (num_heads + 2 * num_kv_heads) * head_dim), dtype, device, seed=4)
    original = qkv.clone()
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    q = qkv[:, :q_size].view(num_tokens, num_heads, head_dim)
    k = qkv[:, q_size : q_size + kv_size].view(num_tokens, num_kv_heads, head_dim)
    max_position = 4 * num_tokens
    cos_table, sin_table = rotary_tables(max_position, rotary_dim, device)
    gen = torch.Generator().manual_seed(5)
    positions = torch.randint(0, max_position, (num_tokens,), generator=gen).to(device)
    expected_q = reference_rotary(q.clone(), cos_table[positions], sin_table[positions])
    expected_k = reference_rotary(k.clone(), cos_table[positions], sin_table[positions])
    apply_rotary(q, k, cos_table, sin_table, positions)
    value_untouched = torch.equal(qkv[:, q_size + kv_size :], original[:, q_size + kv_size :])
    return {
        "q": mismatch(q, expected_q),
        "k": mismatch(k, expected_k),
        "v": 0.0 if value_untouched else float("inf"),
    }


def check_gumbel_argmax(device: str, rows: int, vocab_size: int, dtype: torch.dtype) -> dict:
    """The kernel's draws against its PyTorch twin: each draw must be a maximizer of the twin's
    noisy scores (up to float rounding of the logarithms), never a masked token, and nearly
    always the twin's own draw."""
    from llmbatch.layers.gumbel import gumbel_scores
    from llmbatch.layers.triton import gumbel_argmax

    gen = torch.Generator().manual_seed(6)
    logits = (3 * torch.randn(rows, vocab_size, generator=gen)).to(dtype)
    logits[:, :: max(vocab_size // 7, 1)] = float("-inf")  # masked tokens (stop tokens, top-k)
    inv_temperature = torch.rand(rows, generator=gen) + 0.5
    keys = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=gen, dtype=torch.int64)
    logits, inv_temperature, keys = logits.to(device), inv_temperature.to(device), keys.to(device)
    tokens = gumbel_argmax(logits, inv_temperature, keys)
    scores = gumbel_scores(logits, inv_temperature, keys)
    gap = (scores.max(dim=1).values - scores.gather(1, tokens[:, None]).squeeze(1)).max().item()
    same = (tokens == scores.argmax(dim=1)).float().mean().item()
    masked = torch.isinf(logits.gather(1, tokens[:, None])).any().item()
    return {
        "score_gap": gap / 1e-4,
        "different_tokens": (1 - same) / 0.05,
        "masked_token_drawn": float("inf") if masked else 0.0,
    }


def check_gumbel_distribution(device: str, vocab_size: int, draws: int = 40_000) -> dict:
    """Frequencies of the kernel's draws (one key per row) against softmax(logits / T): four
    likely tokens and a long tail that holds the rest of the mass."""
    from llmbatch.layers.triton import gumbel_argmax

    probs = torch.full((vocab_size,), 0.05 / (vocab_size - 4), dtype=torch.float64)
    probs[:4] = torch.tensor([0.4, 0.3, 0.2, 0.05], dtype=torch.float64)
    temperature = 0.7
    # every row reads the same logits (a stride-0 batch: 40k rows without 20 GB of copies)
    logits = (probs.log() * temperature).float().to(device).expand(draws, -1)
    inv_temperature = torch.full((draws,), 1 / temperature, device=device)
    keys = torch.arange(draws, dtype=torch.int64, device=device) * 0x9E3779B97F4A7C1
    tokens = gumbel_argmax(logits, inv_temperature, keys).cpu()
    freq = torch.bincount(tokens.clamp(max=4), minlength=5).double() / draws
    expected = torch.cat([probs[:4], probs[4:].sum()[None]])
    return {"frequency_error": (freq - expected).abs().max().item() / 0.012}


def random_bitmask(rows: int, words: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**31), 2**31 - 1, (rows, words), generator=gen, dtype=torch.int32)


def reference_masked(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> torch.Tensor:
    """Token t of row rows[i] is kept when bit t % 32 of word t // 32 is set, per element."""
    expected = logits.clone()
    for i, row in enumerate(rows):
        for token in range(logits.shape[1]):
            word = token // 32
            allowed = word < bitmask.shape[1] and (int(bitmask[i, word]) >> (token % 32)) & 1
            if not allowed:
                expected[row, token] = float("-inf")
    return expected


def check_token_bitmask(device: str, vocab_size: int, words: int, kernel: bool) -> dict:
    """The bitmask applied to some rows of a logits batch (a mask of ``words`` words: fewer than
    the vocabulary needs disallows the tokens past it) against the per-element rule."""
    from llmbatch.layers.bitmask import apply_token_bitmask_
    from llmbatch.layers.triton import apply_token_bitmask_ as kernel_apply

    logits = random((7, vocab_size), torch.float32, "cpu", seed=3)
    rows = [5, 0, 3]
    bitmask = random_bitmask(len(rows), words, seed=4)
    expected = reference_masked(logits, rows, bitmask)
    actual = logits.to(device)
    apply = kernel_apply if kernel else apply_token_bitmask_
    apply(actual, torch.tensor(rows, dtype=torch.int32, device=device), bitmask.to(device))
    wrong = (actual.cpu() != expected).sum().item()
    return {"wrong_elements": float(wrong)}


INTERPRETED_CHECKS: dict[str, Callable[[str], dict[str, float]]] = {
    "rms_norm_fp32": lambda d: check_rms_norm(d, (2, 3, 96), torch.float32, with_residual=False),
    "rms_norm_residual_fp32": lambda d: check_rms_norm(d, (5, 64), torch.float32, True),
    "rms_norm_residual_fp16": lambda d: check_rms_norm(d, (4, 200), torch.float16, True),
    "gemma_rms_norm_fp16": lambda d: check_gemma_rms_norm(d, (4, 200), torch.float16),
    "silu_and_mul_fp32": lambda d: check_act_and_mul(d, (3, 2 * 1100), torch.float32),
    "silu_and_mul_fp16": lambda d: check_act_and_mul(d, (2, 3, 2 * 40), torch.float16),
    "gelu_tanh_and_mul_fp32": lambda d: check_act_and_mul(
        d, (3, 2 * 300), torch.float32, "gelu_pytorch_tanh"
    ),
    "rotary_gqa_fp32": lambda d: check_rotary(d, 6, (6, 2), 64, 64, torch.float32),
    "rotary_partial_fp16": lambda d: check_rotary(d, 5, (4, 4), 64, 32, torch.float16),
    "gumbel_argmax_split_vocab": lambda d: check_gumbel_argmax(d, 3, 3000, torch.float32),
    "gumbel_argmax_many_rows": lambda d: check_gumbel_argmax(d, 40, 1100, torch.float32),
    "token_bitmask": lambda d: check_token_bitmask(d, 2100, 66, kernel=True),
    "token_bitmask_short_mask": lambda d: check_token_bitmask(d, 2100, 60, kernel=True),
}


@pytest.fixture(scope="module")
def interpreted_results() -> dict[str, dict]:
    return run_interpreted(__file__)


@pytest.mark.parametrize("name", list(INTERPRETED_CHECKS))
def test_interpreted_ops_match_reference(interpreted_results: dict, name: str) -> None:
    result = interpreted_results[name]
    assert "failure" not in result, result.get("failure")
    assert max(result.values()) <= 1.0, result


@pytest.mark.parametrize("words", [66, 60], ids=["whole", "short"])
def test_the_cpu_bitmask_path_matches_the_rule(words: int) -> None:
    assert check_token_bitmask("cpu", 2100, words, kernel=False)["wrong_elements"] == 0


def test_bad_shapes_are_rejected_with_a_clear_error() -> None:
    from llmbatch.layers.triton import act_and_mul, apply_rotary, gumbel_argmax, rms_norm

    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm(x, torch.ones(32), 1e-6)
    with pytest.raises(ValueError, match="residual must match"):
        rms_norm(x, torch.ones(64), 1e-6, residual=torch.randn(4, 32))
    with pytest.raises(ValueError, match="gate and up"):
        act_and_mul(torch.randn(4, 63))
    with pytest.raises(ValueError, match="activation must be one of"):
        act_and_mul(torch.randn(4, 64), "relu")
    q, k = torch.randn(4, 2, 64), torch.randn(4, 1, 64)
    cos, sin = rotary_tables(16, 64, "cpu")
    with pytest.raises(ValueError, match="rotary_dim <= head_dim"):
        apply_rotary(q, k, *rotary_tables(16, 128, "cpu"), torch.arange(4))
    with pytest.raises(ValueError, match="positions must be integers"):
        apply_rotary(q, k, cos, sin, torch.arange(4).float())
    with pytest.raises(ValueError, match="q must be"):
        apply_rotary(q, k[:3], cos, sin, torch.arange(4))
    logits = torch.randn(3, 10)
    with pytest.raises(ValueError, match="one entry per row"):
        gumbel_argmax(logits, torch.ones(2), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="keys must be int64"):
        gumbel_argmax(logits, torch.ones(3), torch.zeros(3, dtype=torch.int32))


GPU_CHECKS: dict[str, Callable[[str], dict[str, float]]] = {
    "rms_norm_residual_llama8b": lambda d: check_rms_norm(d, (1000, 4096), torch.bfloat16, True),
    "rms_norm_qwen": lambda d: check_rms_norm(d, (333, 896), torch.bfloat16, False),
    "silu_and_mul_llama8b": lambda d: check_act_and_mul(d, (512, 2 * 14336), torch.bfloat16),
    "gelu_tanh_and_mul_gemma2_9b": lambda d: check_act_and_mul(
        d, (512, 2 * 14336), torch.bfloat16, "gelu_pytorch_tanh"
    ),
    "gemma_rms_norm_gemma2_9b": lambda d: check_gemma_rms_norm(d, (700, 3584), torch.bfloat16),
    "rotary_llama8b": lambda d: check_rotary(d, 1000, (32, 8), 128, 128, torch.bfloat16),
    "rotary_qwen_14_2": lambda d: check_rotary(d, 777, (14, 2), 64, 64, torch.bfloat16),
    "gumbel_argmax_llama_vocab": lambda d: check_gumbel_argmax(d, 512, 128256, torch.float32),
    "gumbel_argmax_few_rows_bf16": lambda d: check_gumbel_argmax(d, 4, 151936, torch.bfloat16),
    "gumbel_distribution_llama_vocab": lambda d: check_gumbel_distribution(d, 128256),
    "token_bitmask_llama_vocab": lambda d: check_token_bitmask(d, 128256, 4008, kernel=True),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(GPU_CHECKS))
def test_gpu_ops_match_reference(name: str) -> None:
    result = GPU_CHECKS[name]("cuda")
    assert max(result.values()) <= 1.0, result


if __name__ == "__main__":
    print_results({name: partial(check, "cpu") for name, check in INTERPRETED_CHECKS.items()})
