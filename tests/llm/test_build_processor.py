"""A pipeline written for Ray Data LLM 2.60 (`build_processor`, stage configs as dicts and as
config objects, `chat_template_kwargs`, `prompt` rows, `should_continue_on_error` both ways,
`tokenization_kwargs`, SGLang's names) on the real SmolLM2: its rows are those of the older
spelling for the same input, with 2.60's columns added."""

from __future__ import annotations

import logging
import re

import pytest

import llmbatch.data as data
from llmbatch import SamplingParams
from llmbatch.llm import (
    DetokenizeStageConfig,
    RowFailed,
    SGLangEngineProcessorConfig,
    TokenizerStageConfig,
    build_llm_processor,
    build_processor,
    vLLMEngineProcessorConfig,
)
from llmbatch.llm.row_checks import rows_to_checked_table
from llmbatch.llm.tokenizer_stages import ChatTemplateStage

MAX_TOKENS = 4
GREEDY = {"temperature": 0.0, "max_tokens": MAX_TOKENS}
# A chat template with Qwen3's switch: enable_thinking=False writes an empty thinking block.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
NO_THINKING = {"enable_thinking": False}
WORDS = ["apples", "rivers", "clocks"]


def preprocess(row):
    """The tutorial's shape for rows with a word; other rows bring their own request."""
    if row.get("word") is None:
        return {}
    return dict(
        messages=[{"role": "user", "content": f"Say one word about {row['word']}."}],
        sampling_params=dict(GREEDY, detokenize=False),
    )


def postprocess(row):
    return dict(resp=row["generated_text"], **row)


def run(processor, items):
    return processor(data.from_items(items)).take_all()


@pytest.fixture(scope="module")
def older(smollm2_dir, engine_kwargs):
    """The older spelling: chat_template and build_llm_processor."""
    config = vLLMEngineProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs=engine_kwargs,
        batch_size=2,
        chat_template=THINKING_TEMPLATE,
    )
    builder_kwargs = {"chat_template_kwargs": NO_THINKING}
    with build_llm_processor(config, preprocess, postprocess, builder_kwargs=builder_kwargs) as p:
        yield p


@pytest.fixture(scope="module")
def current(smollm2_dir, engine_kwargs):
    """Ray Data LLM 2.60's spelling: stage configs as a dict and as config objects."""
    config = vLLMEngineProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs=engine_kwargs,
        batch_size=2,
        chat_template_stage={
            "chat_template": THINKING_TEMPLATE,
            "chat_template_kwargs": NO_THINKING,
        },
        tokenize_stage=TokenizerStageConfig(enabled=True),
        detokenize_stage=DetokenizeStageConfig(),
        should_continue_on_error=True,
    )
    with build_processor(config, preprocess=preprocess, postprocess=postprocess) as processor:
        yield processor


def test_a_2_60_pipeline_gives_the_older_spellings_rows(older, current, reference_llm):
    items = [{"word": word} for word in WORDS]
    older_rows, rows = run(older, items), run(current, items)

    assert len(rows) == len(older_rows) == len(WORDS)
    for row, older_row in zip(rows, older_rows):
        for name in ("word", "prompt", "generated_tokens", "generated_text", "resp"):
            assert row[name] == older_row[name]
        assert row["prompt"].endswith("<|assistant|><think>\n\n</think>\n\n")
        assert row["num_input_tokens"] == len(row["prompt_token_ids"])
        assert row["error"] is None and row["__inference_error__"] == ""
        assert "temperature=0.0" in row["params"] and "max_tokens=4" in row["params"]
    assert sorted(row["request_id"] for row in rows) == [0, 1, 2]
    assert "prompt_token_ids" not in older_rows[0] and "__inference_error__" not in older_rows[0]
    expected = reference_llm.generate([row["prompt"] for row in rows], SamplingParams(**GREEDY))
    assert [row["generated_tokens"] for row in rows] == [out.token_ids for out in expected]


def test_chat_template_kwargs_reach_the_template(reference_llm):
    messages = [{"role": "user", "content": "Hi"}]
    table = rows_to_checked_table([{"messages": messages}], "preprocess")

    def prompt(kwargs):
        stage = ChatTemplateStage(
            reference_llm.get_tokenizer, True, THINKING_TEMPLATE, False, kwargs
        )
        return next(iter(stage(iter([table])))).column("prompt")[0].as_py()

    assert prompt(NO_THINKING) == "<|user|>Hi\n<|assistant|><think>\n\n</think>\n\n"
    assert prompt({"enable_thinking": True}) == prompt(None) == "<|user|>Hi\n<|assistant|>"


def test_prompt_rows_and_an_assistant_prefill(current, reference_llm):
    items = [
        {"prompt": "The capital of France is", "sampling_params": GREEDY},
        {
            "messages": [
                {"role": "user", "content": "Name a fruit."},
                {"role": "assistant", "content": "The fruit is"},
            ],
            "sampling_params": GREEDY,
        },
    ]
    raw, prefill = run(current, items)

    assert raw["prompt"] == "The capital of France is"
    assert prefill["prompt"] == "<|user|>Name a fruit.\n<|assistant|>The fruit is"
    expected = reference_llm.generate([raw["prompt"], prefill["prompt"]], SamplingParams(**GREEDY))
    assert raw["generated_tokens"] == expected[0].token_ids
    assert prefill["generated_text"] == expected[1].text


