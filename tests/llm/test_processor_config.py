"""Processor configuration: accepted fields, clear errors, and fields that do nothing here."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from llmbatch.llm import LLMProcessorConfig, build_llm_processor, vLLMEngineProcessorConfig

MODEL = "some/model"


def test_the_tutorial_config_is_accepted_with_its_values():
    config = vLLMEngineProcessorConfig(
        model_source="unsloth/Llama-3.1-8B-Instruct",
        engine_kwargs=dict(max_model_len=4096, max_num_batched_tokens=1024),
        batch_size=256,
        accelerator_type="L4",
        concurrency=4,
    )
    assert isinstance(config, LLMProcessorConfig)
    assert (config.batch_size, config.concurrency, config.accelerator_type) == (256, 4, "L4")
    assert config.apply_chat_template and config.tokenize and config.detokenize
    assert repr(config).startswith("vLLMEngineProcessorConfig(")


def test_an_unknown_field_names_it_and_the_accepted_ones():
    with pytest.raises(TypeError, match="'max_tokens'") as info:
        vLLMEngineProcessorConfig(model_source=MODEL, max_tokens=5)
    assert "accepted fields: model_source, engine_kwargs, batch_size" in str(info.value)


def test_model_source_is_required():
    with pytest.raises(TypeError, match="needs model_source"):
        LLMProcessorConfig(batch_size=4)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("batch_size", "64", "batch_size must be int, got str"),
        ("batch_size", True, "batch_size must be int, got bool"),
        ("engine_kwargs", [("max_model_len", 8)], "engine_kwargs must be dict"),
        ("apply_chat_template", "yes", "apply_chat_template must be bool"),
        ("concurrency", (1, "4"), r"concurrency must be an int or a \(min, max\) pair"),
    ],
)
def test_a_bad_type_names_the_field(field, value, expected):
    with pytest.raises(TypeError, match=expected):
        LLMProcessorConfig(model_source=MODEL, **{field: value})


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(max_pending_requests=0), "max_pending_requests must be >= 1"),
        (dict(concurrency=(4, 2)), "needs 1 <= min <= max"),
        (dict(has_image=True, tokenize=False), "has_image=True needs tokenize=True"),
        (dict(model_source=""), "model_source must not be empty"),
        (dict(engine_kwargs={"model": "other/model"}), "give the model only as model_source"),
    ],
)
def test_a_bad_value_is_a_clear_error(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        LLMProcessorConfig(**{"model_source": MODEL, **kwargs})


def test_concurrency_accepts_a_min_max_pair():
    assert LLMProcessorConfig(model_source=MODEL, concurrency=[1, 3]).concurrency == (1, 3)


def test_an_unknown_engine_kwarg_fails_when_the_processor_is_built():
    config = LLMProcessorConfig(model_source=MODEL, engine_kwargs={"max_num_seq": 8})
    with pytest.raises(ValueError, match=r"unknown engine argument\(s\) \['max_num_seq'\]"):
        build_llm_processor(config)


def test_single_host_fields_are_reported_once_at_build(caplog):
    config = vLLMEngineProcessorConfig(
        model_source=MODEL, concurrency=4, accelerator_type="L4", runtime_env={"env_vars": {}}
    )
    with caplog.at_level(logging.WARNING, logger="llmbatch"):
        build_llm_processor(config)
    [record] = [r for r in caplog.records if "has no effect" in r.message]
    assert "accelerator_type='L4' has no effect" in record.message
    assert "runtime_env has no effect" in record.message


def test_preprocess_must_be_callable():
    with pytest.raises(TypeError, match="preprocess must be a function"):
        build_llm_processor(LLMProcessorConfig(model_source=MODEL), preprocess="messages")


def test_the_processor_takes_only_llmbatch_datasets():
    processor = build_llm_processor(LLMProcessorConfig(model_source=MODEL))
    with pytest.raises(TypeError, match="wrap rows with llmbatch.data.from_items"):
        processor(pd.DataFrame({"prompt": ["hi"]}))
