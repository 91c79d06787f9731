"""Requests with images through the engine: greedy tokens equal transformers, under chunked
prefill, asynchronous scheduling and the prefix cache, which must tell images apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration as HFQwen2_5_VL

from llmbatch import LLM, SamplingParams
from llmbatch.engine.llm_engine import LLMEngine
from llmbatch.engine.multimodal import process_images
from llmbatch.engine.outputs import RequestRejected
from llmbatch.models.processor import load_processor

NEW_TOKENS = 8
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False)
SIZES = [(90, 60), (50, 120), (84, 84)]


def image(seed: int) -> Image.Image:
    width, height = SIZES[seed % len(SIZES)]
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def processor(tiny_vl_dir):
    return load_processor(tiny_vl_dir)


def request(processor, images: list[Image.Image], question: str = "What is shown?"):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    messages = [
        {"role": "system", "content": "Answer briefly, then give a Final Answer."},
        {"role": "user", "content": content},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text, images, *process_images(processor, text, images)


def hf_greedy(model, processor, text, images) -> list[int]:
    if images:
        inputs = processor(text=[text], images=images, return_tensors="pt")
    else:
        inputs = processor.tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.fixture(scope="module")
def cases(tiny_vl_dir, processor):
    """Rows with 0, 1 and 2 images, an image repeated under another question, and the same
    question over another image; each with transformers' greedy tokens."""
    hf = HFQwen2_5_VL.from_pretrained(tiny_vl_dir, attn_implementation="eager").eval()
    rows = [
        request(processor, []),
        request(processor, [image(0)]),
        request(processor, [image(1), image(2)]),
        request(processor, [image(0)], "And the colours?"),
        request(processor, [image(3)]),
    ]
    return [(ids, mm, hf_greedy(hf, processor, text, imgs)) for text, imgs, ids, mm in rows]


def run(folder: str, cases, **kwargs) -> tuple[list[list[int]], object]:
    engine = LLMEngine.from_engine_args(model=folder, dtype="float32", seed=0, **kwargs)
    try:
        for i, (ids, mm, _) in enumerate(cases):
            engine.add_request(str(i), ids, GREEDY, multi_modal=mm)
        outputs = {}
        while engine.has_unfinished():
            outputs.update((o.request_id, o.token_ids) for o in engine.step())
        return [outputs[str(i)] for i in range(len(cases))], engine.stats
    finally:
        engine.close()


@pytest.mark.parametrize(
    "setup",
    [
        {},
        dict(max_num_batched_tokens=24, max_num_seqs=4, async_scheduling=True, block_size=8),
        dict(enable_prefix_caching=False),
    ],
    ids=["default", "chunked-async", "no-prefix-cache"],
)
def test_greedy_tokens_with_images_equal_transformers(tiny_vl_dir, cases, setup):
    outputs, _ = run(tiny_vl_dir, cases, **setup)
    for index, (output, (_, _, expected)) in enumerate(zip(outputs, cases)):
        assert output == expected, f"request {index} diverged"


def test_prefix_cache_shares_the_text_before_an_image_but_not_other_images(tiny_vl_dir, cases):
    # one request at a time, so each finds what the earlier ones left in the cache
    cached = []
    engine = LLMEngine.from_engine_args(model=tiny_vl_dir, dtype="float32", block_size=4)
    try:
        for i, (ids, mm, expected) in enumerate(cases):
            engine.add_request(str(i), ids, GREEDY, multi_modal=mm)
            (output,) = [o for _ in range(NEW_TOKENS + 2) for o in engine.step()]
            assert output.token_ids == expected, f"request {i} diverged"
            first_image = ids.index(engine._runner.model.image_token_id) if mm else len(ids)
            cached.append((output.num_cached_tokens, first_image))
    finally:
        engine.close()
    # the system prompt before the first image is shared by every later request
    assert all(hit > 0 for hit, _ in cached[1:])
    # request 3 repeats request 1's image under another question: the image's blocks are shared
    assert cached[3][0] > cached[3][1]
    # request 4 differs from request 1 only in its image: nothing past the image's start is
    # served from the cache
    assert cached[4][0] <= cached[4][1]


def test_images_that_do_not_match_their_placeholders_are_rejected(tiny_vl_dir, processor):
    _, _, ids, mm = request(processor, [image(0)])
    _, _, _, two = request(processor, [image(1), image(2)])
    engine = LLMEngine.from_engine_args(model=tiny_vl_dir, dtype="float32")
    try:
        with pytest.raises(RequestRejected, match="image tokens"):
            engine.add_request("a", ids, GREEDY, multi_modal=two)
        with pytest.raises(RequestRejected, match="MultiModalInputs"):
            engine.add_request("b", ids, GREEDY, multi_modal={"image": image(0)})
        assert not engine.has_unfinished()
    finally:
        engine.close()


def test_text_model_rejects_images(smollm2_dir, processor):
    _, _, _, mm = request(processor, [image(0)])
    engine = LLMEngine.from_engine_args(model=smollm2_dir, dtype="float32")
    try:
        with pytest.raises(RequestRejected, match="takes no images"):
            engine.add_request("a", [1, 2, 3], GREEDY, multi_modal=mm)
    finally:
        engine.close()


def test_llm_generate_takes_vllm_style_image_prompts(tiny_vl_dir, processor, cases):
    text, images, _, _ = request(processor, [image(1), image(2)])
    with LLM(tiny_vl_dir, dtype="float32") as llm:
        (output,) = llm.generate({"prompt": text, "multi_modal_data": {"image": images}}, GREEDY)
        assert output.token_ids == cases[2][2]
        with pytest.raises(ValueError, match="prompt 0: .*images"):
            llm.generate({"prompt": text, "multi_modal_data": {"image": images[:1]}}, GREEDY)
        with pytest.raises(ValueError, match="'prompt' \\(text\\)"):
            llm.generate({"prompt_token_ids": [1, 2], "prompt": "x"}, GREEDY)
