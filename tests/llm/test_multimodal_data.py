"""Images given as Ray Data LLM 2.60 rows give them: a ``prompt`` holding the image placeholders
with ``multimodal_data={"image": [...]}``, on a tiny random Qwen2.5-VL; the same answer as the
image in the messages. Without image inputs turned on, such a row stops the job."""

from __future__ import annotations

import pytest
from image_testing import picture

import llmbatch.data as data
from llmbatch.llm import (
    PrepareMultimodalStageConfig,
    build_llm_processor,
    build_processor,
    vLLMEngineProcessorConfig,
)
from llmbatch.models.processor import load_processor

GREEDY = {"temperature": 0.0, "max_tokens": 5}
ENGINE_KWARGS = dict(
    max_model_len=4096, max_num_batched_tokens=2048, kv_cache_memory_bytes=64 << 20
)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "picture.png"
    picture(60, 40, seed=3).save(path)
    return str(path)


def test_a_prompt_with_multimodal_data_answers_as_messages_with_the_image(tiny_vl_dir, image_path):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image_path}, {"type": "text", "text": "What?"}],
        }
    ]
    template_messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}
    ]
    prompt = load_processor(tiny_vl_dir).apply_chat_template(
        template_messages, add_generation_prompt=True, tokenize=False
    )
    items = [
        {"messages": messages, "sampling_params": GREEDY},
        {"prompt": prompt, "multimodal_data": {"image": [image_path]}, "sampling_params": GREEDY},
        {"prompt": prompt, "multimodal_data": {"video": ["clip.mp4"]}, "sampling_params": GREEDY},
    ]
    config = vLLMEngineProcessorConfig(
        model_source=tiny_vl_dir,
        engine_kwargs=ENGINE_KWARGS,
        prepare_multimodal_stage=PrepareMultimodalStageConfig(enabled=True),
        should_continue_on_error=True,
    )
    from_messages, from_data, video = build_processor(config)(data.from_items(items)).take_all()

    assert from_messages["error"] is None and from_data["error"] is None
    assert from_data["prompt"] == from_messages["prompt"] == prompt
    assert from_data["num_input_tokens"] == from_messages["num_input_tokens"]
    assert from_data["generated_tokens"] == from_messages["generated_tokens"]
    assert "multimodal_data" not in from_data
    assert video["error"] == (
        "images: ImageInputError: multimodal_data holds ['video']: only 'image' inputs are "
        "supported"
    )


def test_multimodal_data_without_image_inputs_stops_the_job(smollm2_dir, engine_kwargs, image_path):
    config = vLLMEngineProcessorConfig(model_source=smollm2_dir, engine_kwargs=engine_kwargs)
    rows = [{"prompt": "x", "multimodal_data": {"image": [image_path]}, "sampling_params": GREEDY}]
    processor = build_llm_processor(config)
    with pytest.raises(ValueError, match=r"holds an image \(multimodal_data\).*has_image=False"):
        processor(data.from_items(rows)).take_all()
