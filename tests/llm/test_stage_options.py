"""The config switches of the stages: a custom chat template, the engine tokenizing prompt text
itself (tokenize=False), and no detokenize stage (detokenize=False)."""

from __future__ import annotations

import pytest

import llmbatch.data as data
from llmbatch import SamplingParams
from llmbatch.llm import LLMProcessorConfig, build_llm_processor

TEMPLATE = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] "
MAX_TOKENS = 4


@pytest.fixture(scope="module")
def rows(smollm2_dir: str, engine_kwargs):
    config = LLMProcessorConfig(
        model_source=smollm2_dir,
        engine_kwargs=engine_kwargs,
        chat_template=TEMPLATE,
        tokenize=False,
        detokenize=False,
    )
    items = [
        {
            "messages": [{"role": "user", "content": "Name a colour."}],
            "sampling_params": {"temperature": 0.0, "max_tokens": MAX_TOKENS, "detokenize": False},
        },
        {
            "prompt": "Once upon a time",
            "sampling_params": {"temperature": 0.0, "max_tokens": MAX_TOKENS},
        },
    ]
    with build_llm_processor(config) as processor:
        return processor(data.from_items(items)).take_all()


def test_a_custom_chat_template_renders_the_prompt(rows):
    assert rows[0]["prompt"] == "[user] Name a colour.\n[assistant] "
    assert rows[1]["prompt"] == "Once upon a time"


def test_prompt_text_goes_to_the_engine_which_tokenizes_it(rows, reference_llm):
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    expected = reference_llm.generate([row["prompt"] for row in rows], params)
    for row, output in zip(rows, expected):
        assert row["generated_tokens"] == output.token_ids
        assert row["num_input_tokens"] == output.num_prompt_tokens


def test_without_the_detokenize_stage_text_comes_only_from_the_engine(rows, reference_llm):
    [output] = reference_llm.generate(
        rows[1]["prompt"], SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    )
    assert rows[0]["generated_text"] is None
    assert rows[1]["generated_text"] == output.text
