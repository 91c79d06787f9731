"""The engine on a CUDA GPU: Triton attention, CUDA graphs, memory sizing and release."""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pytest
import torch
from engine_testing import TINY_CONFIGS, TINY_VOCAB
from tiny_models import hf_greedy, save_tiny_model

from llmbatch import LLM, SamplingParams

pytestmark = pytest.mark.gpu

GREEDY = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    model = save_tiny_model(folder, TINY_CONFIGS["qwen3"])
    rng = random.Random(0)
    prompts = [[rng.randrange(3, TINY_VOCAB) for _ in range(n)] for n in (3, 17, 40, 64, 90, 129)]
    return str(folder), model, prompts


def test_triton_backend_with_cuda_graphs_matches_transformers(tiny):
    folder, hf_model, prompts = tiny
    expected = hf_greedy(hf_model, prompts, GREEDY.max_tokens, eos_ids=[])
    with LLM(folder, device="cuda", dtype="float32", gpu_memory_utilization=0.3) as llm:
        assert llm.llm_engine.config.attention_backend == "triton"
        assert llm.llm_engine._runner._decode_graphs is not None
        outputs = llm.generate(prompts, GREEDY)
    assert [o.token_ids for o in outputs] == expected


def run_eager_then_graphed(folder, prompts, params, **engine_kwargs) -> tuple[list, list, dict]:
    """Token ids with CUDA graphs off, then on; and what the graphed engine replayed."""
    results, seen = [], {}
    for eager in (True, False):
        with LLM(
            folder,
            device="cuda",
            dtype="float32",
            enforce_eager=eager,
            gpu_memory_utilization=0.3,
            **engine_kwargs,
        ) as llm:
            results.append([o.token_ids for o in llm.generate(prompts, params)])
            runner, stats = llm.llm_engine._runner, llm.llm_engine.stats
            seen["cached_tokens"] = stats.num_cached_tokens
            if not eager:
                seen["decode_replays"] = runner._decode_graphs.replays
                seen["prompt_replays"] = runner._prompt_graphs.replays
                seen["largest_prompt_graph"] = runner._prompt_graphs.sizes[-1]
    return results[0], results[1], seen


def test_cuda_graphs_give_the_eager_tokens_for_every_batch_size(tiny):
    folder, _, prompts = tiny
    many = [p[: 5 + i % 60] for i, p in enumerate(prompts * 9)][:50]
    # outputs of several lengths, so the decode batch shrinks through many sizes
    params = [
        SamplingParams(temperature=0.0, max_tokens=4 + i, ignore_eos=True) for i in range(len(many))
    ]
    eager, graphed, seen = run_eager_then_graphed(folder, many, params, max_num_seqs=48)
    assert graphed == eager
    assert seen["decode_replays"] > 20


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_steps_with_prompt_tokens_replay_graphs_and_give_the_eager_tokens(tiny, kv_cache_dtype):
    folder, _, prompts = tiny
    # Shared prefixes (prefix-cache hits) and prompts chunked over steps that also decode.
    many = [p[: 5 + (7 * i) % 60] for i, p in enumerate(prompts * 8)]
    params = [
        SamplingParams(temperature=0.0, max_tokens=3 + i % 17, ignore_eos=True)
        for i in range(len(many))
    ]
    eager, graphed, seen = run_eager_then_graphed(
        folder,
        many,
        params,
        max_num_seqs=16,
        max_num_batched_tokens=96,
        kv_cache_dtype=kv_cache_dtype,
    )
    assert graphed == eager
    assert seen["largest_prompt_graph"] == 96
    assert seen["prompt_replays"] > 10 and seen["decode_replays"] > 0
    assert seen["cached_tokens"] > 0


