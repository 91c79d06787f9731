"""Pooling models without llmbatch code (BERT, XLM-RoBERTa and other encoders, or any model run
with ``model_impl="transformers"``): the model's own transformers code over right-padded
batches.

The engine's paged attention is causal, which an encoder's tokens are not (each attends to
the whole text), so these models run as transformers runs them; `engine/encoder_engine.py`
batches prompts of similar length so that little of each batch is padding.
"""

from __future__ import annotations

import torch
from transformers import AutoModel, AutoModelForSequenceClassification, PretrainedConfig

from llmbatch.models.pooling import PoolerConfig

# position ids of these start after the padding index (RoBERTa's layout)
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl")


def encoder_max_length(config: PretrainedConfig) -> int:
    """The longest prompt a transformers-run pooling model takes."""
    text = config.get_text_config()
    length = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    if not isinstance(length, int) or length < 1:
        raise ValueError(
            f"the config of model type {config.model_type!r} gives no maximum length "
            "(max_position_embeddings)"
        )
    if text.model_type in _OFFSET_POSITIONS:
        length -= (getattr(text, "pad_token_id", None) or 0) + 1
    return length


class EncoderModel:
    """A transformers model returning, per prompt of a padded batch, the pooled hidden state
    (embed) or the classifier's logits (classify), before normalisation or activation."""

    def __init__(
        self,
        folder: str,
        config: PretrainedConfig,
        pooler: PoolerConfig,
        dtype: torch.dtype,
        device: torch.device,
        *,
        load_weights: bool = True,
        trust_remote_code: bool = False,
        seed: int = 0,
        sep_token_id: int | None = None,
    ) -> None:
        auto = AutoModelForSequenceClassification if pooler.task == "classify" else AutoModel
        if load_weights:
            model = auto.from_pretrained(
                folder, config=config, dtype=dtype, trust_remote_code=trust_remote_code
            )
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = auto.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
        self.model = model.to(device).eval().requires_grad_(False)
        self.pooler = pooler
        self.device = device
        text = config.get_text_config()
        self.vocab_size: int = text.vocab_size
        self.hidden_size: int = text.hidden_size
        self.pad_token_id = int(getattr(text, "pad_token_id", None) or 0)
        # a text pair's second text has token type 1 (BERT's cross-encoders read it)
        self._sep = sep_token_id if getattr(text, "type_vocab_size", 1) > 1 else None
        # a decoder's classifier (transformers' generic head) scores the last token itself;
        # llmbatch pools that token so that padding never matters
        self._score = getattr(self.model, "score", None) if pooler.task == "classify" else None

    @torch.inference_mode()
    def __call__(self, prompts: list[list[int]]) -> torch.Tensor:
        """``[len(prompts), hidden_size or num_labels]`` for one right-padded batch."""
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        width = int(lengths.max())
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(prompt)
        ids = ids.to(self.device)
        mask = (torch.arange(width, device=self.device) < lengths.unsqueeze(1)).long()
        inputs = {"input_ids": ids, "attention_mask": mask}
        if self._sep is not None:
            inputs["token_type_ids"] = token_types(ids, mask, self._sep)
        if self.pooler.task == "classify" and self._score is None:
            return self.model(**inputs).logits
        base = self.model if self._score is None else self.model.base_model
        hidden = base(**inputs).last_hidden_state
        pooled = pool_padded(hidden, mask, lengths, self.pooler.pooling_type)
        return pooled if self._score is None else self._score(pooled)


def token_types(ids: torch.Tensor, mask: torch.Tensor, sep_token_id: int) -> torch.Tensor:
    """BERT's segment ids, rebuilt from the tokens: 1 after the first separator (a pair's second
    text and its closing separator), 0 before and on it."""
    is_sep = (ids == sep_token_id).long()
    before = is_sep.cumsum(dim=1) - is_sep
    return (before > 0).long() * mask


def pool_padded(
    hidden: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, pooling_type: str
) -> torch.Tensor:
    """Each prompt's pooled hidden state from a right-padded batch ``[B, L, H]``."""
    if pooling_type == "CLS":
        return hidden[:, 0]
    if pooling_type == "LAST":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / lengths.unsqueeze(-1).to(hidden.dtype)
