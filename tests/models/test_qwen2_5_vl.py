"""Qwen2.5-VL against transformers: image embeddings, M-RoPE positions, prompt logits through the
paged KV cache, greedy decoding, both checkpoint layouts and the configs the Hub ships."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from paged_runner import assert_logits_close, build_metadata
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_vl import make_tiny_qwen2_5_vl
from transformers import AutoProcessor
from transformers import Qwen2_5_VLForConditionalGeneration as HFQwen2_5_VL
from transformers.utils import is_torchvision_available

from llmbatch import LLM, SamplingParams
from llmbatch.engine.multimodal import MultiModalInputs, process_images
from llmbatch.models import load_model
from llmbatch.models.processor import load_processor

BLOCK_SIZE = 8
DECODE_STEPS = 4
IMAGE_SIZES = {0: [], 1: [(90, 60)], 2: [(50, 120), (84, 84)]}  # (width, height)


def random_image(size: tuple[int, int], seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@dataclass
class Prompt:
    token_ids: list[int]
    images: MultiModalInputs | None
    hf_inputs: dict[str, torch.Tensor]
    """What the processor gives transformers for the same prompt."""


def make_prompt(processor, num_images: int) -> Prompt:
    images = [random_image(size, seed) for seed, size in enumerate(IMAGE_SIZES[num_images])]
    content = [{"type": "text", "text": "Describe what you see."}]
    for i in range(num_images):
        content.insert(i, {"type": "image"})
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    token_ids, mm = process_images(processor, text, images)
    if images:
        hf_inputs = dict(processor(text=[text], images=images, return_tensors="pt"))
    else:
        hf_inputs = {"input_ids": torch.tensor([token_ids])}
    return Prompt(token_ids, mm, hf_inputs)


@pytest.fixture(scope="module")
def processor(tiny_vl_dir):
    return load_processor(tiny_vl_dir)


@pytest.fixture(scope="module")
def ours(tiny_vl_dir):
    return load_model(tiny_vl_dir).model


@pytest.fixture(scope="module")
def theirs(tiny_vl_dir):
    return HFQwen2_5_VL.from_pretrained(tiny_vl_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def prompts(processor) -> dict[int, Prompt]:
    return {n: make_prompt(processor, n) for n in IMAGE_SIZES}


def prompt_embeddings(model, prompt: Prompt) -> torch.Tensor:
    """Token embeddings with the image placeholders' rows replaced by the images' embeddings."""
    ids = torch.tensor(prompt.token_ids, device=model.lm_head.weight.device)
    embeds = model.embed_input_ids(ids)
    if prompt.images is not None:
        images = prompt.images
        embeds[ids == model.image_token_id] = model.encode_images(
            images.pixel_values, images.image_grid_thw
        )
    return embeds


class MRopeRunner:
    """Runs sequences side by side through a paged KV cache with scattered blocks, feeding
    embeddings and [3, T] positions as the engine does."""

    def __init__(self, model, num_blocks: int = 64) -> None:
        self.model = model
        shape = (2, num_blocks, BLOCK_SIZE, model.num_kv_heads, model.head_dim)
        self.kv_caches = [torch.zeros(shape) for _ in range(model.num_layers)]
        order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0))
        self.free_blocks = order.tolist()
        self.block_tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}

    @torch.inference_mode()
    def step(self, chunks: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict:
        """chunks: sequence -> (token ids [n], embeddings [n, hidden], positions [3, n]);
        returns each sequence's logits ``[n, vocab]``."""
        seqs = list(chunks)
        sizes = [len(chunks[s][0]) for s in seqs]
        for seq, size in zip(seqs, sizes):
            table = self.block_tables.setdefault(seq, [])
            while len(table) * BLOCK_SIZE < self.lengths.get(seq, 0) + size:
                table.append(self.free_blocks.pop())
        contexts = [self.lengths.get(s, 0) for s in seqs]
        meta = build_metadata([self.block_tables[s] for s in seqs], contexts, sizes, BLOCK_SIZE)
        ids, embeds, positions = zip(*chunks.values())
        ids, embeds, positions = torch.cat(ids), torch.cat(embeds), torch.cat(positions, dim=-1)
        hidden = self.model(ids, positions, self.kv_caches, meta, inputs_embeds=embeds)
        for seq, size in zip(seqs, sizes):
            self.lengths[seq] = self.lengths.get(seq, 0) + size
        return dict(zip(seqs, self.model.compute_logits(hidden).split(sizes)))


@dataclass
class Run:
    prompt_logits: torch.Tensor
    tokens: list[int]
    """Greedy tokens, each the argmax of its row of ``token_logits``."""
    token_logits: torch.Tensor


