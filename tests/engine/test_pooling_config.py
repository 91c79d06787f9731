"""How runner, convert, task and pooler_config resolve against a checkpoint, and the settings
pooling models and LoRA refuse, each with an error naming what to change."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import random_prompts, save_tiny_model, tiny_configs
from tiny_pooling import bert_config, qwen3_config, save_base_model, write_sentence_transformers

from llmbatch import LLM
from llmbatch.engine.args import EngineArgs
from llmbatch.engine.config import resolve_config


def resolve(folder, **kwargs):
    return resolve_config(EngineArgs(model=str(folder), load_format="dummy", **kwargs))


@pytest.fixture(scope="module")
def causal_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("causal")
    qwen3_config(architectures=["Qwen3ForCausalLM"]).save_pretrained(folder)
    return folder


def test_a_causal_lm_generates_unless_asked_to_pool(causal_folder):
    assert resolve(causal_folder).pooler is None
    for kwargs in (dict(runner="pooling"), dict(task="embed"), dict(convert="embed")):
        pooler = resolve(causal_folder, **kwargs).pooler
        assert (pooler.task, pooler.pooling_type, pooler.normalize) == ("embed", "LAST", True)
    assert resolve(causal_folder, runner="pooling", convert="classify").pooler is not None


def test_sentence_transformers_files_make_a_pooling_model(tmp_path):
    qwen3_config(architectures=["Qwen3ForCausalLM"]).save_pretrained(tmp_path)
    write_sentence_transformers(tmp_path, "mean_tokens", normalize=False)
    pooler = resolve(tmp_path).pooler
    assert (pooler.task, pooler.pooling_type, pooler.normalize) == ("embed", "MEAN", False)
    assert resolve(tmp_path, pooler_config={"pooling_type": "LAST"}).pooler.pooling_type == "LAST"
    assert resolve(tmp_path, task="generate").pooler is None


def test_an_encoder_runs_on_its_transformers_code(tmp_path):
    bert_config(architectures=["BertModel"]).save_pretrained(tmp_path)
    config = resolve(tmp_path)
    assert config.pooler.encoder and config.pooler.pooling_type == "CLS"
    assert config.model_impl == "transformers" and config.max_model_len == 128


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(runner="generate", convert="embed"), "convert='embed' needs runner='pooling'"),
        (dict(runner="generate", task="embed"), "task='embed' contradicts runner='generate'"),
        (dict(task="generate", convert="embed"), "task='generate' contradicts convert='embed'"),
        (dict(task="classify", convert="embed"), "task='classify' contradicts convert='embed'"),
        (dict(runner="pool"), "runner='pool' is not supported; accepted: 'auto'"),
        (dict(runner="pooling", pooler_config={"pooling": "LAST"}), "pooler_config keys"),
        (dict(runner="pooling", pooler_config={"pooling_type": "MAX"}), "pooling_type='MAX'"),
        (
            dict(runner="pooling", tensor_parallel_size=2),
            "a pooling model runs with tensor_parallel",
        ),
        (dict(enable_lora=True, tensor_parallel_size=2), "LoRA runs with tensor_parallel_size=1"),
        (
            dict(enable_lora=True, model_impl="transformers"),
            "enable_lora needs llmbatch's own code",
        ),
        (dict(max_lora_rank=0), "max_lora_rank must be at least 1"),
        (dict(max_loras=4, max_cpu_loras=2), r"max_cpu_loras \(2\) must be at least max_loras"),
    ],
)
def test_settings_that_cannot_run_are_clear_errors(causal_folder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve(causal_folder, **kwargs)


def test_a_generative_checkpoint_embeds_without_its_lm_head(tmp_path):
    """convert="embed" on a causal LM with its own (untied) LM head: the head is not loaded,
    the decoder's last hidden state is the embedding."""
    config = tiny_configs()["llama3-rope-scaling"]
    model = save_tiny_model(tmp_path, config)
    prompts = random_prompts([6, 19], seed=1)
    with LLM(
        str(tmp_path), runner="pooling", convert="embed", kv_cache_memory_bytes=1 << 22
    ) as llm:
        outputs = llm.embed(prompts)
    for prompt, output in zip(prompts, outputs):
        with torch.no_grad():
            hidden = model.model(torch.tensor([prompt])).last_hidden_state[0, -1]
        torch.testing.assert_close(
            torch.tensor(output.outputs.embedding), F.normalize(hidden, dim=-1), atol=1e-5, rtol=0
        )


def test_a_classifier_checkpoint_without_its_head_says_so(tmp_path):
    save_base_model(tmp_path, qwen3_config(), pooling=None, architecture="Qwen3ForCausalLM")
    with pytest.raises(ValueError, match="lacks weights the model needs: .*score.weight"):
        LLM(str(tmp_path), runner="pooling", convert="classify", kv_cache_memory_bytes=1 << 22)
