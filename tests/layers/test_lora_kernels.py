"""The batched LoRA products against the per-token definition: the masked torch path (CPU), and
the Triton kernels under TRITON_INTERPRET=1 in a child process (the interpreter is chosen when
the kernels are decorated) and on a GPU."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pytest
import torch
from interpreted import interpreted_results as run_interpreted
from interpreted import print_results

from llmbatch.layers.lora import BLOCK_M, LoRABatch, lora_delta, lora_reference, plan_blocks


@dataclass(frozen=True)
class LoRACase:
    name: str
    num_tokens: int
    num_slots: int
    rank: int
    in_features: int
    out_features: int
    crowded: bool = False
    """Most tokens on one slot: its run spans several blocks."""


CASES = [
    LoRACase("decode_mixed_slots", 11, 4, 16, 64, 96),
    LoRACase("prompt_crowded_slot_rank_48", 83, 3, 48, 48, 80, crowded=True),
    LoRACase("one_token_one_slot", 1, 1, 8, 32, 40),
    LoRACase("no_adapter_tokens", 9, 2, 16, 32, 32),
]


def make_case(case: LoRACase, device: str, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(hash(case.name) % 2**31)
    x = torch.randn(case.num_tokens, case.in_features, generator=gen)
    a = torch.randn(case.num_slots, case.rank, case.in_features, generator=gen) * 0.3
    b = torch.randn(case.num_slots, case.rank, case.out_features, generator=gen) * 0.3
    slots = torch.randint(-1, case.num_slots, (case.num_tokens,), generator=gen)
    if case.crowded:
        slots[: case.num_tokens * 3 // 4] = 1
    if case.name == "no_adapter_tokens":
        slots[:] = -1
    base = torch.randn(case.num_tokens, case.out_features, generator=gen)
    return [t.to(device) for t in (x.to(dtype), a.to(dtype), b.to(dtype), base.to(dtype))], slots


def run_kernel_case(case: LoRACase, device: str, dtype: torch.dtype = torch.float32) -> dict:
    from llmbatch.layers.triton.lora import add_lora_

    (x, a, b, base), slots = make_case(case, device, dtype)
    batch = LoRABatch(128, case.num_slots, torch.device(device))
    batch.use_kernels = True
    batch.set_step(slots.numpy())
    out = base.clone()
    add_lora_(out, x, a, b, batch.token_ids, batch.block_slot, BLOCK_M)
    expected = base.float() + lora_reference(x, a, b, slots.to(device))
    scale = max(expected.abs().max().item(), 1.0)
    return {
        "relative_error": (out.float() - expected).abs().max().item() / scale,
        "dtype_kept": float(out.dtype == dtype),
    }


@pytest.fixture(scope="module")
def interpreted_results() -> dict[str, dict]:
    return run_interpreted(__file__)


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_interpreted_kernels_match_the_per_token_reference(interpreted_results, name):
    result = interpreted_results[name]
    assert "failure" not in result, result.get("failure")
    assert result["dtype_kept"] == 1.0
    assert result["relative_error"] <= 1e-5, result


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_masked_torch_path_matches_the_per_token_reference(case):
    (x, a, b, _), slots = make_case(case, "cpu")
    expected = lora_reference(x, a, b, slots)
    torch.testing.assert_close(lora_delta(x, a, b, slots), expected, atol=1e-5, rtol=1e-5)


def test_plan_puts_each_token_in_one_block_of_its_slot():
    gen = np.random.default_rng(0)
    slots = gen.integers(-1, 5, size=200)
    slots[:90] = 2  # one crowded slot
    num_blocks = -(-200 // 16) + 5
    token_ids, block_slot = plan_blocks(slots, 5, 16, num_blocks, sentinel=1000)
    listed = token_ids[token_ids < 1000]
    assert sorted(listed.tolist()) == np.flatnonzero(slots >= 0).tolist()
    for block, slot in zip(token_ids.reshape(-1, 16), block_slot):
        members = block[block < 1000]
        if slot < 0:
            assert members.size == 0
        else:
            assert (slots[members] == slot).all()
    assert (block_slot[: np.count_nonzero(block_slot >= 0)] >= 0).all(), "used blocks first"


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_on_gpu_match_the_per_token_reference(case, dtype):
    result = run_kernel_case(case, "cuda", dtype)
    assert result["dtype_kept"] == 1.0
    assert result["relative_error"] <= (1e-4 if dtype == torch.float32 else 2e-2), result


if __name__ == "__main__":
    print_results({case.name: partial(run_kernel_case, case, "cpu") for case in CASES})
