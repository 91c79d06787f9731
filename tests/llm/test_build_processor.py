"""A pipeline written for Ray Data LLM 2.60 (`build_processor`, stage configs as dicts and as
config objects, `chat_template_kwargs`, `prompt` rows, `should_continue_on_error` both ways,
`tokenization_kwargs`) on the real SmolLM2: its rows are the older spelling's rows for the same
input, with 2.60's columns added."""

from __future__ import annotations

import pytest

import llmbatch.data as data
from llmbatch import SamplingParams
from llmbatch.llm import (
    ChatTemplateStageConfig,
    RowFailed,
    SGLangEngineProcessorConfig,
    TokenizerStageConfig,
    build_llm_processor,
    build_processor,
    vLLMEngineProcessorConfig,
)

MAX_TOKENS = 4
GREEDY = {"temperature": 0.0, "max_tokens": MAX_TOKENS}
# A chat template with Qwen3's switch: enable_thinking=False writes an empty thinking block.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
WORDS = ["apples", "rivers", "clocks"]


def preprocess(row):
    return dict(
        messages=[{"role": "user", "content": f"Say one word about {row['word']}."}],
        sampling_params=dict(GREEDY, detokenize=False),
    )


def postprocess(row):
    return dict(resp=row["generated_text"], **row)


@pytest.fixture(scope="module")
def rows_in():
    return [{"word": word} for word in WORDS]


@pytest.fixture(scope="module")
def older_rows(smollm2_dir, engine_kwargs, rows_in):
    config = vLLMEngineProcessorConfig(
        model_source=smollm2_dir, engine_kwargs=engine_kwargs, batch_size=2
    )
    processor = build_llm_processor(config, preprocess=preprocess, postprocess=postprocess)
    return processor(data.from_items(rows_in)).take_all()


@pytest.mark.parametrize(
    "stages",
    [
        dict(
            chat_template_stage={"enabled": True},
            tokenize_stage={"enabled": True, "batch_size": 2},
            detokenize_stage=True,
        ),
        dict(
            chat_template_stage=ChatTemplateStageConfig(),
            tokenize_stage=TokenizerStageConfig(enabled=True),
            detokenize_stage=True,
        ),
    ],
    ids=["dicts", "config_objects"],
)
def test_a_2_60_pipeline_gives_the_older_spellings_rows(
    smollm2_dir, engine_kwargs, rows_in, older_rows, stages
):
    config = vLLMEngineProcessorConfig(
        model_source=smollm2_dir, engine_kwargs=engine_kwargs, batch_size=2, **stages
    )
    processor = build_processor(config, preprocess=preprocess, postprocess=postprocess)
    rows = processor(data.from_items(rows_in)).take_all()

    assert len(rows) == len(older_rows) == len(WORDS)
    for row, older in zip(rows, older_rows):
        for name in ("word", "prompt", "generated_tokens", "generated_text", "resp"):
            assert row[name] == older[name]
        assert row["num_input_tokens"] == len(row["prompt_token_ids"]) == older["num_input_tokens"]
        assert row["error"] is None and "__inference_error__" not in row
        assert "temperature=0.0" in row["params"] and "max_tokens=4" in row["params"]
    assert sorted(row["request_id"] for row in rows) == [0, 1, 2]
    assert "prompt_token_ids" not in older_rows[0] and "request_id" not in older_rows[0]


@pytest.fixture(scope="module")
def thinking_rows(smollm2_dir, engine_kwargs):
    def run(chat_template_stage, builder_kwargs=None):
        config = vLLMEngineProcessorConfig(
            model_source=smollm2_dir,
            engine_kwargs=engine_kwargs,
            chat_template_stage=chat_template_stage,
            detokenize_stage=False,
        )
        processor = build_processor(
            config, preprocess=preprocess, postprocess=postprocess, builder_kwargs=builder_kwargs
        )
        return processor(data.from_items([{"word": "tea"}])).take_all()[0]

    return run


def test_chat_template_kwargs_reach_the_template(thinking_rows, reference_llm):
    base = {"chat_template": THINKING_TEMPLATE}
    off = thinking_rows({**base, "chat_template_kwargs": {"enable_thinking": False}})
    on = thinking_rows(
        ChatTemplateStageConfig(**base, chat_template_kwargs={"enable_thinking": True})
    )
    from_builder = thinking_rows(base, {"chat_template_kwargs": {"enable_thinking": False}})
    stage_wins = thinking_rows(
        {**base, "chat_template_kwargs": {"enable_thinking": True}},
        {"chat_template_kwargs": {"enable_thinking": False}},
    )

    expected = "<|user|>Say one word about tea.\n<|assistant|>"
    assert off["prompt"] == from_builder["prompt"] == expected + "<think>\n\n</think>\n\n"
    assert on["prompt"] == stage_wins["prompt"] == expected
    [output] = reference_llm.generate(off["prompt"], SamplingParams(**GREEDY))
    assert off["generated_tokens"] == output.token_ids


def test_prompt_rows_and_an_assistant_prefill(smollm2_dir, engine_kwargs, reference_llm):
    config = vLLMEngineProcessorConfig(model_source=smollm2_dir, engine_kwargs=engine_kwargs)
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
    raw, prefill = build_processor(config)(data.from_items(items)).take_all()

    assert raw["prompt"] == "The capital of France is"
    assert prefill["prompt"].endswith("<|im_start|>assistant\nThe fruit is")
    expected = reference_llm.generate([raw["prompt"], prefill["prompt"]], SamplingParams(**GREEDY))
    assert raw["generated_tokens"] == expected[0].token_ids
    assert prefill["generated_text"] == expected[1].text


