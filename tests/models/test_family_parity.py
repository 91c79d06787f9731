"""Own code of the families beyond Llama (Gemma 2/3, Phi-3, Mixtral, Qwen3-MoE, Qwen2-MoE) gives
transformers' logits through the paged cache, with each family's special features on; and loads
the checkpoint layouts these families ship in."""

from __future__ import annotations

import pytest
import torch
from paged_runner import PagedRunner, assert_logits_close, run_chunked
from safetensors.torch import load_file, save_file
from tiny_models import (
    TINY_WINDOW,
    family_configs,
    random_hf_model,
    random_prompts,
    save_tiny_model,
    tiny_tokenizer,
)
from transformers import Gemma3Config, SiglipVisionConfig

from llmbatch.models import load_model


def reference_logits(hf_model, token_ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf_model(torch.tensor([token_ids])).logits[0].float()


@pytest.fixture(scope="module", params=list(family_configs()))
def family(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf_model = save_tiny_model(folder, family_configs()[request.param])
    return load_model(str(folder)), hf_model


def test_chunks_and_decode_steps_match_transformers(family):
    """Prompts 2-5 times the sliding window, fed in chunks that cross block boundaries and
    then one token a step; one step mixes a chunk with decodes."""
    loaded, hf_model = family
    prompts = random_prompts([20, 27, 13, 3], seed=1)
    plans = [[7, 5] + [1] * 8, [1, 1, 12, 3] + [1] * 10, [13], [1, 1, 1]]
    runner = PagedRunner(loaded.model, num_blocks=64, block_size=4, seed=2)
    logits = run_chunked(runner, prompts, plans)
    for i, prompt in enumerate(prompts):
        assert_logits_close(logits[i], reference_logits(hf_model, prompt))
    assert max(map(len, prompts)) > 3 * TINY_WINDOW


def test_gemma2_softcaps_and_window_are_honoured(tmp_path):
    """Without the soft caps or the window, transformers' logits differ from ours: the parity
    above would catch either being ignored."""
    config = family_configs()["gemma2-softcap-window"]
    hf_model = save_tiny_model(tmp_path, config)
    prompt = random_prompts([4 * TINY_WINDOW])[0]
    runner = PagedRunner(load_model(str(tmp_path)).model, num_blocks=16, block_size=8)
    ours = runner.step({0: prompt})[0]
    assert_logits_close(ours, reference_logits(hf_model, prompt))
    for change in ("attn_logit_softcapping", "final_logit_softcapping", "sliding_window"):
        previous = getattr(hf_model.config, change)
        setattr(hf_model.config, change, None if change != "sliding_window" else 4096)
        for layer in hf_model.model.layers:  # attention modules copy these at construction
            attention = layer.self_attn
            attention.attn_logit_softcapping = hf_model.config.attn_logit_softcapping
            if attention.sliding_window is not None:
                attention.sliding_window = hf_model.config.sliding_window
        assert (reference_logits(hf_model, prompt) - ours).abs().max() > 1e-2, change
        setattr(hf_model.config, change, previous)


def test_moe_experts_saved_stacked_load_as_saved_per_expert(tmp_path):
    """transformers 5 may save a layer's experts as two stacked tensors (gate_up_proj
    [E, 2I, H], down_proj [E, H, I]); the Hub's checkpoints hold one tensor per expert."""
    config = family_configs()["qwen3-moe-top2"]
    per_expert = tmp_path / "per-expert"
    save_tiny_model(per_expert, config)
    stacked = tmp_path / "stacked"
    stacked.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (stacked / name).write_bytes((per_expert / name).read_bytes())
    tensors = load_file(per_expert / "model.safetensors")
    for layer in (0, 2):  # layer 1 is dense (mlp_only_layers)
        prefix = f"model.layers.{layer}.mlp.experts"
        gate_up, down = [], []
        for expert in range(config.num_experts):
            gate_up.append(
                torch.cat(
                    [
                        tensors.pop(f"{prefix}.{expert}.gate_proj.weight"),
                        tensors.pop(f"{prefix}.{expert}.up_proj.weight"),
                    ]
                )
            )
            down.append(tensors.pop(f"{prefix}.{expert}.down_proj.weight"))
        tensors[f"{prefix}.gate_up_proj"] = torch.stack(gate_up)
        tensors[f"{prefix}.down_proj"] = torch.stack(down)
    save_file(tensors, stacked / "model.safetensors")
    ours = load_model(str(stacked)).model.state_dict()
    for name, value in load_model(str(per_expert)).model.state_dict().items():
        assert torch.equal(ours[name], value), name


def test_multimodal_gemma3_checkpoint_runs_as_its_text_decoder(tmp_path):
    """Gemma 3 from 4B up ships as Gemma3ForConditionalGeneration: its text decoder runs, the
    vision tower's weights are left out, and the tied LM head is the embedding."""
    text = family_configs()["gemma3-local-global-rope"]
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    config = Gemma3Config(
        text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4
    )
    hf_model = random_hf_model(config)
    hf_model.save_pretrained(tmp_path)
    tiny_tokenizer(text.vocab_size).save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert type(loaded.model).__name__ == "GemmaForCausalLM"
    prompt = random_prompts([3 * TINY_WINDOW], seed=4)[0]
    runner = PagedRunner(loaded.model, num_blocks=16, block_size=4)
    ours = run_chunked(runner, [prompt], [[7] + [1] * (len(prompt) - 7)])[0]
    assert_logits_close(ours, reference_logits(hf_model, prompt))
