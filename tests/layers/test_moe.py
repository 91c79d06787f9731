"""Mixture-of-experts: routing and the per-expert reference against transformers, and the fused
Triton kernel against the reference.

On the CPU the kernel runs under Triton's interpreter in a child process, as in
test_triton_attention.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import pytest
import torch
from interpreted import interpreted_results as run_interpreted
from interpreted import print_results
from transformers import MixtralConfig, Qwen3MoeConfig
from transformers.models.mixtral.modeling_mixtral import MixtralExperts, MixtralTopKRouter
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

from llmbatch.layers.moe import experts_reference, route


@dataclass(frozen=True)
class MoECase:
    name: str
    num_tokens: int
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    dtype: torch.dtype = torch.float32
    skewed: bool = False  # most tokens on a few experts, some experts with none
    seed: int = 0


def make_inputs(case: MoECase, device: str) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(case.seed)
    e, h, i = case.num_experts, case.hidden_size, case.intermediate_size
    hidden = torch.randn(case.num_tokens, h, generator=gen)
    w13 = torch.randn(e, 2 * i, h, generator=gen) / h**0.5
    w2 = torch.randn(e, h, i, generator=gen) / i**0.5
    logits = torch.randn(case.num_tokens, e, generator=gen)
    if case.skewed:
        logits[:, : e // 2] -= 20.0  # half the experts are never chosen
    weights, ids = route(logits, case.top_k, renormalize=True)
    tensors = hidden.to(case.dtype), w13.to(case.dtype), w2.to(case.dtype), weights, ids
    return tuple(t.to(device) for t in tensors)


def run_case(case: MoECase, device: str) -> dict[str, float]:
    """The fused kernel's error against the per-expert reference (in float32), relative to the
    reference's largest value."""
    from llmbatch.layers.triton import fused_experts

    hidden, w13, w2, weights, ids = make_inputs(case, device)
    out = fused_experts(hidden, w13, w2, weights, ids)
    expected = experts_reference(hidden.float(), w13.float(), w2.float(), weights, ids)
    scale = expected.abs().max().item()
    return {
        "relative_error": (out.float() - expected).abs().max().item() / scale,
        "dtype_kept": float(out.dtype == case.dtype and out.shape == hidden.shape),
    }


INTERPRETED_CASES = [
    MoECase("one_token_top2_of_4", 1, 4, 2, 32, 48),
    MoECase("tokens_top2_of_8", 37, 8, 2, 64, 40),
    MoECase("tokens_top4_of_16_skewed", 21, 16, 4, 48, 32, skewed=True),
    MoECase("tokens_top1_of_3", 18, 3, 1, 32, 16),
]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module")
def interpreted_results() -> dict[str, dict]:
    return run_interpreted(__file__)


@pytest.mark.parametrize("name", [case.name for case in INTERPRETED_CASES])
def test_interpreted_kernel_matches_reference(interpreted_results: dict, name: str) -> None:
    result = interpreted_results[name]
    assert "failure" not in result, result.get("failure")
    assert result["dtype_kept"] == 1.0
    assert result["relative_error"] <= TOLERANCE[torch.float32], result


