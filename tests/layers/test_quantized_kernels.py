"""The kernels of quantized weights against plain references: the W4A16 GEMM (4-bit weights
dequantised in the tile), FP8 activations quantised per token, the FP8 W8A8 matmul and the
mixture-of-experts GEMM with FP8 experts.

On the CPU the Triton kernels run under Triton's interpreter in a child process, as in
test_triton_attention.py, on small shapes; on a GPU on decode and prefill shapes of
Llama-3.1-8B and -70B.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import pytest
import torch
from interpreted import interpreted_results as run_interpreted
from interpreted import print_results

from llmbatch.layers.moe import experts_reference, route
from llmbatch.layers.quantization import fp8, int4


@dataclass(frozen=True)
class Int4Case:
    name: str
    m: int
    k: int
    n: int
    group_size: int
    act_order: bool = False  # rows of any group, sorted (a row-parallel shard of act order)
    dtype: torch.dtype = torch.float32
    seed: int = 0


def int4_inputs(case: Int4Case, device: str) -> tuple:
    gen = torch.Generator().manual_seed(case.seed)
    groups = case.k // case.group_size
    x = torch.randn(case.m, case.k, generator=gen)
    values = torch.randint(0, 16, (case.k, case.n), generator=gen).to(torch.uint8)
    scales = (torch.rand(groups, case.n, generator=gen) * 0.02 + 0.001).half()
    zeros = torch.randint(0, 16, (groups, case.n), generator=gen).half()
    group_index = None
    if case.act_order:
        group_index = torch.randint(0, groups, (case.k,), generator=gen).sort().values.int()
        group_index = group_index.to(device)
    packed = int4.pack_int4_rows(values)
    tensors = (x.to(case.dtype), packed, scales, zeros)
    return (*(t.to(device) for t in tensors), group_index)


def run_int4_case(case: Int4Case, device: str) -> dict[str, float]:
    """The kernel's error against float32 ``x @ dequantize(W)``, relative to the largest
    output."""
    from llmbatch.layers.triton import w4a16_matmul

    x, qweight, scales, zeros, group_index = int4_inputs(case, device)
    weight = int4.dequantize_int4(
        qweight, scales, zeros, case.group_size, group_index, torch.float32
    )
    expected = x.float() @ weight
    out = w4a16_matmul(x, qweight, scales, zeros, case.group_size, group_index)
    return {
        "relative_error": ((out.float() - expected).abs().max() / expected.abs().max()).item(),
        "dtype_kept": float(out.dtype == x.dtype and out.shape == expected.shape),
    }


def run_per_token_case(m: int, k: int, scale_ub: float | None, device: str) -> dict[str, float]:
    """Rows of e4m3 values times powers of two (each row's largest exactly 448), so that the
    kernel's scales and values must equal the reference's with no rounding involved."""
    from llmbatch.layers.triton import quantize_fp8_per_token

    gen = torch.Generator().manual_seed(m * k)
    codes = (torch.randn(m, k, generator=gen) * 100).clamp(-448, 448).to(fp8.FP8).float()
    codes[:, 0] = 448.0
    x = (codes * 2.0 ** torch.randint(-8, 4, (m, 1), generator=gen)).to(device)
    if m > 2:
        x[1] = 0.0  # an all-zero row keeps a finite scale
    q, scales = quantize_fp8_per_token(x, scale_ub)
    expected_q, expected_scales = fp8.quantize_per_token(x.cpu(), scale_ub)
    return {
        "scales_equal": float(torch.equal(scales.cpu(), expected_scales)),
        "values_equal": float(torch.equal(q.cpu().float(), expected_q.float())),
    }


@dataclass(frozen=True)
class Fp8ExpertsCase:
    name: str
    num_tokens: int
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    dtype: torch.dtype = torch.float32
    seed: int = 0


def run_fp8_experts_case(case: Fp8ExpertsCase, device: str) -> dict[str, float]:
    """The grouped GEMM on e4m3 experts with row scales against the per-expert reference on the
    dequantised weights."""
    from llmbatch.layers.triton import fused_experts

    gen = torch.Generator().manual_seed(case.seed)
    e, h, i = case.num_experts, case.hidden_size, case.intermediate_size
    hidden = torch.randn(case.num_tokens, h, generator=gen)
    w13, w13_scale = fp8.quantize_weight(torch.randn(e * 2 * i, h, generator=gen) / h**0.5)
    w2, w2_scale = fp8.quantize_weight(torch.randn(e * h, i, generator=gen) / i**0.5)
    w13, w2 = w13.view(e, 2 * i, h), w2.view(e, h, i)
    w13_scale, w2_scale = w13_scale.view(e, 2 * i), w2_scale.view(e, h)
    weights, ids = route(torch.randn(case.num_tokens, e, generator=gen), case.top_k, True)
    expected = experts_reference(
        hidden,
        fp8.dequantize_weight(w13, w13_scale, torch.float32),
        fp8.dequantize_weight(w2, w2_scale, torch.float32),
        weights,
        ids,
    )
    tensors = (hidden.to(case.dtype), w13, w2, weights, ids, w13_scale, w2_scale)
    hidden, w13, w2, weights, ids, w13_scale, w2_scale = (t.to(device) for t in tensors)
    out = fused_experts(hidden, w13, w2, weights, ids, w13_scale=w13_scale, w2_scale=w2_scale)
    error = (out.float().cpu() - expected).abs().max() / expected.abs().max()
    return {"relative_error": error.item(), "dtype_kept": float(out.dtype == case.dtype)}


INT4_INTERPRETED = [
    Int4Case("one_row_g32", 1, 64, 32, 32),
    Int4Case("rows_g128_split_k", 19, 256, 96, 128),
    Int4Case("rows_g16_tile_spans_groups", 5, 128, 40, 16),
    Int4Case("act_order_group_index", 3, 128, 64, 32, act_order=True),
]
PER_TOKEN_INTERPRETED = [(1, 64, None), (6, 200, None), (4, 96, 100.0)]
FP8_EXPERTS_INTERPRETED = [
    Fp8ExpertsCase("one_token_top2_of_4", 1, 4, 2, 32, 48),
    Fp8ExpertsCase("tokens_top2_of_8", 29, 8, 2, 64, 32),
]


@pytest.fixture(scope="module")
def interpreted_results() -> dict[str, dict]:
    return run_interpreted(__file__)


@pytest.mark.parametrize("case", INT4_INTERPRETED, ids=lambda c: c.name)
def test_interpreted_w4a16_matches_dequantized_reference(interpreted_results, case):
    result = interpreted_results[case.name]
    assert "failure" not in result, result.get("failure")
    assert result["dtype_kept"] == 1.0
    assert result["relative_error"] <= 1e-5, result


@pytest.mark.parametrize("case", PER_TOKEN_INTERPRETED, ids=str)
def test_interpreted_per_token_quantization_matches_reference(interpreted_results, case):
    result = interpreted_results[f"per_token_{case}"]
    assert "failure" not in result, result.get("failure")
    assert result == {"scales_equal": 1.0, "values_equal": 1.0}


@pytest.mark.parametrize("case", FP8_EXPERTS_INTERPRETED, ids=lambda c: c.name)
def test_interpreted_fp8_experts_match_dequantized_reference(interpreted_results, case):
    result = interpreted_results[case.name]
    assert "failure" not in result, result.get("failure")
    assert result["dtype_kept"] == 1.0
    assert result["relative_error"] <= 1e-5, result


def w8a8_reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Activations quantised per token (plain torch, on ``x``'s device) and weights dequantised,
    multiplied in float32."""
    amax = x.float().abs().amax(dim=-1, keepdim=True)
    x_scale = (amax / fp8.FP8_MAX).clamp(min=fp8.MIN_SCALE)
    q = (x.float() / x_scale).clamp(-fp8.FP8_MAX, fp8.FP8_MAX).to(fp8.FP8)
    return (q.float() * x_scale) @ fp8.dequantize_weight(weight, scale, torch.float32).T


def test_cpu_scaled_matmul_is_per_token_w8a8():
    """torch._scaled_mm's CPU kernel runs the W8A8 path the GPU runs."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 64, generator=gen).bfloat16()
    weight, scale = fp8.quantize_weight(torch.randn(48, 64, generator=gen))
    out = fp8.scaled_matmul(x, weight, scale)
    expected = w8a8_reference(x, weight, scale)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - expected).abs().max() / expected.abs().max()).item() < 1e-2


# ---- on the GPU -------------------------------------------------------------------------------

# Llama-3.1-8B's qkv, gate_up and down and Llama-3.1-70B's gate_up, from one row (decode) to a
# prefill chunk, with groups of 128 (and act order)
GPU_INT4 = [
    Int4Case(f"{name}_m{m}", m, k, n, 128, act, torch.bfloat16, seed=m)
    for name, k, n, act in [
        ("8b_qkv", 4096, 6144, False),
        ("8b_gate_up", 4096, 28672, False),
        ("8b_down_act_order", 14336, 4096, True),
        ("70b_gate_up", 8192, 57344, False),
    ]
    for m in (1, 16, 64, 512, 2048)
] + [Int4Case("8b_qkv_fp16_m200", 200, 4096, 6144, 128, dtype=torch.float16)]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_INT4, ids=lambda c: c.name)
def test_gpu_w4a16_matches_dequantized_reference(case):
    result = run_int4_case(case, "cuda")
    assert result["dtype_kept"] == 1.0
    assert result["relative_error"] <= 1e-2, result


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 4096), (512, 4096), (4096, 14336), (3, 100)])
def test_gpu_per_token_quantization_matches_reference(shape):
    result = run_per_token_case(*shape, None, "cuda")
    assert result == {"scales_equal": 1.0, "values_equal": 1.0}
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(*shape, generator=gen) * 5).bfloat16().cuda()
    from llmbatch.layers.triton import quantize_fp8_per_token

    q, scales = quantize_fp8_per_token(x)
    expected_q, expected_scales = fp8.quantize_per_token(x.cpu())
    torch.testing.assert_close(scales.cpu(), expected_scales, rtol=1e-6, atol=0)
    # the same quotient up to float32 rounding (Triton's float32 division is approximate): a
    # value that lands next to a rounding boundary may round to the neighbouring e4m3 value
    ours, theirs = q.cpu().float(), expected_q.float()
    differ = ours != theirs
    assert differ.float().mean() < 1e-2
    larger = torch.maximum(ours[differ].abs(), theirs[differ].abs())
    one_step = torch.exp2(torch.floor(torch.log2(larger)) - 3).clamp(min=2.0**-9)
    assert ((ours[differ] - theirs[differ]).abs() <= one_step).all()


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64, 512, 2048])
@pytest.mark.parametrize(("k", "n"), [(4096, 6144), (4096, 28672), (14336, 4096)])
def test_gpu_fp8_linear_matches_w8a8_reference(m, k, n):
    if not fp8.has_fp8_tensor_cores(torch.device("cuda")):
        pytest.skip("needs FP8 tensor cores (compute capability 8.9+)")
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=gen).bfloat16().cuda()
    weight, scale = fp8.quantize_weight(torch.randn(n, k, generator=gen).cuda() / k**0.5)
    out = fp8.fp8_linear(x, weight, scale)
    expected = w8a8_reference(x, weight, scale)
    assert out.dtype == torch.bfloat16
    error = (out.float() - expected).abs().max() / expected.abs().max()
    assert error.item() < 1e-2
    # and W8A8 stays close to the unquantised activations (what the CPU runs)
    dequantized = x.float() @ fp8.dequantize_weight(weight, scale, torch.float32).T
    assert ((out.float() - dequantized).abs().max() / dequantized.abs().max()).item() < 0.1


GPU_FP8_EXPERTS = [
    Fp8ExpertsCase("qwen3_30b_decode", 64, 128, 8, 2048, 768, torch.bfloat16),
    Fp8ExpertsCase("qwen3_30b_prefill", 2048, 128, 8, 2048, 768, torch.bfloat16, seed=1),
    Fp8ExpertsCase("mixtral_one_token", 1, 8, 2, 1024, 1792, torch.bfloat16),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_FP8_EXPERTS, ids=lambda c: c.name)
def test_gpu_fp8_experts_match_dequantized_reference(case):
    result = run_fp8_experts_case(case, "cuda")
    assert result["dtype_kept"] == 1.0
    assert result["relative_error"] <= 2e-2, result


@pytest.mark.gpu
def test_gpu_w4a16_and_fp8_replay_from_a_cuda_graph():
    """No host sync in either path: a captured matmul replays on new activations."""
    case = Int4Case("graph", 8, 4096, 4096, 128, dtype=torch.bfloat16)
    x, qweight, scales, zeros, _ = int4_inputs(case, "cuda")
    weight, scale = fp8.quantize_weight(torch.randn(4096, 4096, device="cuda") / 64)
    int4.int4_linear(x, qweight, scales, zeros, 128)  # compile outside the capture
    fp8.fp8_linear(x, weight, scale)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        int4_out = int4.int4_linear(x, qweight, scales, zeros, 128)
        fp8_out = fp8.fp8_linear(x, weight, scale)
    x.copy_(torch.randn_like(x))
    graph.replay()
    expected = x.float() @ int4.dequantize_int4(qweight, scales, zeros, 128, None, torch.float32)
    assert (int4_out.float() - expected).abs().max() <= 1e-2 * expected.abs().max()
    expected = x.float() @ fp8.dequantize_weight(weight, scale, torch.float32).T
    assert (fp8_out.float() - expected).abs().max() <= 0.1 * expected.abs().max()


if __name__ == "__main__":
    print_results(
        {c.name: partial(run_int4_case, c, "cpu") for c in INT4_INTERPRETED}
        | {f"per_token_{c}": partial(run_per_token_case, *c, "cpu") for c in PER_TOKEN_INTERPRETED}
        | {c.name: partial(run_fp8_experts_case, c, "cpu") for c in FP8_EXPERTS_INTERPRETED}
    )
