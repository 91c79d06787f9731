"""load_model: sources (folders, shards, GGUF cache, Hub ids), dummy weights, dtypes and errors."""

from __future__ import annotations

import json
import os

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import save_tiny_model, tiny_configs
from transformers import GenerationConfig, GPT2Config, LlamaConfig

from llmbatch._fixtures.smollm2 import smollm2_gguf_path
from llmbatch.models import SUPPORTED_ARCHITECTURES, load_model
from llmbatch.models import gguf as gguf_module
from llmbatch.models.gguf import converted_folder_path, converted_gguf_folder
from llmbatch.models.loader import resolve_dtype


@pytest.fixture(scope="module")
def qwen2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2")
    save_tiny_model(folder, tiny_configs()["qwen2-bias-tied"])
    return folder


def parameters_of(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same_parameters(a, b) -> None:
    pa, pb = parameters_of(a), parameters_of(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name


# --- sources --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["sharded with index", "sharded without index", "pytorch bin"])
def test_weight_layouts_load_the_same_parameters(layout, qwen2_folder, tmp_path):
    config = tiny_configs()["qwen2-bias-tied"]
    if layout == "pytorch bin":
        hf_model = save_tiny_model(tmp_path, config)
        torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
        (tmp_path / "model.safetensors").unlink()
    else:
        save_tiny_model(tmp_path, config, max_shard_size="40KB")
        assert len(list(tmp_path.glob("*.safetensors"))) > 2
        if layout == "sharded without index":
            (tmp_path / "model.safetensors.index.json").unlink()
    assert_same_parameters(load_model(str(tmp_path)).model, load_model(str(qwen2_folder)).model)


def test_gguf_conversion_is_cached_and_not_repeated(smollm2_dir, monkeypatch):
    def fail(*args):
        raise AssertionError("the cached conversion should have been used")

    monkeypatch.setattr(gguf_module, "convert_gguf", fail)
    loaded = load_model(smollm2_gguf_path())
    assert loaded.path == smollm2_dir
    assert loaded.model.vocab_size == 49152


def test_gguf_conversion_is_atomic_and_keyed_by_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBATCH_CACHE_DIR", str(tmp_path / "cache"))
    gguf_file = tmp_path / "tiny.gguf"
    gguf_file.write_bytes(b"GGUF stand-in")
    conversions = []

    def interrupted(path, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    def convert(path, out_dir):
        conversions.append(path)
        save_tiny_model(out_dir, tiny_configs()["qwen2-bias-tied"])

    monkeypatch.setattr(gguf_module, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        converted_gguf_folder(gguf_file)
    assert list((tmp_path / "cache" / "gguf").iterdir()) == [], "a partial folder was left"

    monkeypatch.setattr(gguf_module, "convert_gguf", convert)
    first = load_model(str(gguf_file))
    second = load_model(str(gguf_file))
    assert len(conversions) == 1
    assert first.path == second.path == str(converted_folder_path(gguf_file))

    os.utime(gguf_file, ns=(0, 10**18))  # a changed file is a different model
    assert converted_gguf_folder(gguf_file) != first.path
    assert len(conversions) == 2


# --- dummy weights --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_only_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("config-only")
    tiny_configs()["llama3-rope-scaling"].save_pretrained(folder)
    return folder


def test_dummy_weights_need_only_a_config_and_follow_the_seed(config_only_folder):
    first = load_model(str(config_only_folder), load_format="dummy", seed=7)
    again = load_model(str(config_only_folder), load_format="dummy", seed=7)
    other = load_model(str(config_only_folder), load_format="dummy", seed=8)
    assert first.tokenizer is None
    assert first.eos_token_ids == [2]
    assert_same_parameters(first.model, again.model)
    weight = first.model.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(weight, other.model.model.layers[0].mlp.down_proj.weight)
    assert abs(weight.std().item() - 0.02) < 0.002
    assert torch.all(first.model.model.layers[0].input_layernorm.weight == 1)
    assert torch.all(first.model.model.norm.weight == 1)


# --- dtypes ---------------------------------------------------------------------------------------


def test_bfloat16_load_keeps_the_global_default_dtype(qwen2_folder):
    loaded = load_model(str(qwen2_folder), dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
    assert load_model(str(qwen2_folder), dtype=torch.float16).dtype == torch.float16


def test_auto_dtype_is_float32_on_cpu_and_the_checkpoints_on_gpu():
    config = LlamaConfig(dtype="bfloat16")
    assert resolve_dtype("auto", config, torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", config, torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", LlamaConfig(), torch.device("cuda")) == torch.float32


# --- metadata -------------------------------------------------------------------------------------


def test_eos_ids_join_generation_config_and_tokenizer(qwen2_folder, tmp_path):
    save_tiny_model(tmp_path, tiny_configs()["qwen2-bias-tied"])
    GenerationConfig(eos_token_id=[5, 2]).save_pretrained(tmp_path)
    assert load_model(str(tmp_path)).eos_token_ids == [5, 2]
    assert load_model(str(qwen2_folder)).eos_token_ids == [2]


# --- errors ---------------------------------------------------------------------------------------


def test_bad_dtype_lists_the_accepted_ones(qwen2_folder):
    accepted = "accepted: auto, float32, float, float16, half, bfloat16 or one of torch.float32"
    with pytest.raises(ValueError, match=accepted):
        load_model(str(qwen2_folder), dtype="float8")
    with pytest.raises(ValueError, match=accepted):
        load_model(str(qwen2_folder), dtype=torch.int8)


def test_own_code_only_names_the_architectures_it_has(tmp_path):
    GPT2Config(architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match="GPT2LMHeadModel.*has no llmbatch implementation"
    ) as error:
        load_model(str(tmp_path), load_format="dummy", model_impl="llmbatch")
    assert all(name in str(error.value) for name in SUPPORTED_ARCHITECTURES)
    assert "model_impl='transformers'" in str(error.value)


def test_missing_path_that_is_no_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist and is not a valid Hugging Face"):
        load_model(str(tmp_path / "no" / "such" / "model"))


def test_hub_id_while_offline_says_how_to_give_a_local_path(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="downloading it from the Hugging Face Hub failed") as error:
        load_model("llmbatch-tests/no-such-model")
    assert "pass the path of its folder" in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"load_format": "npcache"}, "load_format 'npcache' is not supported"),
        ({"attention_backend": "flash"}, "unknown attention backend 'flash'"),
        ({"revision": "main"}, "revision='main' applies to Hub ids only"),
    ],
)
def test_bad_options_are_named(qwen2_folder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_model(str(qwen2_folder), **kwargs)


def test_folders_and_files_that_are_not_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file but not a .gguf file"):
        load_model(str(tmp_path / "weights.bin"))


def test_checkpoint_problems_are_named(qwen2_folder, tmp_path):
    config = json.loads((qwen2_folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="has no tokenizer files"):
        load_model(str(tmp_path))

    for name in ["tokenizer.json", "tokenizer_config.json"]:
        (tmp_path / name).write_bytes((qwen2_folder / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="no weight files .* load_format='dummy'"):
        load_model(str(tmp_path))

    weights = load_file(qwen2_folder / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacks weights the model needs: \['model.norm.weight'\]"):
        load_model(str(tmp_path), load_format="safetensors")

    (tmp_path / "config.json").write_text(json.dumps(config | {"intermediate_size": 80}))
    with pytest.raises(ValueError, match=r"down_proj.weight has shape \(64, 96\), but the config"):
        load_model(str(tmp_path))


def test_checkpoints_quantized_in_unsupported_formats_are_refused(tmp_path):
    config = tiny_configs()["mistral-sliding-window"]
    config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"quantized with bitsandbytes .* cannot run; supported"):
        load_model(str(tmp_path), load_format="dummy")


def test_unsupported_activation_is_named(tmp_path):
    config = tiny_configs()["mistral-sliding-window"]
    config.hidden_act = "gelu"
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="activation 'gelu' is not supported; supported: silu"):
        load_model(str(tmp_path), load_format="dummy")
