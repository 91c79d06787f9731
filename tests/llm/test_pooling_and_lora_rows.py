"""Processors over pooling models (task_type "embed" / "classify") and rows that choose a LoRA
adapter (a ``model`` column naming it, as in Ray Data LLM, or a ``lora`` folder)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_lora import make_lora_setup, merged_model
from tiny_models import hf_greedy
from tiny_pooling import qwen3_config, save_base_model, save_classifier

import llmbatch.data as data
from llmbatch.llm import LLMProcessorConfig, build_llm_processor, build_processor

ENGINE = dict(kv_cache_memory_bytes=1 << 22, max_num_batched_tokens=32, max_num_seqs=8)
TOLERANCE = 1e-5


def words(tokens: list[int]) -> str:
    return " ".join(f"w{t}" for t in tokens)


@pytest.fixture(scope="module")
def embedding_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embedder")
    return folder, save_base_model(folder, qwen3_config(), "lasttoken")


def test_embed_rows_get_embeddings_and_bad_rows_error(embedding_model):
    folder, model = embedding_model
    rows = [
        {"tokens": [5, 9, 11, 40]},
        {"tokens": list(range(3, 60)), "pooling_params": {"dimensions": 16}},
        {"tokens": [7, 8], "sampling_params": {"max_tokens": 3}},
        {"tokens": []},
    ]

    def preprocess(row: dict) -> dict:
        request = {"prompt": words(row["tokens"])}
        for key in ("pooling_params", "sampling_params"):
            if row.get(key) is not None:
                request[key] = row[key]
        return request

    config = LLMProcessorConfig(
        model_source=str(folder),
        engine_kwargs=ENGINE,
        task_type="embed",
        apply_chat_template=False,
    )
    processor = build_llm_processor(config, preprocess=preprocess)
    out = processor(data.from_items(rows)).take_all()
    for row in out[:2]:
        assert row["error"] is None
        with torch.no_grad():
            hidden = model(torch.tensor([row["tokens"]])).last_hidden_state[0, -1]
        dims = (row.get("pooling_params") or {}).get("dimensions") or 64
        expected = F.normalize(hidden[:dims], dim=-1)
        torch.testing.assert_close(
            torch.tensor(row["embeddings"]), expected, atol=TOLERANCE, rtol=0
        )
        assert row["num_input_tokens"] == len(row["tokens"])
    assert "generated_text" not in out[0]
    assert out[2]["embeddings"] is None
    assert out[2]["error"].startswith("pooling_params: ValueError: the row gives sampling_params")
    assert "the prompt is empty" in out[3]["error"]


def test_classify_rows_get_probabilities(tmp_path):
    folder = tmp_path / "classifier"
    config = qwen3_config(
        num_labels=4, pad_token_id=0, architectures=["Qwen3ForSequenceClassification"]
    )
    model = save_classifier(folder, config)
    rows = [{"prompt": words([5, 6, 7])}, {"prompt": words([30, 31, 32, 33, 34])}]
    processor = build_processor(
        LLMProcessorConfig(
            model_source=str(folder),
            engine_kwargs=ENGINE,
            task_type="classify",
            chat_template_stage=False,
        )
    )
    out = processor(data.from_items(rows)).take_all()
    for row, tokens in zip(out, ([5, 6, 7], [30, 31, 32, 33, 34])):
        with torch.no_grad():
            probs = model(torch.tensor([tokens])).logits[0].softmax(-1)
        torch.testing.assert_close(torch.tensor(row["probs"]), probs, atol=TOLERANCE, rtol=0)


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    return make_lora_setup(tmp_path_factory.mktemp("lora_rows"))


def test_rows_choose_their_adapter_by_model_or_lora_column(lora_setup):
    base, folders = lora_setup
    root = base.parent
    prompts = [[5, 9, 11], [40, 41, 42, 43, 44, 45], [7, 70, 17, 71], [3, 4, 5, 6, 7, 8, 9]]
    rows = [
        {"tokens": prompts[0], "model": str(base)},
        {"tokens": prompts[1], "model": "everything"},
        {"tokens": prompts[2], "lora": str(folders["mlp-rslora"])},
        {"tokens": prompts[3], "model": "attention-qv"},
        {"tokens": prompts[0], "model": "no-such-adapter"},
        {"tokens": prompts[1]},
    ]
    adapter_of = [None, "everything", "mlp-rslora", "attention-qv", None, None]

    def preprocess(row: dict) -> dict:
        request = {
            "prompt": words(row["tokens"]),
            "sampling_params": {"max_tokens": 6, "temperature": 0, "ignore_eos": True},
        }
        for key in ("model", "lora"):
            if row.get(key) is not None:
                request[key] = row[key]
        return request

    config = LLMProcessorConfig(
        model_source=str(base),
        engine_kwargs={**ENGINE, "enable_lora": True, "max_loras": 2, "max_lora_rank": 16},
        apply_chat_template=False,
        dynamic_lora_loading_path=str(root),
    )
    processor = build_llm_processor(config, preprocess=preprocess)
    out = processor(data.from_items(rows)).take_all()
    assert "no adapter folder at" in out[4]["error"]
    assert out[4]["error"].startswith("lora: ValueError: model='no-such-adapter'")
    for row, adapter in zip(out, adapter_of):
        if row["error"] is not None:
            continue
        reference = merged_model(base, None if adapter is None else folders[adapter])
        assert row["generated_tokens"] == hf_greedy(reference, [row["tokens"]], 6, [])[0]


def test_an_incompatible_adapter_row_is_an_error_row(lora_setup, tmp_path):
    from tiny_lora import make_adapter

    base, _ = lora_setup
    too_large = tmp_path / "rank64"
    make_adapter(base, too_large, ["q_proj"], rank=64, seed=9)
    rows = [{"prompt": "w5 w6", "lora": str(too_large)}, {"prompt": "w7 w8"}]
    config = LLMProcessorConfig(
        model_source=str(base),
        engine_kwargs={**ENGINE, "enable_lora": True, "max_lora_rank": 16},
        apply_chat_template=False,
    )
    out = build_llm_processor(config)(data.from_items(rows)).take_all()
    assert out[0]["error"].startswith("engine: RequestRejected: LoRA adapter")
    assert "rank 64" in out[0]["error"] and "max_lora_rank=16" in out[0]["error"]
    assert out[1]["error"] is None and out[1]["generated_tokens"]


def test_embed_rows_messages_get_no_generation_prompt(embedding_model):
    folder, model = embedding_model
    template = (
        "{% for m in messages %}{{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}w99{% endif %}"
    )
    config = LLMProcessorConfig(
        model_source=str(folder), engine_kwargs=ENGINE, task_type="embed", chat_template=template
    )
    rows = [{"messages": [{"role": "user", "content": "w5 w6"}, {"role": "user", "content": "w7"}]}]
    (row,) = build_llm_processor(config)(data.from_items(rows)).take_all()
    assert row["prompt"] == "w5 w6 w7 "
    with torch.no_grad():
        hidden = model(torch.tensor([[5, 6, 7]])).last_hidden_state[0, -1]
    torch.testing.assert_close(
        torch.tensor(row["embeddings"]), F.normalize(hidden, dim=-1), atol=TOLERANCE, rtol=0
    )
