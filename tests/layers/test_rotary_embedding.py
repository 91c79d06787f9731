"""Rotary embedding equals transformers' for every rope type the supported families use."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import Gemma3TextConfig, LlamaConfig, Phi3Config
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb as phi3_apply_rotary

from llmbatch.layers.rotary import RotaryEmbedding, apply_rotary, rope_parameters

ROPE_PARAMETERS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 64,
    },
}
HEAD_DIM = 32


def make_config(rope_type: str) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        max_position_embeddings=256,
        rope_parameters=dict(ROPE_PARAMETERS[rope_type]),
    )


def full_width(half: torch.Tensor) -> torch.Tensor:
    """Our ``[T, 1, D/2]`` table rows as transformers' ``[T, D]`` (the halves repeated)."""
    return torch.cat([half[:, 0], half[:, 0]], dim=-1)


@pytest.mark.parametrize("rope_type", list(ROPE_PARAMETERS))
def test_cos_sin_and_rotation_match_transformers(rope_type):
    config = make_config(rope_type)
    ours = RotaryEmbedding(config, HEAD_DIM)
    theirs = LlamaRotaryEmbedding(config)
    positions = torch.arange(config.max_position_embeddings)
    x = torch.randn(len(positions), 3, HEAD_DIM)
    cos_ref, sin_ref = theirs(x, positions[None])
    cos, sin = ours.lookup(positions, torch.float32)
    torch.testing.assert_close(full_width(cos), cos_ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(full_width(sin), sin_ref[0], rtol=1e-6, atol=1e-6)
    expected, _ = apply_rotary_pos_emb(x, x, cos_ref[0], sin_ref[0], unsqueeze_dim=1)
    torch.testing.assert_close(apply_rotary(x, cos, sin), expected, rtol=1e-6, atol=1e-6)


def test_dynamic_scaling_past_the_trained_length_matches_transformers_decoding():
    """transformers, decoding one token at a time, rescales for the length reached so far."""
    config = make_config("dynamic")
    ours = RotaryEmbedding(config, HEAD_DIM)
    assert ours.max_positions == 2 * config.max_position_embeddings
    theirs = LlamaRotaryEmbedding(config)
    x = torch.randn(1, 1, HEAD_DIM)
    for position in range(config.max_position_embeddings - 2, ours.max_positions, 37):
        cos_ref, sin_ref = theirs(x, torch.tensor([[position]]))
        cos, sin = ours.lookup(torch.tensor([position]), torch.float32)
        torch.testing.assert_close(full_width(cos), cos_ref[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(full_width(sin), sin_ref[0], rtol=1e-6, atol=1e-6)


def test_lookup_casts_to_the_model_dtype():
    cos, sin = RotaryEmbedding(make_config("default"), HEAD_DIM).lookup(
        torch.tensor([0, 5]), torch.bfloat16
    )
    assert cos.dtype == sin.dtype == torch.bfloat16
    assert cos.shape == (2, 1, HEAD_DIM // 2)


def test_transformers_4_config_form_is_read():
    old_style = SimpleNamespace(rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 2.0})
    assert rope_parameters(old_style) == {
        "type": "linear",
        "factor": 2.0,
        "rope_theta": 500000.0,
        "rope_type": "linear",
    }
    assert rope_parameters(SimpleNamespace(rope_theta=10.0, rope_scaling=None)) == {
        "rope_theta": 10.0,
        "rope_type": "default",
    }


def phi3_longrope_config(partial_rotary_factor: float = 1.0) -> Phi3Config:
    rotated = int(HEAD_DIM * partial_rotary_factor) // 2
    return Phi3Config(
        hidden_size=128,
        num_attention_heads=4,
        max_position_embeddings=256,
        original_max_position_embeddings=64,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0 + 0.1 * i for i in range(rotated)],
            "long_factor": [2.0 + 0.5 * i for i in range(rotated)],
            "partial_rotary_factor": partial_rotary_factor,
        },
    )


@pytest.mark.parametrize("partial_rotary_factor", [1.0, 0.75])
def test_longrope_matches_transformers_within_and_past_the_original_length(partial_rotary_factor):
    """Positions below original_max_position_embeddings take the short factors (as transformers
    does for a sequence that fits that length), later ones the long factors (as it does once a
    sequence is longer); Phi-4-mini rotates only the first 3/4 of each head."""
    config = phi3_longrope_config(partial_rotary_factor)
    ours = RotaryEmbedding(config, HEAD_DIM)
    original = config.original_max_position_embeddings
    x = torch.randn(config.max_position_embeddings, 3, HEAD_DIM)
    for positions in (torch.arange(original), torch.arange(original, ours.max_positions)):
        # a fresh module each time: transformers keeps the factors its last call chose
        cos_ref, sin_ref = Phi3RotaryEmbedding(config)(x, positions[None])
        cos, sin = ours.lookup(positions, torch.float32)
        torch.testing.assert_close(full_width(cos), cos_ref[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(full_width(sin), sin_ref[0], rtol=1e-6, atol=1e-6)
        rows = x[positions]
        expected, _ = phi3_apply_rotary(rows, rows, cos_ref[0], sin_ref[0], unsqueeze_dim=1)
        torch.testing.assert_close(apply_rotary(rows, cos, sin), expected, rtol=1e-6, atol=1e-6)
    assert cos.shape[-1] == int(HEAD_DIM * partial_rotary_factor) // 2


def test_gemma3_local_and_global_layers_have_their_own_rope():
    """Sliding layers rotate with the local base, full layers with the global base and its
    linear scaling, as Gemma 3's per-layer-type rope parameters say."""
    config = Gemma3TextConfig(
        hidden_size=128,
        num_attention_heads=4,
        head_dim=HEAD_DIM,
        max_position_embeddings=256,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0},
        },
    )
    theirs = Gemma3RotaryEmbedding(config)
    positions = torch.arange(config.max_position_embeddings)
    x = torch.randn(len(positions), 1, HEAD_DIM)
    tables = {}
    for layer_type in ("sliding_attention", "full_attention"):
        cos_ref, sin_ref = theirs(x, positions[None], layer_type)
        cos, sin = RotaryEmbedding(config, HEAD_DIM, layer_type).lookup(positions, torch.float32)
        torch.testing.assert_close(full_width(cos), cos_ref[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(full_width(sin), sin_ref[0], rtol=1e-6, atol=1e-6)
        tables[layer_type] = cos
    assert not torch.allclose(tables["sliding_attention"], tables["full_attention"])


def test_unsupported_rope_type_names_the_supported_ones():
    config = make_config("default")
    config.rope_parameters = {"rope_type": "ntk-by-parts", "rope_theta": 10000.0}
    with pytest.raises(
        ValueError, match="'ntk-by-parts' is not supported; supported: default, linear"
    ):
        RotaryEmbedding(config, HEAD_DIM)
