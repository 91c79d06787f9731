"""Ray Data LLM 2.60's configs as llmbatch takes them: the same fields and defaults, unknown
keys and bad values rejected with an error naming them, SGLang's names mapped, and settings that
do nothing on one host said so once."""

from __future__ import annotations

import logging
import pickle

import pytest

from llmbatch.llm import (
    ChatTemplateStageConfig,
    HttpRequestProcessorConfig,
    PrepareMultimodalStageConfig,
    ProcessorConfig,
    SGLangEngineProcessorConfig,
    TokenizerStageConfig,
    build_llm_processor,
    build_processor,
    vLLMEngineProcessorConfig,
)
from llmbatch.llm.placement import placement_group_resources
from llmbatch.llm.sglang import sampling_params_from_sglang

MODEL = "some/model"


def test_the_2_60_fields_have_ray_s_defaults():
    config = vLLMEngineProcessorConfig(model_source=MODEL)
    assert (config.task_type, config.log_engine_metrics, config.max_concurrent_batches) == (
        "generate",
        True,
        8,
    )
    assert config.get_concurrency() == {"min_size": 1, "max_size": 1}
    chat, tokenize, detokenize, multimodal = config.stage_configs()
    assert (chat.enabled, tokenize.enabled, detokenize.enabled, multimodal.enabled) == (
        True,
        True,
        True,
        False,
    )
    assert PrepareMultimodalStageConfig().chat_template_content_format == "string"
    assert ChatTemplateStageConfig().enabled and ChatTemplateStageConfig().chat_template is None


def test_should_continue_on_error_defaults_to_the_builder_s_behaviour():
    config = vLLMEngineProcessorConfig(model_source=MODEL)
    current = config.stage_plan(ray_outputs=True, chat_template_kwargs=None)
    older = config.stage_plan(ray_outputs=False, chat_template_kwargs=None)
    assert (current.stop_on_error, current.error_column, current.ray_columns) == (True, False, True)
    assert (older.stop_on_error, older.error_column, older.ray_columns) == (False, False, False)
    explicit = vLLMEngineProcessorConfig(model_source=MODEL, should_continue_on_error=True)
    plan = explicit.stage_plan(ray_outputs=True, chat_template_kwargs=None)
    assert (plan.stop_on_error, plan.error_column) == (False, True)


@pytest.mark.parametrize("task_type", ["embed", "classify"])
def test_pooling_task_types_choose_the_engine_s_task(task_type):
    config = vLLMEngineProcessorConfig(model_source=MODEL, task_type=task_type)
    assert config.engine_kwargs_with_vllm_names()["task"] == task_type
    chosen = vLLMEngineProcessorConfig(
        model_source=MODEL, task_type=task_type, engine_kwargs={"runner": "pooling"}
    )
    assert "task" not in chosen.engine_kwargs_with_vllm_names()


def test_score_task_type_points_to_llm_score():
    with pytest.raises(ValueError, match="score pairs with llmbatch.LLM.score"):
        vLLMEngineProcessorConfig(model_source=MODEL, task_type="score")


def test_an_unknown_task_type_lists_ray_s():
    with pytest.raises(ValueError, match="accepted: 'generate', 'embed', 'classify'"):
        vLLMEngineProcessorConfig(model_source=MODEL, task_type="chat")
    with pytest.raises(ValueError, match="accepted: 'generate'"):
        SGLangEngineProcessorConfig(model_source=MODEL, task_type="embed")


@pytest.mark.parametrize(
    ("kwargs", "error", "expected"),
    [
        (
            dict(chat_template_stage={"enabled": True, "template": "x"}),
            TypeError,
            r"chat_template_stage: ChatTemplateStageConfig got unknown field\(s\) 'template'; "
            r"accepted fields: enabled, batch_size, concurrency, runtime_env, num_cpus, memory, "
            r"model_source, chat_template, chat_template_kwargs",
        ),
        (
            dict(tokenize_stage="yes"),
            TypeError,
            "tokenize_stage must be bool or dict or TokenizerStageConfig or None",
        ),
        (dict(detokenize_stage={"enabled": "no"}), TypeError, "enabled must be bool"),
        (
            dict(tokenize=False, tokenize_stage=TokenizerStageConfig()),
            ValueError,
            r"give tokenize_stage or the older tokenize field\(s\), not both",
        ),
        (
            dict(prepare_multimodal_stage=True, tokenize_stage=False),
            ValueError,
            "prepare_multimodal_stage needs tokenize_stage.enabled",
        ),
        (
            dict(prepare_multimodal_stage={"chat_template_content_format": "html"}),
            ValueError,
            "chat_template_content_format='html'; accepted: 'string', 'openai'",
        ),
        (
            dict(dynamic_lora_loading_path="s3://adapters"),
            ValueError,
            "adapters are read from a local folder",
        ),
        (
            dict(dynamic_lora_loading_path="."),
            ValueError,
            "needs engine_kwargs enable_lora=True",
        ),
        (dict(max_tasks_in_flight_per_actor=0), ValueError, "must be >= 1"),
        (dict(should_continue_on_error="yes"), TypeError, "must be bool or None"),
    ],
)
def test_bad_2_60_fields_are_clear_errors(kwargs, error, expected):
    with pytest.raises(error, match=expected):
        vLLMEngineProcessorConfig(model_source=MODEL, **kwargs)