BAD_ROWS = [
    {"word": "ok", "temperature": 0.0},
    {"word": "bad", "temperature": -1.0},
    {"word": "fine", "temperature": 0.0},
]


def _preprocess_with_temperature(row):
    return dict(
        messages=[{"role": "user", "content": f"Say {row['word']}."}],
        sampling_params={"temperature": row["temperature"], "max_tokens": MAX_TOKENS},
    )


def _run_bad_rows(model, engine_kwargs, builder, **config):
    config = vLLMEngineProcessorConfig(model_source=model, engine_kwargs=engine_kwargs, **config)
    processor = builder(
        config,
        preprocess=_preprocess_with_temperature,
        postprocess=lambda row: {"word": row["word"], "resp": row["generated_text"]},
    )
    return processor(data.from_items(BAD_ROWS)).take_all()


def test_by_default_build_processor_stops_at_the_first_failed_row(smollm2_dir, engine_kwargs):
    with pytest.raises(RowFailed, match="row 2 of this run failed: sampling_params: .*temperature"):
        _run_bad_rows(smollm2_dir, engine_kwargs, build_processor)


def test_should_continue_on_error_writes_ray_s_error_rows(smollm2_dir, engine_kwargs):
    ok, bad, fine = _run_bad_rows(
        smollm2_dir, engine_kwargs, build_processor, should_continue_on_error=True
    )

    assert ok["__inference_error__"] == fine["__inference_error__"] == ""
    assert ok["error"] is None and ok["resp"]
    assert bad["error"] == bad["__inference_error__"]
    assert bad["error"].startswith("sampling_params: ValueError: temperature must be >= 0")
    # Error rows skip postprocess and keep their columns, with Ray's defaults.
    assert "resp" not in bad or bad["resp"] is None
    assert bad["word"] == "bad" and bad["temperature"] == -1.0
    assert (bad["generated_text"], bad["generated_tokens"], bad["num_generated_tokens"]) == (
        "",
        [],
        0,
    )
    assert (bad["request_id"], bad["time_taken_llm"], bad["params"]) == (-1, -1.0, "")


def test_the_older_builder_keeps_llmbatch_s_error_rows_unless_told_to_stop(
    smollm2_dir, engine_kwargs
):
    rows = _run_bad_rows(smollm2_dir, engine_kwargs, build_llm_processor)
    assert [row["error"] is None for row in rows] == [True, False, True]
    assert "__inference_error__" not in rows[0] and rows[1]["generated_text"] is None
    with pytest.raises(RowFailed):
        _run_bad_rows(
            smollm2_dir, engine_kwargs, build_llm_processor, should_continue_on_error=False
        )


def test_rows_that_arrive_failed_pass_a_stopping_processor(smollm2_dir, engine_kwargs):
    config = vLLMEngineProcessorConfig(model_source=smollm2_dir, engine_kwargs=engine_kwargs)
    items = [
        {"prompt": "Hello", "sampling_params": GREEDY, "error": None},
        {"prompt": "Hi", "sampling_params": GREEDY, "error": "read_csv: malformed line"},
    ]
    good, failed = build_processor(config)(data.from_items(items)).take_all()
    assert good["error"] is None and good["generated_tokens"]
    assert failed["error"] == "read_csv: malformed line"


def test_tokenization_kwargs_truncate_the_prompt(smollm2_dir, engine_kwargs, reference_llm):
    config = vLLMEngineProcessorConfig(
        model_source=smollm2_dir, engine_kwargs=engine_kwargs, should_continue_on_error=True
    )
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
    whole, cut, bad = build_processor(config)(data.from_items(items)).take_all()

    assert cut["prompt_token_ids"] == whole["prompt_token_ids"][:5]
    assert cut["num_input_tokens"] == 5
    [output] = reference_llm.generate(
        {"prompt_token_ids": cut["prompt_token_ids"]}, SamplingParams(**GREEDY)
    )
    assert cut["generated_tokens"] == output.token_ids
    assert bad["error"].startswith("tokenize: ValueError: unknown tokenization_kwargs ['padding']")


def test_sglang_config_runs_sglang_s_names_on_the_engine(
    smollm2_dir, engine_kwargs, rows_in, older_rows
):
    config = SGLangEngineProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs={
            "context_length": 4096,
            "chunked_prefill_size": 1024,
            "max_total_tokens": 4096,
        },
        batch_size=2,
    )

    def sglang_preprocess(row):
        request = preprocess(row)
        request["sampling_params"] = {"temperature": 0.0, "max_new_tokens": MAX_TOKENS}
        return request

    processor = build_processor(config, preprocess=sglang_preprocess, postprocess=postprocess)
    assert processor.engine_args.max_model_len == 4096
    assert processor.engine_args.max_num_batched_tokens == 1024
    assert processor.engine_args.num_gpu_blocks_override == 4096 // 16
    rows = processor(data.from_items(rows_in)).take_all()
    assert [row["generated_tokens"] for row in rows] == [
        row["generated_tokens"] for row in older_rows
    ]