@pytest.fixture(scope="module")
def our_run(ours, prompts) -> dict[int, Run]:
    """All prompts in one batch: a prefill in two chunks (the first ends inside the first image),
    then greedy decode steps at positions t + delta."""
    runner = MRopeRunner(ours)
    inputs, splits, deltas = {}, {}, {}
    for seq, prompt in prompts.items():
        positions, deltas[seq] = ours.mrope_positions(prompt.token_ids, _grid(prompt))
        inputs[seq] = (torch.tensor(prompt.token_ids), prompt_embeddings(ours, prompt), positions)
        image_tokens = [i for i, t in enumerate(prompt.token_ids) if t == ours.image_token_id]
        splits[seq] = image_tokens[0] + 2 if image_tokens else len(prompt.token_ids) // 2
    logits = {seq: [] for seq in prompts}
    for first in (True, False):
        chunk = {}
        for seq, (ids, embeds, positions) in inputs.items():
            part = slice(0, splits[seq]) if first else slice(splits[seq], None)
            chunk[seq] = (ids[part], embeds[part], positions[:, part])
        for seq, out in runner.step(chunk).items():
            logits[seq].append(out)
    token_logits = {seq: [logits[seq][-1][-1]] for seq in prompts}
    generated = {seq: [int(token_logits[seq][0].argmax())] for seq in prompts}
    for _ in range(DECODE_STEPS - 1):
        chunk = {}
        for seq, prompt in prompts.items():
            index = len(prompt.token_ids) + len(generated[seq]) - 1
            token = torch.tensor(generated[seq][-1:])
            chunk[seq] = (
                token,
                ours.embed_input_ids(token),
                torch.full((3, 1), index + deltas[seq]),
            )
        for seq, out in runner.step(chunk).items():
            token_logits[seq].append(out[-1])
            generated[seq].append(int(out[-1].argmax()))
    return {
        seq: Run(torch.cat(logits[seq]), generated[seq], torch.stack(token_logits[seq]))
        for seq in prompts
    }


def _grid(prompt: Prompt) -> torch.Tensor | None:
    return None if prompt.images is None else prompt.images.image_grid_thw


# --- parity with transformers ---------------------------------------------------------------------