def test_task_type_in_engine_kwargs_is_taken_out(caplog):
    with caplog.at_level(logging.WARNING, logger="llmbatch"):
        config = vLLMEngineProcessorConfig(
            model_source=MODEL, engine_kwargs={"task_type": "embed", "max_model_len": 64}
        )
    assert config.engine_kwargs == {"max_model_len": 64}
    assert "task_type set in engine kwargs (embed) is different" in caplog.text


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        ({"strategy": "PACK"}, "exactly one of 'bundle_per_worker'"),
        (
            {"bundle_per_worker": {"GPU": 1}, "bundles": [{"GPU": 1}]},
            "exactly one of 'bundle_per_worker'",
        ),
        ({"bundles": [{"GPU": 1}], "strategy": "CLOSE"}, "accepted: PACK, SPREAD"),
        ({"bundles": [{"GPU": -1}]}, "resource 'GPU' must be a non-negative number"),
        ({"bundles": [{"GPU": 1}], "label": "x"}, r"unknown key\(s\) \['label'\]"),
    ],
)
def test_placement_group_config_is_checked_as_ray_checks_it(placement, expected):
    with pytest.raises(ValueError, match=expected):
        vLLMEngineProcessorConfig(model_source=MODEL, placement_group_config=placement)


def test_placement_group_bundles_become_one_actor_s_resources():
    config = vLLMEngineProcessorConfig(
        model_source=MODEL,
        placement_group_config={"bundle_per_worker": {"GPU": 1, "CPU": 2, "TPU": 0.5}},
    )
    placement = config.placement_group_config
    assert placement == {
        "bundle_per_worker": {"CPU": 2.0, "GPU": 1.0, "TPU": 0.5},
        "bundles": None,
        "strategy": "PACK",
    }
    assert placement_group_resources(placement, workers=2) == {
        "num_cpus": 4.0,
        "num_gpus": 2.0,
        "resources": {"TPU": 1.0},
    }


def test_configs_pickle_by_their_fields():
    config = vLLMEngineProcessorConfig(
        model_source=MODEL, chat_template_stage=ChatTemplateStageConfig(chat_template="t")
    )
    assert pickle.loads(pickle.dumps(config)) == config


def test_the_base_config_is_not_built_directly():
    with pytest.raises(TypeError, match="build a vLLMEngineProcessorConfig"):
        ProcessorConfig(batch_size=8)


def test_sglang_engine_kwargs_map_onto_the_engine_s():
    config = SGLangEngineProcessorConfig(
        model_source=MODEL,
        engine_kwargs={
            "tp_size": 2,
            "context_length": 2048,
            "mem_fraction_static": 0.8,
            "max_running_requests": 64,
            "chunked_prefill_size": -1,
            "disable_radix_cache": True,
            "attention_backend": "torch_native",
            "page_size": 32,
            "max_total_tokens": 1000,
            "skip_tokenizer_init": True,
            "random_seed": 3,
        },
    )
    assert config.engine_kwargs_with_vllm_names() == {
        "tensor_parallel_size": 2,
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.8,
        "max_num_seqs": 64,
        "enable_chunked_prefill": False,
        "enable_prefix_caching": False,
        "attention_backend": "torch",
        "block_size": 32,
        "num_gpu_blocks_override": 32,
        "seed": 3,
    }


