"""The tutorial's vision part, imports changed, on a tiny random Qwen2.5-VL: rows with zero, one or
two images get what transformers generates greedily for the same messages, a bad image makes
only its own row an error row, and the images never reach the output. Around it: images without
has_image, a model without an image processor, and engines closed when their job ends."""

from __future__ import annotations

import functools
import gc
import http.server
import io
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

import datasets
import pytest
import torch
from image_testing import data_url, http_server, picture, png_bytes
from PIL import Image

import llmbatch.data as data
from llmbatch.engine.multimodal import MultiModalInputs
from llmbatch.llm import LLMProcessorConfig, build_llm_processor, vLLMEngineProcessorConfig
from llmbatch.llm.columns import IMAGES, MULTI_MODAL
from llmbatch.llm.row_checks import rows_to_checked_table
from llmbatch.llm.tokenizer_stages import ChatTemplateStage, TokenizeStage
from llmbatch.llm.user_stages import PreprocessStage
from llmbatch.models.processor import load_processor

MAX_TOKENS = 6
SYSTEM_PROMPT = "Answer the question about the image. Final Answer: <answer>"
# The tutorial's vision engine kwargs, with a KV cache sized for a test machine.
VISION_ENGINE_KWARGS = dict(
    tensor_parallel_size=1,
    pipeline_parallel_size=1,
    max_model_len=4096,
    enable_chunked_prefill=True,
    max_num_batched_tokens=2048,
    kv_cache_memory_bytes=64 << 20,
)


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real HTTP server (127.0.0.1, own thread) serving one image, `served.png`."""
    folder = tmp_path_factory.mktemp("served")
    picture(70, 50, seed=9).save(folder / "served.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with http_server(handler) as url:
        yield url


def vision_dataset(images: list[Image.Image]) -> datasets.Dataset:
    """Rows shaped like the tutorial's COCO captions: an Image() column, a question, answers."""
    features = datasets.Features(
        {
            "question_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Sequence(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "question_id": list(range(len(images))),
            "image": images,
            "question": [f"What is in picture {i}?" for i in range(len(images))],
            "answer": [[f"caption {i}", "something else"] for i in range(len(images))],
        },
        features=features,
    )


def vision_preprocess(row: dict) -> dict:
    """The tutorial's preprocess (greedy, for comparison), plus any images the row adds."""
    choices = "\n".join(f"{'ABCDEFGH'[i]}) {c}" for i, c in enumerate(row["answer"]))
    content = [{"type": "text", "text": row["question"] + "\n\n"}]
    if row["image"] is not None:
        content.append({"type": "image", "image": Image.open(io.BytesIO(row["image"]["bytes"]))})
    content += row["extra_parts"] or []
    content.append({"type": "text", "text": "\n\nChoices:\n" + choices})
    return dict(
        messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": content},
        ],
        sampling_params=dict(temperature=0.0, max_tokens=MAX_TOKENS, detokenize=False),
    )


def vision_postprocess(row: dict) -> dict:
    return {"resp": row["generated_text"], **row}


@pytest.fixture(scope="module")
def vision_processor(tiny_vl_dir: str):
    config = vLLMEngineProcessorConfig(
        model_source=tiny_vl_dir,
        engine_kwargs=VISION_ENGINE_KWARGS,
        runtime_env=dict(env_vars=dict(VLLM_USE_V1="1")),
        batch_size=16,
        accelerator_type="L4",
        concurrency=4,
        has_image=True,
    )
    with build_llm_processor(
        config, preprocess=vision_preprocess, postprocess=vision_postprocess
    ) as processor:
        yield processor


@pytest.fixture(scope="module")
def transformers_vl(tiny_vl_dir: str):
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_vl_dir, dtype=torch.float32)
    model.set_attn_implementation("eager")
    return model.eval(), load_processor(tiny_vl_dir)


def greedy_reference(transformers_vl, messages: list[dict], images: list[Image.Image]):
    """What transformers generates greedily for the messages (images as placeholders)."""
    model, processor = transformers_vl
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=images or None, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_TOKENS)
    num_prompt = inputs["input_ids"].shape[1]
    return num_prompt, out[0, num_prompt:].tolist(), processor


