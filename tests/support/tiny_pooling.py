"""Tiny random pooling models saved as real folders: decoder embedding models (base-model
checkpoints with sentence-transformers files, as Qwen3-Embedding ships), sequence
classifiers, and BERT encoders."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tiny_models import _COMMON, VOCAB_SIZE, tiny_tokenizer
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    BertTokenizerFast,
    PretrainedConfig,
    PreTrainedModel,
    Qwen3Config,
)

_ST_TRANSFORMER = {
    "idx": 0,
    "name": "0",
    "path": "",
    "type": "sentence_transformers.models.Transformer",
}
_ST_POOLING = {
    "idx": 1,
    "name": "1",
    "path": "1_Pooling",
    "type": "sentence_transformers.models.Pooling",
}
_ST_NORMALIZE = {
    "idx": 2,
    "name": "2",
    "path": "2_Normalize",
    "type": "sentence_transformers.models.Normalize",
}


def qwen3_config(**overrides) -> Qwen3Config:
    defaults = {"num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 256}
    return Qwen3Config(**{**_COMMON, **defaults, **overrides})


def bert_config(**overrides) -> BertConfig:
    defaults = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    return BertConfig(**{**defaults, **overrides})


def _randomize(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """Every weight random (norm scales near 1), as tiny_models.random_hf_model does."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower():
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)
    return model.eval()


def write_sentence_transformers(folder: Path, pooling: str, normalize: bool) -> None:
    """modules.json and 1_Pooling/config.json, as sentence-transformers saves them."""
    modules = [_ST_TRANSFORMER, _ST_POOLING] + ([_ST_NORMALIZE] if normalize else [])
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    modes = {f"pooling_mode_{m}": m == pooling for m in ("cls_token", "mean_tokens", "lasttoken")}
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 64, **modes})
    )


def save_base_model(
    folder: Path,
    config: PretrainedConfig,
    pooling: str | None = "lasttoken",
    normalize: bool = True,
    seed: int = 0,
    architecture: str | None = None,
) -> PreTrainedModel:
    """A base model (``AutoModel``: tensors without the ``model.`` prefix) with a tokenizer
    and, unless ``pooling`` is None, sentence-transformers files; returns the model.
    ``architecture`` replaces the one config.json names (Qwen3-Embedding names its causal LM)."""
    model = _randomize(AutoModel.from_config(config, dtype=torch.float32), seed)
    model.save_pretrained(folder)
    if architecture is not None:
        saved = json.loads((folder / "config.json").read_text())
        saved["architectures"] = [architecture]
        (folder / "config.json").write_text(json.dumps(saved))
    tiny_tokenizer(config.vocab_size).save_pretrained(folder)
    if pooling is not None:
        write_sentence_transformers(folder, pooling, normalize)
    return model


def save_classifier(folder: Path, config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    """A ``*ForSequenceClassification`` checkpoint of ``config.num_labels`` labels."""
    model = _randomize(
        AutoModelForSequenceClassification.from_config(config, dtype=torch.float32), seed
    )
    model.save_pretrained(folder)
    tiny_tokenizer(config.vocab_size).save_pretrained(folder)
    return model


def bert_tokenizer(folder: Path, vocab_size: int = VOCAB_SIZE) -> BertTokenizerFast:
    """A WordPiece tokenizer with BERT's special tokens (``[CLS] a [SEP] b [SEP]`` for a pair,
    with token types) over the words ``w5`` ... as single tokens."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + [f"w{i}" for i in range(len(specials), vocab_size)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=False)


def save_bert_cross_encoder(folder: Path, seed: int = 0) -> PreTrainedModel:
    """A one-label BERT classifier with two token types and a BERT tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    config = bert_config(
        num_labels=1, type_vocab_size=2, architectures=["BertForSequenceClassification"]
    )
    model = _randomize(
        AutoModelForSequenceClassification.from_config(config, dtype=torch.float32), seed
    )
    model.save_pretrained(folder)
    bert_tokenizer(folder).save_pretrained(folder)
    return model
