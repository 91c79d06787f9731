"""The ``quantization`` engine argument (vLLM's names): read from the checkpoint, checked against
it, and a clear error for every format llmbatch cannot run."""

from __future__ import annotations

import json

import pytest
from quantized_checkpoints import quantization_configs, save_quantized_model
from tiny_models import save_tiny_model

from llmbatch import LLM
from llmbatch.engine.args import EngineArgs
from llmbatch.engine.config import resolve_config
from llmbatch.models.quant_formats import resolve_quantization

LLAMA = quantization_configs()["llama"]


def with_quantization_config(config, quantization_config: dict):
    config = type(config).from_dict(config.to_dict())
    config.quantization_config = quantization_config
    return config


@pytest.fixture(scope="module")
def awq_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("awq")
    save_quantized_model(folder, LLAMA, "awq-g128")
    return str(folder)


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("plain")
    save_tiny_model(folder, LLAMA)
    return str(folder)


def test_unknown_quantization_names_the_accepted_ones():
    with pytest.raises(ValueError, match="quantization='int8' is not supported; accepted: 'fp8'"):
        EngineArgs(model="m", quantization="int8")


def test_quantization_is_read_from_the_checkpoint(awq_folder, plain_folder):
    assert resolve_config(EngineArgs(model=awq_folder)).quantization == "awq"
    # vLLM's names of other kernels for the same format are accepted
    assert resolve_config(EngineArgs(model=awq_folder, quantization="awq_marlin")).quantization
    assert resolve_config(EngineArgs(model=plain_folder)).quantization is None
    online = resolve_config(EngineArgs(model=plain_folder, quantization="fp8"))
    assert online.quantization == "fp8"


def test_quantization_that_does_not_match_the_checkpoint_is_an_error(awq_folder, plain_folder):
    with pytest.raises(ValueError, match=r"quantization='gptq' does not match .* AWQ 4-bit"):
        resolve_config(EngineArgs(model=awq_folder, quantization="gptq"))
    with pytest.raises(ValueError, match=r"quantization='fp8' does not match"):
        resolve_config(EngineArgs(model=awq_folder, quantization="fp8"))
    with pytest.raises(ValueError, match="needs a checkpoint quantized with awq.*full-precision"):
        resolve_config(EngineArgs(model=plain_folder, quantization="awq"))


def test_quantized_weights_need_llmbatch_model_code(awq_folder):
    with pytest.raises(ValueError, match="run on llmbatch's own model code only"):
        resolve_config(EngineArgs(model=awq_folder, model_impl="transformers"))


@pytest.mark.parametrize(
    ("quantization_config", "message"),
    [
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "quantized with bitsandbytes"),
        (
            {"quant_method": "fp8", "weight_block_size": [128, 128]},
            r"FP8 with block-wise weight scales \(weight_block_size=\[128, 128\]\)",
        ),
        ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "GPTQ with 8 bits"),
        ({"quant_method": "gptq", "bits": 4, "lm_head": True}, "GPTQ with a quantized lm_head"),
        ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "version 'gemv'"),
        ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "ModelOpt quant_algo 'NVFP4'"),
        (
            {
                "quant_method": "compressed-tensors",
                "format": "int-quantized",
                "config_groups": {
                    "group_0": {
                        "targets": ["Linear"],
                        "weights": {"num_bits": 8, "type": "int", "strategy": "channel"},
                        "input_activations": {"num_bits": 8, "type": "int", "dynamic": True},
                    }
                },
            },
            "compressed-tensors int-quantized int8",
        ),
        (
            {
                "quant_method": "compressed-tensors",
                "format": "float-quantized",
                "config_groups": {
                    "group_0": {
                        "targets": ["Linear"],
                        "weights": {"num_bits": 8, "type": "float", "strategy": "block"},
                    }
                },
            },
            "float8 .block weights., asymmetric or block-wise",
        ),
    ],
)
def test_unsupported_formats_are_named(quantization_config, message):
    config = with_quantization_config(LLAMA, quantization_config)
    with pytest.raises(ValueError, match=message) as error:
        resolve_quantization("folder", config, None)
    assert "supported:" in str(error.value)


def test_modelopt_legacy_config_file_is_read(tmp_path):
    save_tiny_model(tmp_path, LLAMA)
    (tmp_path / "hf_quant_config.json").write_text(
        json.dumps({"quantization": {"quant_algo": "FP8", "exclude_modules": ["lm_head"]}})
    )
    quantization = resolve_quantization(str(tmp_path), LLAMA, None)
    assert quantization.method == "modelopt"


@pytest.mark.parametrize(
    ("quantization_config", "quantized", "full_precision"),
    [
        (  # compressed-tensors: exact names, regular expressions from the start
            {
                "quant_method": "compressed-tensors",
                "format": "float-quantized",
                "config_groups": {
                    "group_0": {
                        "targets": ["Linear"],
                        "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
                    }
                },
                "ignore": ["lm_head", "re:.*mlp.gate$", "model.layers.1.self_attn.o_proj"],
            },
            ["model.layers.0.mlp.gate_proj", "model.layers.0.self_attn.o_proj"],
            ["model.layers.0.mlp.gate", "model.layers.1.self_attn.o_proj"],
        ),
        (  # transformers' modules_to_not_convert: up to a module boundary, or a suffix
            {
                "quant_method": "awq",
                "bits": 4,
                "modules_to_not_convert": ["gate", "model.layers.1"],
            },
            ["model.layers.0.mlp.gate_proj", "model.layers.11.mlp.down_proj"],
            ["model.layers.0.mlp.gate", "model.layers.1.mlp.down_proj"],
        ),
        (  # ModelOpt's wildcards
            {"quant_method": "modelopt", "quant_algo": "FP8", "ignore": ["*.mlp.gate", "lm_head"]},
            ["model.layers.0.mlp.gate_proj"],
            ["model.layers.3.mlp.gate"],
        ),
    ],
)
def test_which_layers_a_checkpoint_quantizes(quantization_config, quantized, full_precision):
    quantization = resolve_quantization(
        "folder", with_quantization_config(LLAMA, quantization_config), None
    )
    assert all(quantization.layer_of(name) is not None for name in quantized)
    assert all(quantization.layer_of(name) is None for name in full_precision)


def test_projections_merged_into_one_layer_must_share_their_quantization(tmp_path):
    save_quantized_model(tmp_path, LLAMA, "ct-fp8-dynamic")
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["ignore"].append("re:.*k_proj$")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"quantizes .*q_proj, .*k_proj, .*v_proj differently"):
        LLM(str(tmp_path), load_format="dummy", kv_cache_memory_bytes=1 << 20)


def test_four_bit_experts_are_an_error(tmp_path):
    from tiny_models import family_configs

    config = with_quantization_config(
        family_configs()["qwen3-moe-top2"], {"quant_method": "gptq", "bits": 4, "group_size": 32}
    )
    config.save_pretrained(tmp_path)  # the config alone: the error comes before any weight
    with pytest.raises(ValueError, match="GPTQ 4-bit .* mixture-of-experts weights are not"):
        LLM(str(tmp_path), load_format="dummy", kv_cache_memory_bytes=1 << 20)