def with_extra_parts(ds: datasets.Dataset, parts: list[list[dict] | None]) -> data.Dataset:
    """The dataset's rows, each with the extra content parts its preprocess adds."""
    rows = data.from_huggingface(ds).take_all()
    return data.from_items([{**row, "extra_parts": extra} for row, extra in zip(rows, parts)])


def test_rows_with_zero_one_and_two_images_match_transformers(
    vision_processor, transformers_vl, image_server, tmp_path: Path
):
    sizes = [(60, 40), (90, 90), (40, 120)]
    images = [picture(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    second = picture(70, 50, seed=9)
    ds = vision_dataset(images)
    rows_in = data.from_huggingface(ds).take_all()
    rows_in[0]["image"] = None
    parts = [
        None,
        None,
        [{"type": "image_url", "image_url": {"url": f"{image_server}/served.png"}}],
    ]
    source = data.from_items([{**row, "extra_parts": p} for row, p in zip(rows_in, parts)])
    out = vision_processor(source).materialize()
    rows = out.take_all()

    expected_images = [[], [images[1]], [images[2], second]]
    assert [row["question_id"] for row in rows] == [0, 1, 2]
    for row, row_in, row_images in zip(rows, rows_in, expected_images):
        assert row["error"] is None
        messages = vision_preprocess({**row_in, "extra_parts": None})["messages"]
        user = messages[1]["content"]
        placeholders = [{"type": "image"}] * len(row_images)
        user[1:-1] = placeholders
        num_prompt, tokens, processor = greedy_reference(transformers_vl, messages, row_images)
        assert row["num_input_tokens"] == num_prompt
        assert row["generated_tokens"] == tokens
        assert row["generated_text"] == row["resp"]
        assert row["resp"] == processor.decode(tokens, skip_special_tokens=True)
        assert row["question"] == row_in["question"]
        assert row["image"] == row_in["image"]

    assert not any(name.startswith("__llmbatch") for name in out.columns())
    assert rows[2]["messages"][1]["content"][1:3] == [
        {"type": "image", "text": None},
        {"type": "image", "text": None},
    ]
    out.write_parquet(tmp_path / "out")
    written = data.read_parquet(tmp_path / "out")
    assert written.columns() == out.columns()
    assert written.take_all() == rows


def test_a_bad_image_makes_only_its_row_an_error_row(vision_processor, image_server):
    images = [picture(56, 56, seed=i) for i in range(4)]
    parts = [
        None,
        [{"type": "image", "image": b"1234"}],
        [{"type": "image_url", "image_url": f"{image_server}/missing.png"}],
        None,
    ]
    rows = vision_processor(with_extra_parts(vision_dataset(images), parts)).take_all()

    assert [row["question_id"] for row in rows] == [0, 1, 2, 3]
    assert rows[1]["error"] == (
        "images: ImageInputError: image 2 of the row (messages[1].content[2]): "
        "cannot decode 4 bytes: cannot identify image file (not PNG, JPEG, WebP, GIF or "
        "another format Pillow reads)"
    )
    assert rows[2]["error"].startswith(
        "images: ImageInputError: image 2 of the row (messages[1].content[2]): "
        f"cannot fetch {image_server}/missing.png: HTTP 404"
    )
    for row in (rows[1], rows[2]):
        assert row["generated_tokens"] is None
        assert row["question"] is not None
    for row in (rows[0], rows[3]):
        assert row["error"] is None
        assert row["num_generated_tokens"] > 0


def test_the_stages_give_the_models_processor_output(tiny_vl_dir: str, image_server: str):
    """Messages already in the table (no preprocess), images as URLs: the tokenize stage hands
    the engine the token ids and pixels that the model's processor gives for the same prompt."""
    processor = load_processor(tiny_vl_dir)
    first, served = picture(60, 40, seed=1), picture(70, 50, seed=9)
    missing = f"{image_server}/missing.png"

    def user(*parts: dict) -> list[dict]:
        return [{"role": "user", "content": [{"type": "text", "text": "Describe:"}, *parts]}]

    def url(address: str) -> dict:
        return {"type": "image_url", "image_url": address}

    table = rows_to_checked_table(
        [
            {"messages": user()},
            {"messages": user(url(data_url(first)))},
            {"messages": user(url(data_url(first)), url(f"{image_server}/served.png"))},
            {"messages": user(url(missing))},
            {"prompt": "A raw prompt"},
        ],
        "preprocess",
    )
    stages = [
        PreprocessStage(None, 8, has_image=True),
        ChatTemplateStage(lambda: processor, True, None, has_image=True),
        TokenizeStage(lambda: processor.tokenizer, True, processor=lambda: processor),
    ]
    blocks = iter([table])
    for stage in stages:
        blocks = stage(blocks)
    [out] = list(blocks)

    assert IMAGES not in out.column_names
    rows = out.to_pylist()
    assert rows[3]["error"].startswith(
        f"images: ImageInputError: image 1 of the row (messages[0].content[1]): cannot fetch "
        f"{missing}: HTTP 404"
    )
    assert rows[3]["prompt_token_ids"] is None
    for row, images in zip(rows[:3], [[], [first], [first, served]]):
        assert row["error"] is None
        placed = user(*[{"type": "image"}] * len(images))
        prompt = processor.apply_chat_template(placed, add_generation_prompt=True, tokenize=False)
        expected = processor(text=[prompt], images=images or None, return_tensors="pt")
        assert row["prompt"] == prompt
        assert row["prompt_token_ids"] == expected["input_ids"][0].tolist()
        mm = MultiModalInputs.from_record(row[MULTI_MODAL])
        if not images:
            assert mm is None
            continue
        assert torch.equal(mm.pixel_values, expected["pixel_values"])
        assert torch.equal(mm.image_grid_thw, expected["image_grid_thw"])
        assert mm.num_images == len(images)
    assert rows[4]["prompt_token_ids"] == processor.tokenizer("A raw prompt")["input_ids"]


def test_images_without_has_image_stop_the_job(smollm2_dir: str):
    config = LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs={"device": "cpu"})
    rows = data.from_items([{"image": png_bytes(picture(28, 28, seed=0))}])

    def preprocess(row):
        content = [
            {"type": "text", "text": "What is it?"},
            {"type": "image", "image": row["image"]},
        ]
        return {"messages": [{"role": "user", "content": content}]}

    processor = build_llm_processor(config, preprocess=preprocess)
    with pytest.raises(ValueError, match=r"\(messages\[0\]\.content\[1\]\).*set has_image=True"):
        processor(rows).take_all()


def test_a_model_without_an_image_processor_fails_before_any_row(smollm2_dir: str):
    config = LLMProcessorConfig(model_source=smollm2_dir, has_image=True)
    seen: list[dict] = []
    processor = build_llm_processor(config, preprocess=lambda row: seen.append(row) or row)
    with pytest.raises(ValueError, match=r"has no image processor .*set has_image=False"):
        processor(data.from_items([{"prompt": "Hello"}])).take_all()
    assert seen == []


def _replica_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_finished_job_closes_its_engine_and_an_open_processor_keeps_it(smollm2_dir: str):
    rows = data.from_items([{"prompt": f"Count to {n}:"} for n in range(3)])
    engine_kwargs = {"device": "cpu", "kv_cache_memory_bytes": 64 << 20}
    replicated = LLMProcessorConfig(
        model_source=smollm2_dir, engine_kwargs=engine_kwargs, concurrency=(2, 2)
    )
    processor = build_llm_processor(
        replicated, preprocess=lambda row: {"sampling_params": {"max_tokens": 2}}
    )
    pids = processor.engine.pids
    assert all(_replica_alive(pid) for pid in pids)
    assert len(processor(rows).take_all()) == 3
    assert not any(_replica_alive(pid) for pid in pids)
    assert processor.summary().finished

    single = LLMProcessorConfig(model_source=smollm2_dir, engine_kwargs=engine_kwargs)
    with build_llm_processor(single) as open_processor:
        engine = weakref.ref(open_processor.engine)
        open_processor(rows).materialize()
        open_processor(rows).materialize()
        assert open_processor.engine is engine()
    gc.collect()
    assert engine() is None
