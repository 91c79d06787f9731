"""A model that cannot fit, or a KV cache too small for one request, is a clear error before any
row, with the numbers and what to change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from quantized_checkpoints import quantization_configs, save_quantized_model
from safetensors import safe_open
from tiny_models import fallback_configs, save_tiny_model

import llmbatch.data as data
from llmbatch.engine.args import EngineArgs
from llmbatch.engine.config import resolve_config
from llmbatch.llm import LLMProcessorConfig, build_llm_processor
from llmbatch.runtime.device_memory import fit_problem, weight_bytes

GIB = 2**30
LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


@pytest.fixture(scope="module")
def llama_8b_shapes(tmp_path_factory) -> str:
    """A config.json of Llama 3.1 8B's shapes: enough for load_format='dummy'."""
    folder = tmp_path_factory.mktemp("llama-8b-shapes")
    (folder / "config.json").write_text(json.dumps(LLAMA_8B))
    return str(folder)


def test_weight_bytes_count_every_tensor_of_the_checkpoint(smollm2_dir):
    config = resolve_config(EngineArgs.from_kwargs(model=smollm2_dir, device="cpu"))
    with safe_open(Path(smollm2_dir) / "model.safetensors", "pt") as weights:
        shapes = [weights.get_slice(name).get_shape() for name in weights.keys()]
    elements = sum(torch.Size(shape).numel() for shape in shapes)
    assert config.dtype == torch.float32
    assert weight_bytes(config) == elements * 4


def test_weight_bytes_of_a_model_on_its_transformers_code(tmp_path):
    hf_model = save_tiny_model(tmp_path, fallback_configs()["granite"])
    config = resolve_config(EngineArgs.from_kwargs(model=str(tmp_path), device="cpu"))
    assert config.model_impl == "transformers"
    assert weight_bytes(config) == sum(p.numel() for p in hf_model.parameters()) * 4


def test_weight_bytes_of_a_4_bit_checkpoint_are_its_packed_weights(tmp_path):
    """AWQ's 4-bit layers count a quarter of their float32 bytes and more (scales, zero points),
    far less than the full-precision model: a 70B AWQ checkpoint fits one 80 GB card."""
    hf_model = save_quantized_model(tmp_path, quantization_configs()["llama"], "awq-g128")
    config = resolve_config(EngineArgs.from_kwargs(model=str(tmp_path), device="cpu"))
    assert config.quantization == "awq"
    linear = sum(
        module.weight.numel()
        for name, module in hf_model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    )
    full = sum(p.numel() for p in hf_model.parameters()) * 4
    packed = full - linear * 4 + linear // 2
    # the scales and zero points of groups of 128 add about 0.07 bytes per weight
    assert packed < weight_bytes(config) < packed + linear * 0.1


def test_llama_8b_on_a_tenth_of_an_80_gib_card_does_not_fit(llama_8b_shapes):
    config = resolve_config(
        EngineArgs.from_kwargs(
            model=llama_8b_shapes, load_format="dummy", device="cpu", dtype="bfloat16"
        )
    )
    weights = weight_bytes(config)
    assert weights == pytest.approx(8.03e9 * 2, rel=0.01)
    message = fit_problem(weights, 1, 80 * GIB, 1 * GIB, 0.1, "bfloat16")
    assert message.startswith("the model's weights do not fit the GPU: they need 14.96 GiB")
    assert "gpu_memory_utilization=0.1 of the GPU's 80.00 GiB leaves 7.00 GiB" in message
    assert "tensor_parallel_size=3" in message and "raise gpu_memory_utilization" in message
    assert fit_problem(weights, 1, 80 * GIB, 1 * GIB, 0.9, "bfloat16") is None
    assert fit_problem(weights, 4, 24 * GIB, 0, 0.9, "bfloat16") is None


def test_a_kv_cache_too_small_for_one_request_fails_before_any_row(smollm2_dir, tmp_path):
    seen = []

    def preprocess(row):
        seen.append(row)
        return {"prompt": "Hi", "sampling_params": {"max_tokens": 1}}

    config = LLMProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs={"device": "cpu", "max_model_len": 4096, "kv_cache_memory_bytes": 8 << 20},
    )
    processor = build_llm_processor(config, preprocess=preprocess)
    with pytest.raises(ValueError) as error:
        processor(data.range(3)).write_parquet(tmp_path / "out")
    message = str(error.value)
    # SmolLM2 keeps 2 x 30 layers x 3 KV heads x 64 x 4 bytes = 46080 bytes per token.
    assert message.startswith("the KV cache holds 176 tokens (11 blocks, 0.01 GiB at 46080 bytes")
    assert "fewer than one request of max_model_len=4096, which needs 0.18 GiB" in message
    assert "lower max_model_len to at most 176" in message
    assert "kv_cache_dtype='fp8'" in message and "raise kv_cache_memory_bytes" in message
    assert seen == [] and not list((tmp_path / "out").glob("*.parquet"))


@pytest.mark.gpu
def test_weights_that_cannot_fit_the_gpu_fail_before_loading(llama_8b_shapes):
    config = LLMProcessorConfig(
        model_source=llama_8b_shapes,
        engine_kwargs={"load_format": "dummy", "gpu_memory_utilization": 0.05, "dtype": "bfloat16"},
    )
    before = torch.cuda.memory_allocated()
    with pytest.raises(ValueError, match=r"weights do not fit the GPU: they need 14\.96 GiB"):
        build_llm_processor(config)(data.from_items([{"prompt": "Hi"}])).take_all()
    assert torch.cuda.memory_allocated() == before
