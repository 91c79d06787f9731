"""Our model code gives transformers' logits, in one prefill and through the paged cache."""

from __future__ import annotations

import inspect

import pytest
import torch
from paged_runner import PagedRunner, assert_logits_close, run_chunked
from tiny_models import random_prompts, save_tiny_model, tiny_configs
from transformers import AutoModelForCausalLM

from llmbatch.models import load_model


def reference_logits(hf_model, token_ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf_model(torch.tensor([token_ids])).logits[0].float()


# --- SmolLM2-135M-Instruct, real weights ----------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_model(smollm2_dir)


@pytest.fixture(scope="module")
def smollm2_hf(smollm2_dir):
    return AutoModelForCausalLM.from_pretrained(
        smollm2_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def smollm2_prompts(smollm2) -> list[list[int]]:
    questions = ["Hi", "What is the capital of France?", "Write two lines about the sea at night."]
    chats = [[{"role": "user", "content": q}] for q in questions]
    tokenizer = smollm2.tokenizer
    prompts = [
        tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats
    ]
    return [
        tokenizer(p, add_special_tokens=False).input_ids
        for p in ["Hello there, how are you?"] + prompts
    ]


def test_smollm2_prefill_batch_matches_transformers(smollm2, smollm2_hf, smollm2_prompts):
    runner = PagedRunner(smollm2.model, num_blocks=64, block_size=16)
    logits = runner.step(dict(enumerate(smollm2_prompts)), num_padding_tokens=3)
    for i, prompt in enumerate(smollm2_prompts):
        assert_logits_close(logits[i], reference_logits(smollm2_hf, prompt))


def test_smollm2_chunks_and_decode_steps_match_transformers(smollm2, smollm2_hf, smollm2_prompts):
    lengths = [len(p) for p in smollm2_prompts]
    # Step 0 mixes chunks with a one-token prefill; steps 4 and 5 are decode-only batches.
    plans = [
        [lengths[0] - 4, 1, 1, 1, 1],
        [10, 7, lengths[1] - 20, 1, 1, 1],
        [1, 1, 1, lengths[2] - 6, 1, 1, 1],
        [16, 16, lengths[3] - 35, 1, 1, 1],
    ]
    # Block size 4 puts block boundaries inside every chunk.
    runner = PagedRunner(smollm2.model, num_blocks=128, block_size=4, seed=1)
    logits = run_chunked(runner, smollm2_prompts, plans)
    for i, prompt in enumerate(smollm2_prompts):
        assert_logits_close(logits[i], reference_logits(smollm2_hf, prompt))


def test_smollm2_describes_its_shape(smollm2):
    model = smollm2.model
    assert (model.num_layers, model.num_heads, model.num_kv_heads) == (30, 9, 3)
    assert (model.head_dim, model.hidden_size, model.vocab_size) == (64, 576, 49152)
    assert model.sliding_window is None
    assert smollm2.eos_token_ids == [smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert not any(p.requires_grad for p in model.parameters())


# --- tiny random-weight models of every family ----------------------------------------------------


@pytest.fixture(scope="module", params=list(tiny_configs()))
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf_model = save_tiny_model(folder, tiny_configs()[request.param])
    return load_model(str(folder)), hf_model


def test_tiny_prefill_matches_transformers(tiny):
    loaded, hf_model = tiny
    prompts = random_prompts([1, 9, 24, 40])
    runner = PagedRunner(loaded.model, num_blocks=64, block_size=8)
    logits = runner.step(dict(enumerate(prompts)))
    for i, prompt in enumerate(prompts):
        assert_logits_close(logits[i], reference_logits(hf_model, prompt))


def test_tiny_chunks_and_decode_steps_match_transformers(tiny):
    loaded, hf_model = tiny
    prompts = random_prompts([20, 27, 13], seed=1)
    plans = [[7, 5] + [1] * 8, [1, 1, 12, 3] + [1] * 10, [4, 4, 4, 1]]
    runner = PagedRunner(loaded.model, num_blocks=64, block_size=4, seed=2)
    logits = run_chunked(runner, prompts, plans)
    for i, prompt in enumerate(prompts):
        assert_logits_close(logits[i], reference_logits(hf_model, prompt))


def test_mistral_window_is_exceeded_and_honoured(tmp_path):
    config = tiny_configs()["mistral-sliding-window"]
    hf_model = save_tiny_model(tmp_path, config)
    loaded = load_model(str(tmp_path))
    assert loaded.model.sliding_window == config.sliding_window
    prompt = random_prompts([3 * config.sliding_window])[0]
    runner = PagedRunner(loaded.model, num_blocks=16, block_size=4)
    ours = run_chunked(runner, [prompt], [[5] + [1] * (len(prompt) - 5)])[0]
    assert_logits_close(ours, reference_logits(hf_model, prompt))
    # Without the window the last positions would differ: the test would catch an ignored window.
    hf_model.config.sliding_window = None
    full_attention = reference_logits(hf_model, prompt)
    assert (full_attention[-1] - ours[-1]).abs().max() > 1e-2


def test_dynamic_rope_decoding_past_the_trained_length(tmp_path):
    """Decoding past max_position_embeddings rotates each new token as transformers' cache does."""
    config = tiny_configs()["llama3-rope-scaling"]
    config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    config.max_position_embeddings = 12
    hf_model = save_tiny_model(tmp_path, config)
    loaded = load_model(str(tmp_path))
    assert loaded.model.max_positions == 24
    prompt = random_prompts([20])[0]
    runner = PagedRunner(loaded.model, num_blocks=16, block_size=4)
    ours = run_chunked(runner, [prompt], [[8] + [1] * 12])[0]
    # transformers 5.24 renamed past_key_values to cache; the GPU machine may run an older 5.x.
    parameters = inspect.signature(hf_model.forward).parameters
    cache_arg = "cache" if "cache" in parameters else "past_key_values"
    reference = []
    with torch.inference_mode():
        out = hf_model(torch.tensor([prompt[:8]]), use_cache=True)
        reference.append(out.logits[0])
        for token in prompt[8:]:
            out = hf_model(torch.tensor([[token]]), **{cache_arg: out.past_key_values})
            reference.append(out.logits[0])
    assert_logits_close(ours, torch.cat(reference))
