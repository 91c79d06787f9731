"""On CUDA: each own-code family beyond Llama against transformers (float32 equal, bfloat16 within
its tolerance) with both attention backends, at tiny and at real widths; the engine with CUDA
graphs gives transformers' greedy tokens; and the transformers fallback runs on the GPU."""

from __future__ import annotations

import pytest
import torch
from paged_runner import PagedRunner, assert_logits_close, run_chunked
from tiny_models import (
    fallback_configs,
    family_configs,
    hf_greedy,
    random_prompts,
    save_tiny_model,
    tiny_tokenizer,
)
from transformers import AutoModelForCausalLM, Gemma2Config, Qwen3MoeConfig

from llmbatch import LLM, SamplingParams
from llmbatch.models import load_model

pytestmark = pytest.mark.gpu
BACKENDS = ["torch", "triton"]
MOE_FAMILIES = {"mixtral-top2-window", "qwen3-moe-top2", "qwen2-moe-shared-expert"}


def cuda_reference(folder, dtype: torch.dtype, prompts: list[list[int]]) -> list[torch.Tensor]:
    # eager: Gemma 2's soft caps have no sdpa path in transformers
    hf_model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, attn_implementation="eager"
    )
    hf_model = hf_model.to("cuda").eval()
    with torch.inference_mode():
        return [hf_model(torch.tensor([p], device="cuda")).logits[0].float() for p in prompts]


def assert_within_bfloat16_error(
    folder, ours: list[torch.Tensor], prompts: list[list[int]], rerouted: float = 0.0
) -> None:
    """Our bfloat16 logits are as close to transformers' float32 logits as transformers' own
    bfloat16 logits are (twice its largest error, or 3e-2, of the largest logit), at every
    position but for at most a ``rerouted`` share of them.

    Tiny random models amplify rounding (transformers' own bfloat16 strays 5% from its float32
    on some), so a fixed tolerance would judge the model rather than the code. And in bfloat16
    two implementations round a token's router scores differently: where two experts nearly tie
    they may route it differently, a discontinuity no tolerance covers."""
    exact = cuda_reference(folder, torch.float32, prompts)
    rounded = cuda_reference(folder, torch.bfloat16, prompts)
    for mine, reference, theirs in zip(ours, exact, rounded):
        scale = reference.abs().max().item()
        bound = max(3e-2, 2 * (theirs - reference).abs().max().item() / scale)
        errors = (mine - reference).abs().amax(dim=-1) / scale
        off = (errors > bound).float().mean().item()
        assert off <= rerouted, f"{off:.1%} of positions stray more than {bound:.3g}"


@pytest.fixture(scope="module", params=list(family_configs()))
def family_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    save_tiny_model(folder, family_configs()[request.param])
    return request.param, str(folder)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_families_on_cuda(family_folder, backend, dtype):
    family, folder = family_folder
    loaded = load_model(folder, device="cuda", dtype=dtype, attention_backend=backend)
    prompts = random_prompts([20, 27, 13], seed=1)
    plans = [[7, 5] + [1] * 8, [1, 1, 12, 3] + [1] * 10, [13]]
    runner = PagedRunner(loaded.model, num_blocks=64, block_size=16, seed=2)
    logits = run_chunked(runner, prompts, plans)
    if dtype == torch.float32:
        for ours, reference in zip(logits, cuda_reference(folder, dtype, prompts)):
            assert_logits_close(ours, reference, 1e-4)
    else:
        rerouted = 0.1 if family in MOE_FAMILIES else 0.0
        assert_within_bfloat16_error(folder, logits, prompts, rerouted)


# real widths, random weights spread as real checkpoints' are; the MoE layer in float32, where
# no token is rerouted by rounding (its experts in bfloat16 at these widths: tests/layers/test_moe.py)
REAL_WIDTHS = {
    # Gemma-2-9B's layer: head_dim 256, 16 query and 8 KV heads, soft caps 50 and 30, a window
    # shorter than the prompt on the sliding layer (two layers of 42, a smaller vocabulary)
    "gemma2-9b": Gemma2Config(
        hidden_size=3584,
        intermediate_size=14336,
        num_hidden_layers=2,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=256,
        vocab_size=8192,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # Qwen3-30B-A3B's layer: 128 experts of 768, top 8 renormalized, q/k norms, 32/4 heads
    # (one layer of 48), in float32
    "qwen3-30b-a3b": Qwen3MoeConfig(
        hidden_size=2048,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        norm_topk_prob=True,
        num_hidden_layers=1,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=8192,
        bos_token_id=1,
        eos_token_id=2,
    ),
}


def save_random(folder, config, dtype: torch.dtype) -> None:
    """A random model drawn on the GPU (real widths are slow to draw on a CPU), with weights
    spread as real checkpoints' are (std 0.02; norm scales near their neutral value)."""
    config.dtype = str(dtype).removeprefix("torch.")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.1)  # Gemma stores scale - 1
            else:
                param.normal_(0.0, 0.02)
    model.save_pretrained(folder)
    tiny_tokenizer(config.vocab_size).save_pretrained(folder)


@pytest.mark.parametrize("shape", list(REAL_WIDTHS))
def test_real_widths(shape, tmp_path):
    dtype = torch.bfloat16 if shape.startswith("gemma") else torch.float32
    save_random(tmp_path, REAL_WIDTHS[shape], dtype)
    loaded = load_model(str(tmp_path), device="cuda")
    assert loaded.dtype == dtype
    prompts = random_prompts([300, 40], seed=3)
    plans = [[200, 100], [32] + [1] * 8]
    logits = run_chunked(PagedRunner(loaded.model, num_blocks=64, block_size=16), prompts, plans)
    if dtype == torch.bfloat16:
        assert_within_bfloat16_error(str(tmp_path), logits, prompts)
    else:
        for ours, reference in zip(logits, cuda_reference(str(tmp_path), dtype, prompts)):
            assert_logits_close(ours, reference, 1e-3)


@pytest.mark.parametrize("family", ["gemma2-softcap-window", "qwen3-moe-top2"])
def test_engine_with_cuda_graphs_matches_transformers(family, tmp_path):
    hf_model = save_tiny_model(tmp_path, family_configs()[family])
    prompts = random_prompts([9, 17, 40, 64], seed=4)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    expected = hf_greedy(hf_model, prompts, params.max_tokens, eos_ids=[])
    with LLM(str(tmp_path), device="cuda", dtype="float32", gpu_memory_utilization=0.3) as llm:
        assert llm.llm_engine._runner._decode_graphs is not None
        outputs = llm.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outputs] == expected


def test_transformers_fallback_on_cuda(tmp_path):
    """model_impl='transformers' on the GPU: Triton attention, no CUDA graphs, same tokens."""
    hf_model = save_tiny_model(tmp_path, fallback_configs()["granite"])
    prompts = random_prompts([9, 17, 40, 64], seed=5)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    expected = hf_greedy(hf_model, prompts, params.max_tokens, eos_ids=[])
    with LLM(str(tmp_path), device="cuda", dtype="float32", gpu_memory_utilization=0.3) as llm:
        config = llm.llm_engine.config
        assert (config.model_impl, config.attention_backend, config.cuda_graphs) == (
            "transformers",
            "triton",
            False,
        )
        outputs = llm.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outputs] == expected