@pytest.mark.parametrize("num_blocks", [None, 40], ids=["roomy", "preempting"])
def test_async_scheduling_gives_the_synchronous_outputs(tiny, num_blocks):
    folder, _, prompts = tiny
    many = [p[: 5 + i % 60] for i, p in enumerate(prompts * 9)][:48]
    kinds = [
        dict(temperature=0.0),
        dict(temperature=0.9, top_p=0.8, seed=5),
        dict(temperature=0.0, stop_token_ids=[7, 11]),
        dict(temperature=0.0, repetition_penalty=1.2),
        dict(temperature=0.0, logprobs=2),
        dict(temperature=1.0, top_k=5, seed=9, min_tokens=6, stop_token_ids=[3]),
    ]
    params = [
        SamplingParams(max_tokens=3 + i % 30, ignore_eos=True, **kinds[i % len(kinds)])
        for i in range(len(many))
    ]
    results = []
    for overlap in (False, True):
        with LLM(
            folder,
            device="cuda",
            dtype="float32",
            async_scheduling=overlap,
            gpu_memory_utilization=0.3,
            num_gpu_blocks_override=num_blocks,
            reserve_output_kv=num_blocks is None,
            max_num_seqs=32,
        ) as llm:
            results.append([(o.token_ids, o.finish_reason) for o in llm.generate(many, params)])
            preemptions = llm.llm_engine.stats.num_preemptions
    assert results[1] == results[0]
    assert (preemptions > 0) == (num_blocks is not None)


def test_kv_cache_follows_gpu_memory_utilization_and_close_frees_it(tiny):
    folder = tiny[0]
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    blocks = {}
    for utilization in (0.2, 0.4):
        llm = LLM(folder, device="cuda", dtype="bfloat16", gpu_memory_utilization=utilization)
        blocks[utilization] = llm.llm_engine.num_kv_blocks
        out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=8))
        assert len(out[0].token_ids) == 8
        llm.close()
        del llm
        gc.collect()
        torch.cuda.empty_cache()
        assert torch.cuda.memory_allocated() <= before + (1 << 20)
    assert blocks[0.4] > blocks[0.2]


def test_structured_outputs_on_the_gpu_give_the_cpu_paths_tokens(
    smollm2_dir, tmp_path, monkeypatch
):
    """Masks applied by the Triton kernel and sampled once the previous step's tokens are read
    back (async scheduling, CUDA graphs), against the CPU path's masks (unpacked by numpy) in
    synchronous eager steps, on the same GPU: a tiny random model with SmolLM2's tokenizer."""
    import re
    import shutil

    from transformers import LlamaConfig

    from llmbatch.layers import bitmask

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    save_tiny_model(tmp_path, config)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(smollm2_dir) / name).exists():
            shutil.copy(Path(smollm2_dir) / name, tmp_path / name)
    person = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    constraints = [
        {"regex": r"\d{2}-\d{2}-\d{4}"},
        {"json": person, "disable_any_whitespace": True},
        {"choice": ["yes", "no", "maybe"]},
        None,
    ]
    prompts = [f"Question {i}: what do you say?" for i in range(12)]
    params = [
        SamplingParams(temperature=0.0, max_tokens=32, structured_outputs=constraints[i % 4])
        for i in range(len(prompts))
    ]
    kwargs = dict(device="cuda", dtype="float32", gpu_memory_utilization=0.3)
    with LLM(str(tmp_path), **kwargs) as llm:
        assert llm.llm_engine.config.async_scheduling and llm.llm_engine.config.cuda_graphs
        on_device = llm.generate(prompts, params)
    monkeypatch.setattr(bitmask, "triton_ops_for", lambda x: None)
    with LLM(str(tmp_path), **kwargs, async_scheduling=False, enforce_eager=True) as llm:
        host_masks = llm.generate(prompts, params)
    assert [o.token_ids for o in on_device] == [o.token_ids for o in host_masks]
    for i, output in enumerate(on_device):
        if i % 4 == 0:
            assert re.fullmatch(r"\d{2}-\d{2}-\d{4}", output.text)
        elif i % 4 == 2:
            assert output.text in ("yes", "no", "maybe")