def test_pairs_are_sorted_into_blocks_of_one_expert() -> None:
    from llmbatch.layers.triton.moe import sort_pairs_by_expert

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (23, 3), generator=gen)
    ids[:, 0] = 2  # one crowded expert; some of the others may get no pair
    pair_ids, block_expert = sort_pairs_by_expert(ids, num_experts=6, block_m=4)
    num_pairs = ids.numel()
    real = pair_ids[pair_ids < num_pairs]
    assert sorted(real.tolist()) == list(range(num_pairs)), "every pair exactly once"
    blocks = pair_ids.view(-1, 4)
    for block, expert in zip(blocks, block_expert.tolist()):
        members = block[block < num_pairs]
        if expert < 0:
            assert members.numel() == 0
        else:
            assert (ids.reshape(-1)[members.long()] == expert).all()
    used_blocks = (block_expert >= 0).sum().item()
    assert used_blocks == sum(-(-(ids == e).sum().item() // 4) for e in range(6))


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_routing_matches_transformers(family: str) -> None:
    common = dict(hidden_size=32, num_experts_per_tok=2, num_attention_heads=4)
    if family == "mixtral":
        router = MixtralTopKRouter(MixtralConfig(**common, num_local_experts=8))
        renormalize = True
    else:
        router = Qwen3MoeTopKRouter(Qwen3MoeConfig(**common, num_experts=8, norm_topk_prob=False))
        renormalize = False
    torch.nn.init.normal_(router.weight)
    x = torch.randn(11, 32)
    _, expected_weights, expected_ids = router(x)
    weights, ids = route(x @ router.weight.T, 2, renormalize)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(weights, expected_weights.float(), rtol=0, atol=0)


def test_reference_matches_transformers_experts() -> None:
    config = MixtralConfig(
        hidden_size=32, intermediate_size=24, num_local_experts=6, num_attention_heads=4
    )
    theirs = MixtralExperts(config)
    torch.nn.init.normal_(theirs.gate_up_proj, std=0.2)
    torch.nn.init.normal_(theirs.down_proj, std=0.2)
    x = torch.randn(13, 32)
    weights, ids = route(torch.randn(13, 6), 2, renormalize=True)
    expected = theirs(x, ids, weights)
    ours = experts_reference(x, theirs.gate_up_proj.data, theirs.down_proj.data, weights, ids)
    assert torch.equal(ours, expected)


GPU_CASES = [
    # Qwen3-30B-A3B's experts (128, top 8, hidden 2048, 768 each): a decode batch and a prefill
    MoECase("qwen3_30b_decode", 64, 128, 8, 2048, 768, torch.bfloat16),
    MoECase("qwen3_30b_prefill", 2048, 128, 8, 2048, 768, torch.bfloat16, seed=1),
    # Mixtral-8x7B's routing (8, top 2) at a smaller width, from one token to many
    MoECase("mixtral_one_token", 1, 8, 2, 1024, 1792, torch.bfloat16),
    MoECase("mixtral_prefill", 1500, 8, 2, 1024, 1792, torch.bfloat16, seed=2),
    MoECase("skewed_top4_of_16", 333, 16, 4, 512, 384, torch.bfloat16, skewed=True),
    MoECase("float32_top2_of_8", 100, 8, 2, 256, 192),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda case: case.name)
def test_gpu_kernel_matches_reference(case: MoECase) -> None:
    result = run_case(case, "cuda")
    assert result["dtype_kept"] == 1.0
    assert result["relative_error"] <= TOLERANCE[case.dtype], result


@pytest.mark.gpu
def test_gpu_kernel_replays_from_a_cuda_graph() -> None:
    """The sort and the launches need no host sync: a captured step replays on new routing."""
    from llmbatch.layers.triton import fused_experts

    case = MoECase("graph", 48, 32, 4, 256, 128, torch.bfloat16)
    hidden, w13, w2, weights, ids = make_inputs(case, "cuda")
    fused_experts(hidden, w13, w2, weights, ids)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_experts(hidden, w13, w2, weights, ids)
    new_hidden, _, _, new_weights, new_ids = make_inputs(
        MoECase("graph", 48, 32, 4, 256, 128, torch.bfloat16, seed=5), "cuda"
    )
    hidden.copy_(new_hidden)
    weights.copy_(new_weights)
    ids.copy_(new_ids)
    graph.replay()
    expected = experts_reference(hidden.float(), w13.float(), w2.float(), weights, ids)
    assert (out.float() - expected).abs().max() <= 2e-2 * expected.abs().max()


if __name__ == "__main__":
    print_results({case.name: partial(run_case, case, "cpu") for case in INTERPRETED_CASES})