@pytest.mark.parametrize(
    ("engine_kwargs", "expected"),
    [
        ({"max_model_len": 64}, r"unknown SGLang engine argument\(s\) \['max_model_len'\]"),
        ({"dp_size": 2}, "set concurrency=2 instead"),
        ({"attention_backend": "flashinfer"}, "accepted: 'triton', 'torch_native'"),
        ({"model_path": "other"}, "give the model only as model_source"),
    ],
)
def test_sglang_engine_kwargs_without_a_counterpart_are_errors(engine_kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        SGLangEngineProcessorConfig(model_source=MODEL, engine_kwargs=engine_kwargs)


def test_sglang_sampling_params_map_onto_vllm_s():
    assert sampling_params_from_sglang({"temperature": 0.5}) == {
        "temperature": 0.5,
        "max_tokens": 128,
    }
    mapped = sampling_params_from_sglang(
        {"max_new_tokens": 8, "min_new_tokens": 2, "no_stop_trim": True, "json_schema": "{}"}
    )
    assert mapped == {
        "max_tokens": 8,
        "min_tokens": 2,
        "include_stop_str_in_output": True,
        "structured_outputs": {"json": "{}"},
    }
    with pytest.raises(
        ValueError, match=r"unknown SGLang sampling parameter\(s\) \['max_tokens'\]"
    ):
        sampling_params_from_sglang({"max_tokens": 8})


@pytest.mark.parametrize(
    ("builder_kwargs", "error", "expected"),
    [
        ({"preprocess": print}, ValueError, "builder_kwargs cannot contain"),
        ({"chat_template_kwarg": {}}, TypeError, "accepted: chat_template_kwargs"),
        ({"chat_template_kwargs": "x"}, TypeError, "chat_template_kwargs must be a dict"),
    ],
)
def test_builder_kwargs_are_checked(builder_kwargs, error, expected):
    config = vLLMEngineProcessorConfig(model_source=MODEL)
    with pytest.raises(error, match=expected):
        build_processor(config, builder_kwargs=builder_kwargs)


def test_fields_used_only_on_ray_are_reported_once_at_build(caplog):
    config = vLLMEngineProcessorConfig(
        model_source=MODEL,
        placement_group_config={"bundles": [{"GPU": 1}]},
        chat_template_stage={"num_cpus": 2},
    )
    with caplog.at_level(logging.WARNING, logger="llmbatch"):
        build_llm_processor(config, preprocess_map_kwargs={"num_cpus": 0.5})
    [record] = [r for r in caplog.records if "no effect" in r.message]
    assert "placement_group_config has no effect in one process" in record.message
    assert "chat_template_stage.num_cpus=2 have no effect" in record.message
    assert "preprocess_map_kwargs have no effect" in record.message


KEY = "sk-test-0123456789"


def test_http_config_never_shows_its_credentials():
    config = HttpRequestProcessorConfig(
        url="https://user:hunter22@api.example.com/v1/chat/completions?api-key=query-secret",
        headers={"Authorization": f"Bearer {KEY}"},
        qps=5,
    )
    shown = repr(config)
    for secret in (KEY, "hunter22", "query-secret"):
        assert secret not in shown
        assert secret not in str(config.identity())
        assert config.redact(f"echo: {secret}") == "echo: ***"
    assert "api.example.com/v1/chat/completions" in shown
    rotated = HttpRequestProcessorConfig(
        url=config.url.replace("query-secret", "other"), headers={"Authorization": "Bearer new"}
    )
    assert rotated.identity()["url"] == config.identity()["url"]


@pytest.mark.parametrize(
    ("kwargs", "error", "expected"),
    [
        (dict(url="ftp://x"), ValueError, r"url must be an http\(s\) URL"),
        (dict(url="http://x", qps=0), ValueError, "qps must be > 0"),
        (dict(url="http://x", max_retries=-1), ValueError, "max_retries must be >= 0"),
        (dict(url="http://x", headers={"X-Try": 1}), TypeError, "headers must map str names"),
        (dict(url="http://x", http_request_stage=False), ValueError, "cannot be disabled"),
        (dict(url="http://x", model_source=MODEL), TypeError, r"unknown field\(s\) 'model_source'"),
        (dict(batch_size=4), TypeError, "needs url"),
    ],
)
def test_bad_http_fields_are_clear_errors(kwargs, error, expected):
    with pytest.raises(error, match=expected):
        HttpRequestProcessorConfig(**kwargs)


def test_http_config_has_ray_s_defaults():
    config = HttpRequestProcessorConfig(url="http://127.0.0.1/v1/completions")
    assert (config.batch_size, config.qps, config.max_retries) == (64, None, 0)
    assert config.base_retry_wait_time_in_s == 1 and config.max_in_flight == 64
    with pytest.raises(TypeError, match="accepted: none"):
        build_processor(config, builder_kwargs={"chat_template_kwargs": {}})
