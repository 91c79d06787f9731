"""RMSNorm (alone and fused with the residual add, Llama's and Gemma's) and the gated
activations against transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, LlamaConfig
from transformers.models.gemma2.modeling_gemma2 import Gemma2MLP, Gemma2RMSNorm
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from llmbatch.layers.activation import act_and_mul
from llmbatch.layers.norm import RMSNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_and_fused_residual_match_transformers(dtype):
    theirs = LlamaRMSNorm(48, eps=1e-5)
    ours = RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        theirs.weight.normal_(1.0, 0.2)
        ours.weight.copy_(theirs.weight)
    theirs, ours = theirs.to(dtype), ours.to(dtype)
    x = torch.randn(7, 48, dtype=dtype) * 3
    residual = torch.randn(7, 48, dtype=dtype)
    assert torch.equal(ours(x), theirs(x))
    normed, new_residual = ours.add_and_norm(x, residual)
    assert torch.equal(new_residual, residual + x)
    assert torch.equal(normed, theirs(residual + x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemma_rms_norm_matches_transformers(dtype):
    """Gemma stores scale - 1 and scales in float32 before rounding: the same numbers, bit for
    bit, when the loaded weight holds 1 + the checkpoint's value in float32."""
    theirs = Gemma2RMSNorm(48, eps=1e-6)
    with torch.no_grad():
        theirs.weight.normal_(0.0, 0.2)
    theirs = theirs.to(dtype)
    ours = RMSNorm(48, eps=1e-6, float32_weight=True)
    with torch.no_grad():
        ours.weight.copy_(theirs.weight.float() + 1.0)
    assert ours.weight.dtype == torch.float32
    x = torch.randn(7, 48, dtype=dtype) * 3
    assert torch.equal(ours(x), theirs(x))


def test_silu_and_mul_matches_the_gated_mlp():
    config = LlamaConfig(hidden_size=16, intermediate_size=24, num_attention_heads=2)
    mlp = LlamaMLP(config)
    x = torch.randn(5, 16)
    gate_up = torch.cat([mlp.gate_proj(x), mlp.up_proj(x)], dim=-1)
    torch.testing.assert_close(mlp.down_proj(act_and_mul(gate_up)), mlp(x))


def test_gelu_tanh_and_mul_matches_gemmas_mlp():
    config = Gemma2Config(hidden_size=16, intermediate_size=24, num_attention_heads=2)
    mlp = Gemma2MLP(config)
    x = torch.randn(5, 16)
    gate_up = torch.cat([mlp.gate_proj(x), mlp.up_proj(x)], dim=-1)
    torch.testing.assert_close(mlp.down_proj(act_and_mul(gate_up, "gelu_pytorch_tanh")), mlp(x))