@pytest.mark.parametrize("num_images", [1, 2])
def test_encode_images_equals_transformers_vision_tower(ours, theirs, prompts, num_images):
    images = prompts[num_images].images
    with torch.inference_mode():
        embeds = ours.encode_images(images.pixel_values, images.image_grid_thw)
        expected = theirs.model.visual(images.pixel_values, grid_thw=images.image_grid_thw)
    num_tokens = prompts[num_images].token_ids.count(ours.image_token_id)
    assert embeds.shape == (num_tokens, ours.hidden_size)
    torch.testing.assert_close(embeds, expected.pooler_output, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_images", list(IMAGE_SIZES))
def test_mrope_positions_equal_transformers_rope_index(ours, theirs, prompts, num_images):
    prompt = prompts[num_images]
    positions, delta = ours.mrope_positions(prompt.token_ids, _grid(prompt))
    ids = prompt.hf_inputs["input_ids"]
    expected, expected_delta = theirs.model.get_rope_index(
        ids,
        prompt.hf_inputs.get("mm_token_type_ids", torch.zeros_like(ids)),
        image_grid_thw=_grid(prompt),
    )
    assert positions.dtype == torch.int64
    assert torch.equal(positions, expected[:, 0])
    assert delta == int(expected_delta)
    assert (delta < 0) == (num_images > 0)


@pytest.mark.parametrize("num_images", list(IMAGE_SIZES))
def test_prompt_logits_equal_transformers(theirs, prompts, our_run, num_images):
    with torch.inference_mode():
        expected = theirs(**prompts[num_images].hf_inputs).logits[0]
    assert_logits_close(our_run[num_images].prompt_logits, expected)


@pytest.mark.parametrize("num_images", list(IMAGE_SIZES))
def test_greedy_decoding_equals_transformers_generate(theirs, prompts, our_run, num_images):
    inputs = prompts[num_images].hf_inputs
    with torch.inference_mode():
        out = theirs.generate(
            **inputs,
            max_new_tokens=DECODE_STEPS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    run = our_run[num_images]
    assert run.tokens == out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    assert_logits_close(run.token_logits, torch.cat(out.logits))


def test_text_positions_may_be_one_row(ours, prompts):
    """Text alone has equal rows, so [T] positions (what text models get) give the same result."""
    ids = torch.tensor(prompts[0].token_ids)
    positions, delta = ours.mrope_positions(prompts[0].token_ids, None)
    assert delta == 0 and torch.equal(positions, torch.arange(len(ids)).expand(3, -1))
    outputs = []
    for rows in (positions, positions[0]):
        runner = MRopeRunner(ours)
        outputs.append(runner.step({0: (ids, ours.embed_input_ids(ids), rows)})[0])
    torch.testing.assert_close(outputs[0], outputs[1], atol=0, rtol=0)


# --- checkpoints and configs ----------------------------------------------------------------------


def checkpoint_names(folder) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as reader:
        return set(reader.keys())


def copy_without_weights(source, target) -> None:
    for path in source.iterdir():
        if path.name != "model.safetensors":
            shutil.copy(path, target / path.name)


def save_transformers_layout(theirs, source, target, drop: str | None = None) -> None:
    """The model folder with its weights named as transformers 5 holds them in memory."""
    copy_without_weights(source, target)
    state = {name: t.contiguous() for name, t in theirs.state_dict().items() if name != drop}
    save_file(state, str(target / "model.safetensors"))


def test_both_checkpoint_layouts_load_the_same_weights(tiny_vl_dir, ours, theirs, tmp_path):
    hub_names = checkpoint_names(Path(tiny_vl_dir))
    assert any(n.startswith("visual.") for n in hub_names)
    assert any(n.startswith("model.layers.") for n in hub_names)
    save_transformers_layout(theirs, Path(tiny_vl_dir), tmp_path)
    saved_names = checkpoint_names(tmp_path)
    assert any(n.startswith("model.visual.") for n in saved_names)
    assert any(n.startswith("model.language_model.") for n in saved_names)
    other = load_model(str(tmp_path)).model
    mine = dict(ours.named_parameters())
    for name, param in other.named_parameters():
        assert torch.equal(param, mine[name]), name


@pytest.mark.parametrize(
    ("dropped", "named"),
    [
        ("model.visual.merger.mlp.2.bias", "visual.merger.mlp.2.bias"),
        (
            "model.language_model.layers.1.self_attn.k_proj.bias",
            "model.layers.1.self_attn.k_proj.bias",
        ),
        ("lm_head.weight", "lm_head.weight"),
    ],
)
def test_a_missing_weight_is_named(tiny_vl_dir, theirs, tmp_path, dropped, named):
    save_transformers_layout(theirs, Path(tiny_vl_dir), tmp_path, drop=dropped)
    with pytest.raises(ValueError, match=f"lacks weights the model needs: \\['{named}'\\]"):
        load_model(str(tmp_path))


def test_tied_embeddings(processor, tmp_path):
    folder = make_tiny_qwen2_5_vl(tmp_path, seed=1, tie_word_embeddings=True)
    assert "lm_head.weight" not in checkpoint_names(folder)
    model = load_model(str(folder)).model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    reference = HFQwen2_5_VL.from_pretrained(folder, attn_implementation="eager").eval()
    prompt = make_prompt(processor, 1)
    runner = MRopeRunner(model)
    positions, _ = model.mrope_positions(prompt.token_ids, _grid(prompt))
    ids = torch.tensor(prompt.token_ids)
    logits = runner.step({0: (ids, prompt_embeddings(model, prompt), positions)})[0]
    with torch.inference_mode():
        assert_logits_close(logits, reference(**prompt.hf_inputs).logits[0])


def hub_style_config(**changes) -> dict:
    """Qwen2.5-VL-3B-Instruct's config.json as the Hub ships it (flat text fields, rope_scaling of
    type mrope, tied embeddings at the top level), in tiny sizes."""
    config = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 96,
        "max_position_embeddings": 128000,
        "max_window_layers": 70,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_sliding_window": False,
        "vision_config": {
            "depth": 2,
            "hidden_act": "silu",
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_heads": 2,
            "in_chans": 3,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vocab_size": 151936,
    }
    return config | changes


def test_hub_config_with_dummy_weights(tmp_path, prompts):
    (tmp_path / "config.json").write_text(json.dumps(hub_style_config()))
    loaded = load_model(str(tmp_path), load_format="dummy")
    model = loaded.model
    assert loaded.eos_token_ids == [151645]
    assert (model.vocab_size, model.max_positions, model.sliding_window) == (151936, 128000, None)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.image_token_id == 151655
    norms = [p for n, p in model.visual.named_parameters() if "norm" in n or "ln_q" in n]
    assert norms and all(torch.equal(p, torch.ones_like(p)) for p in norms)
    images = prompts[2].images
    embeds = model.encode_images(images.pixel_values, images.image_grid_thw)
    assert embeds.shape[1] == 64 and torch.isfinite(embeds).all() and embeds.std() > 0
    again = load_model(str(tmp_path), load_format="dummy").model
    assert torch.equal(
        again.visual.blocks[0].attn.qkv.weight, model.visual.blocks[0].attn.qkv.weight
    )


def test_bad_mrope_section_is_a_clear_error(tmp_path):
    config = hub_style_config(rope_scaling={"type": "mrope", "mrope_section": [4, 4, 4]})
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mrope_section of three sizes summing to .* = 8"):
        load_model(str(tmp_path), load_format="dummy")


# --- prompts the positions cannot describe --------------------------------------------------------


def test_placeholders_that_do_not_match_the_images_are_an_error(ours, prompts):
    prompt = prompts[2]
    placeholders = prompt.token_ids.count(ours.image_token_id)
    first_image = int(prompt.images.image_grid_thw[0].prod()) // 4
    with pytest.raises(
        ValueError,
        match=f"has {placeholders} image placeholder tokens, but its 1 image.* need {first_image}:",
    ):
        ours.mrope_positions(prompt.token_ids, prompt.images.image_grid_thw[:1])
    with pytest.raises(ValueError, match="image placeholder tokens, but its 0 image"):
        ours.mrope_positions(prompt.token_ids, None)


def test_video_placeholders_are_an_error(ours, prompts):
    token_ids = prompts[0].token_ids + [ours.video_token_id]
    with pytest.raises(ValueError, match="video placeholder tokens; only images are supported"):
        ours.mrope_positions(token_ids, None)


@pytest.mark.skipif(not is_torchvision_available(), reason="AutoProcessor needs torchvision")
def test_auto_processor_loads_the_folder(tiny_vl_dir, processor, prompts):
    auto = AutoProcessor.from_pretrained(tiny_vl_dir)
    assert type(auto).__name__ == "Qwen2_5_VLProcessor"
    assert make_prompt(auto, 2).token_ids == prompts[2].token_ids


@pytest.mark.skipif(is_torchvision_available(), reason="with torchvision, videos are processed")
def test_a_video_through_the_processor_is_an_error_without_torchvision(processor):
    frames = [random_image((56, 56), seed) for seed in range(2)]
    with pytest.raises(ValueError, match="video inputs need torchvision"):
        processor(text=["<|vision_start|><|video_pad|><|vision_end|>"], videos=[frames])


# --- through the engine -----------------------------------------------------------------------------


def engine_tokens(folder: str, prompt: list[int], tensor_parallel_size: int) -> list[int]:
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, detokenize=False)
    with LLM(
        folder,
        tensor_parallel_size=tensor_parallel_size,
        kv_cache_memory_bytes=16 << 20,
        max_model_len=256,
    ) as llm:
        tokens = llm.generate([prompt], greedy)[0].outputs[0].token_ids
    assert not multiprocessing.active_children()
    return list(tokens)


def test_text_prompt_through_the_engine(tiny_vl_dir, theirs, prompts):
    """A text-only prompt runs in the engine as it is (one position row), sharded or not; the
    vision tower is replicated on every rank."""
    prompt = prompts[0].token_ids
    with torch.inference_mode():
        expected = theirs.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    tokens = engine_tokens(tiny_vl_dir, prompt, 1)
    assert tokens == expected[0, len(prompt) :].tolist()
    assert engine_tokens(tiny_vl_dir, prompt, 2) == tokens


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_prompt_logits_on_cuda(tiny_vl_dir, prompts, our_run, backend):
    """float32 on CUDA (Triton rotary over the mixed M-RoPE tables) equals the CPU run."""
    model = load_model(tiny_vl_dir, device="cuda", dtype="float32", attention_backend=backend).model
    for num_images, prompt in prompts.items():
        positions, _ = model.mrope_positions(prompt.token_ids, _grid(prompt))
        ids = torch.tensor(prompt.token_ids, device="cuda")
        # cuDNN would run the vision tower's patch convolution in TF32 (its default)
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            embeds = prompt_embeddings(model, prompt)
            shape = (2, 16, BLOCK_SIZE, model.num_kv_heads, model.head_dim)
            kv_caches = [torch.zeros(shape, device="cuda") for _ in range(model.num_layers)]
            meta = build_metadata([list(range(16))], [0], [len(ids)], BLOCK_SIZE, device="cuda")
            hidden = model(ids, positions.cuda(), kv_caches, meta, inputs_embeds=embeds)
            logits = model.compute_logits(hidden).cpu()
        assert_logits_close(logits, our_run[num_images].prompt_logits)
