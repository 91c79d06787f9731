"""Pooling models on the engine (decoder embedding models, sequence classifiers) and on their
transformers code (BERT encoders), held against transformers' own hidden states and logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import random_prompts
from tiny_pooling import (
    bert_config,
    qwen3_config,
    save_base_model,
    save_bert_cross_encoder,
    save_classifier,
)

from llmbatch import LLM, PoolingParams, SamplingParams
from llmbatch.engine.outputs import RequestRejected
from llmbatch.engine.pooling_params import PoolingParams as EnginePoolingParams

TOLERANCE = 1e-5
# small steps, so that the longer prompts are split over several (chunked prefill)
ENGINE = dict(kv_cache_memory_bytes=1 << 22, max_num_batched_tokens=32, max_num_seqs=8)
PROMPTS = random_prompts([5, 37, 1, 70, 12], seed=3)


@pytest.fixture(scope="module")
def embedding_folder(tmp_path_factory):
    """Qwen3-Embedding's shape: a base-model checkpoint naming the causal LM, last-token
    pooling and normalisation in its sentence-transformers files."""
    folder = tmp_path_factory.mktemp("qwen3_embedding")
    model = save_base_model(folder, qwen3_config(), "lasttoken", architecture="Qwen3ForCausalLM")
    return folder, model


@pytest.fixture(scope="module")
def embedder(embedding_folder):
    with LLM(str(embedding_folder[0]), **ENGINE) as llm:
        yield llm


def vector(output) -> torch.Tensor:
    values = getattr(output.outputs, "embedding", None) or output.outputs.probs
    return torch.tensor(values)


def hidden_states(model, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([prompt])).last_hidden_state[0]


def test_embeddings_equal_transformers_last_token_normalised(embedding_folder, embedder):
    _, model = embedding_folder
    outputs = embedder.embed(PROMPTS)
    assert [o.prompt_token_ids for o in outputs] == PROMPTS
    for prompt, output in zip(PROMPTS, outputs):
        expected = F.normalize(hidden_states(model, prompt)[-1], dim=-1)
        assert output.outputs.hidden_size == 64
        torch.testing.assert_close(
            torch.tensor(output.outputs.embedding), expected, atol=TOLERANCE, rtol=0
        )


def test_dimensions_and_prompt_truncation(embedding_folder, embedder):
    _, model = embedding_folder
    (output,) = embedder.embed([PROMPTS[1]], PoolingParams(dimensions=16))
    expected = F.normalize(hidden_states(model, PROMPTS[1])[-1][:16], dim=-1)
    torch.testing.assert_close(
        torch.tensor(output.outputs.embedding), expected, atol=TOLERANCE, rtol=0
    )
    (cut,) = embedder.embed([PROMPTS[1]], truncate_prompt_tokens=10)
    expected = F.normalize(hidden_states(model, PROMPTS[1][-10:])[-1], dim=-1)
    assert cut.prompt_token_ids == PROMPTS[1][-10:]
    torch.testing.assert_close(vector(cut), expected, atol=TOLERANCE, rtol=0)
    (raw,) = embedder.embed([PROMPTS[1]], PoolingParams(normalize=False))
    torch.testing.assert_close(
        torch.tensor(raw.outputs.embedding),
        hidden_states(model, PROMPTS[1])[-1],
        atol=TOLERANCE,
        rtol=0,
    )


def test_shared_prefix_is_served_from_the_prefix_cache(embedding_folder, embedder):
    _, model = embedding_folder
    prefix = random_prompts([48], seed=9)[0]
    first, second = prefix + [7, 8], prefix + [9]
    outputs = [embedder.embed([p])[0] for p in (first, second)]
    assert outputs[1].num_cached_tokens == 48
    for prompt, output in zip((first, second), outputs):
        expected = F.normalize(hidden_states(model, prompt)[-1], dim=-1)
        torch.testing.assert_close(vector(output), expected, atol=TOLERANCE, rtol=0)


def test_no_kv_blocks_are_held_after_pooling(embedder):
    engine = embedder.llm_engine
    embedder.embed(PROMPTS)
    blocks = engine._block_manager
    assert blocks.num_free_blocks == blocks.num_blocks
    assert not engine.has_unfinished()


def test_score_of_an_embedding_model_is_the_cosine_similarity(embedding_folder, embedder):
    _, model = embedding_folder
    query, documents = PROMPTS[0], PROMPTS[1:4]
    scores = embedder.score(query, documents)
    for document, scored in zip(documents, scores):
        expected = F.cosine_similarity(
            hidden_states(model, query)[-1], hidden_states(model, document)[-1], dim=0
        )
        assert abs(scored.outputs.score - float(expected)) < TOLERANCE
        assert scored.prompt_token_ids == query + document


def test_mean_pooling_over_chunked_prompts_with_async_scheduling(embedding_folder):
    folder, model = embedding_folder
    with LLM(
        str(folder), pooler_config={"pooling_type": "MEAN"}, async_scheduling=True, **ENGINE
    ) as llm:
        outputs = llm.embed(PROMPTS)
        blocks = llm.llm_engine._block_manager
        assert blocks.num_free_blocks == blocks.num_blocks
    for prompt, output in zip(PROMPTS, outputs):
        expected = F.normalize(hidden_states(model, prompt).mean(dim=0), dim=-1)
        torch.testing.assert_close(vector(output), expected, atol=TOLERANCE, rtol=0)


def test_pooling_engines_refuse_other_kinds_of_requests(embedder):
    with pytest.raises(ValueError, match="pooling model"):
        embedder.generate(["w5 w6"], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="LLM.classify needs a model that can classify"):
        embedder.classify(["w5 w6"])
    with pytest.raises(ValueError, match="dimensions=65 exceeds the model's 64"):
        embedder.embed(["w5 w6"], PoolingParams(dimensions=65))
    with pytest.raises(ValueError, match="use_activation do"):
        embedder.embed(["w5 w6"], PoolingParams(use_activation=False))
    with pytest.raises(TypeError, match="dimensions must be an int"):
        PoolingParams(dimensions="16")


def test_a_generative_engine_refuses_pooling_requests(tmp_path):
    folder = tmp_path / "qwen3"
    from tiny_models import save_tiny_model

    save_tiny_model(folder, qwen3_config(architectures=["Qwen3ForCausalLM"]))
    with LLM(str(folder), **ENGINE) as llm:
        assert llm.llm_engine.config.pooler is None
        with pytest.raises(ValueError, match="runner='pooling'"):
            llm.embed(["w5 w6"])
        with pytest.raises(RequestRejected, match="runs a generative model"):
            llm.llm_engine.add_request("x", [5, 6], EnginePoolingParams(task="embed"))


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_classifier")
    config = qwen3_config(
        num_labels=3, pad_token_id=0, architectures=["Qwen3ForSequenceClassification"]
    )
    return folder, save_classifier(folder, config)


def test_classifier_probabilities_equal_transformers(classifier_folder):
    folder, model = classifier_folder
    with LLM(str(folder), **ENGINE) as llm:
        assert llm.llm_engine.config.pooler.task == "classify"
        outputs = llm.classify(PROMPTS)
        raw = llm.classify(PROMPTS[:2], PoolingParams(use_activation=False))
    for prompt, output in zip(PROMPTS, outputs):
        with torch.no_grad():
            logits = model(torch.tensor([prompt])).logits[0]
        assert output.outputs.num_classes == 3
        torch.testing.assert_close(
            torch.tensor(output.outputs.probs), logits.softmax(-1), atol=TOLERANCE, rtol=0
        )
    for prompt, output in zip(PROMPTS, raw):
        with torch.no_grad():
            logits = model(torch.tensor([prompt])).logits[0]
        torch.testing.assert_close(
            torch.tensor(output.outputs.probs), logits, atol=TOLERANCE, rtol=0
        )


def test_a_one_label_classifier_scores_pairs_as_a_cross_encoder(tmp_path):
    folder = tmp_path / "reranker"
    config = qwen3_config(
        num_labels=1, pad_token_id=0, architectures=["Qwen3ForSequenceClassification"]
    )
    model = save_classifier(folder, config, seed=4)
    query, documents = "w5 w9 w11", ["w20 w21", "w40 w41 w42", "w7"]
    with LLM(str(folder), **ENGINE) as llm:
        scores = llm.score(query, documents)
        tokenizer = llm.get_tokenizer()
    for document, scored in zip(documents, scores):
        ids = tokenizer(query, text_pair=document)["input_ids"]
        with torch.no_grad():
            logit = model(torch.tensor([ids])).logits[0, 0]
        assert abs(scored.outputs.score - float(torch.sigmoid(logit))) < TOLERANCE


@pytest.mark.parametrize("pooling", ["cls_token", "mean_tokens"])
def test_bert_embeddings_equal_transformers(tmp_path, pooling):
    folder = tmp_path / "bert"
    model = save_base_model(folder, bert_config(), pooling)
    prompts = random_prompts([9, 30, 4, 17], seed=5)
    with LLM(str(folder), max_num_batched_tokens=64, max_num_seqs=3) as llm:
        assert llm.llm_engine.config.pooler.encoder
        outputs = llm.embed(prompts)
    for prompt, output in zip(prompts, outputs):
        hidden = hidden_states(model, prompt)
        pooled = hidden[0] if pooling == "cls_token" else hidden.mean(dim=0)
        torch.testing.assert_close(
            vector(output), F.normalize(pooled, dim=-1), atol=TOLERANCE, rtol=0
        )


def test_bert_classifier_probabilities_equal_transformers(tmp_path):
    folder = tmp_path / "bert_classifier"
    config = bert_config(num_labels=2, architectures=["BertForSequenceClassification"])
    model = save_classifier(folder, config)
    prompts = random_prompts([9, 30, 4, 17, 2], seed=6)
    with LLM(str(folder), max_num_batched_tokens=64, max_num_seqs=4) as llm:
        outputs = llm.classify(prompts)
    for prompt, output in zip(prompts, outputs):
        with torch.no_grad():
            logits = model(torch.tensor([prompt])).logits[0]
        torch.testing.assert_close(vector(output), logits.softmax(-1), atol=TOLERANCE, rtol=0)


def test_a_bert_cross_encoder_scores_pairs_with_their_token_types(tmp_path):
    folder = tmp_path / "cross_encoder"
    model = save_bert_cross_encoder(folder, seed=2)
    query, documents = "w5 w9 w11", ["w20 w21 w7", "w40", "w7 w70 w71 w72 w9"]
    with LLM(str(folder), max_num_batched_tokens=64) as llm:
        scores = llm.score(query, documents)
        tokenizer = llm.get_tokenizer()
    for document, scored in zip(documents, scores):
        inputs = tokenizer(query, document, return_tensors="pt")
        assert inputs["token_type_ids"].sum() > 0, "the pair's second text has type 1"
        with torch.no_grad():
            logit = model(**inputs).logits[0, 0]
        assert abs(scored.outputs.score - float(torch.sigmoid(logit))) < TOLERANCE