def request(word: str, temperature: float) -> dict:
    return {
        "messages": [{"role": "user", "content": f"Say {word}."}],
        "sampling_params": {"temperature": temperature, "max_tokens": MAX_TOKENS},
        "tag": word,
    }


BAD_ROWS = [request("ok", 0.0), request("bad", -1.0), request("fine", 0.0)]


def test_should_continue_on_error_writes_ray_s_error_rows(current):
    ok, bad, fine = run(current, BAD_ROWS)

    assert ok["__inference_error__"] == fine["__inference_error__"] == ""
    assert ok["error"] is None and fine["resp"] == fine["generated_text"]
    assert bad["error"] == bad["__inference_error__"]
    assert bad["error"].startswith("sampling_params: ValueError: temperature must be >= 0")
    # Error rows skip postprocess and keep their columns, with Ray's defaults in the others.
    assert bad["tag"] == "bad" and bad["resp"] is None
    assert (bad["generated_text"], bad["generated_tokens"], bad["num_generated_tokens"]) == (
        "",
        [],
        0,
    )
    assert (bad["request_id"], bad["time_taken_llm"], bad["params"]) == (-1, -1.0, "")


def test_the_older_builder_keeps_llmbatch_s_error_rows(older):
    rows = run(older, BAD_ROWS)
    assert [row["error"] is None for row in rows] == [True, False, True]
    assert "__inference_error__" not in rows[0] and rows[1]["generated_text"] is None


@pytest.fixture(scope="module")
def stopping(smollm2_dir, engine_kwargs):
    """build_processor's default: should_continue_on_error unset, so False."""
    config = vLLMEngineProcessorConfig(model_source=smollm2_dir, engine_kwargs=engine_kwargs)
    with build_processor(config) as processor:
        yield processor


def test_by_default_build_processor_stops_at_the_first_failed_row(stopping):
    with pytest.raises(RowFailed, match="row 2 of this run failed: sampling_params: .*temperature"):
        run(stopping, BAD_ROWS)


def test_rows_that_arrive_failed_pass_a_stopping_processor(stopping):
    items = [
        {"prompt": "Hello", "sampling_params": GREEDY, "error": None},
        {"prompt": "Hi", "sampling_params": GREEDY, "error": "read_csv: malformed line"},
    ]
    good, failed = run(stopping, items)
    assert good["error"] is None and good["generated_tokens"]
    assert failed["error"] == "read_csv: malformed line"


def test_tokenization_kwargs_truncate_the_prompt(current, reference_llm):
    text = "One two three four five six seven eight nine ten"
    items = [
        {"prompt": text, "sampling_params": GREEDY},
        {
            "prompt": text,
            "sampling_params": GREEDY,
            "tokenization_kwargs": {"truncation": True, "max_length": 5},
        },
        {"prompt": text, "sampling_params": GREEDY, "tokenization_kwargs": {"padding": True}},
    ]
    whole, cut, bad = run(current, items)

    assert cut["prompt_token_ids"] == whole["prompt_token_ids"][:5]
    assert cut["num_input_tokens"] == 5
    [output] = reference_llm.generate(
        {"prompt_token_ids": cut["prompt_token_ids"]}, SamplingParams(**GREEDY)
    )
    assert cut["generated_tokens"] == output.token_ids
    assert bad["error"].startswith("tokenize: ValueError: unknown tokenization_kwargs ['padding']")


def test_sglang_config_runs_sglang_s_names_on_the_engine(smollm2_dir, older):
    config = SGLangEngineProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs={
            "context_length": 4096,
            "chunked_prefill_size": 1024,
            "max_total_tokens": 4096,
        },
        batch_size=2,
        chat_template_stage={
            "chat_template": THINKING_TEMPLATE,
            "chat_template_kwargs": NO_THINKING,
        },
    )

    def sglang_preprocess(row):
        request = preprocess(row)
        request["sampling_params"] = {"temperature": 0.0, "max_new_tokens": MAX_TOKENS}
        return request

    processor = build_processor(config, preprocess=sglang_preprocess, postprocess=postprocess)
    assert processor.engine_args.max_model_len == 4096
    assert processor.engine_args.max_num_batched_tokens == 1024
    assert processor.engine_args.num_gpu_blocks_override == 4096 // 16
    items = [{"word": word} for word in WORDS]
    rows = run(processor, items)
    assert [row["generated_tokens"] for row in rows] == [
        row["generated_tokens"] for row in run(older, items)
    ]


def test_log_engine_metrics_logs_each_run_s_summary(current, caplog):
    with caplog.at_level(logging.INFO, logger="llmbatch"):
        run(current, [{"prompt": "Hi", "sampling_params": GREEDY}])
    assert re.search(r"run summary:\nrows\s+1\nerror rows\s+0\n", caplog.text)
