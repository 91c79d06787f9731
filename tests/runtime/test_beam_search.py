"""Beam search equals transformers' generate(num_beams=k) on the same tiny model (float32)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_prompts, save_tiny_model, tiny_configs

from llmbatch import LLM, BeamSearchParams


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-beams")
    model = save_tiny_model(folder, tiny_configs()["qwen3-qk-norm"])
    return str(folder), model


def hf_beams(model, prompt: list[int], width: int, max_tokens: int, **kwargs) -> list[list[int]]:
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        num_beams=width,
        num_return_sequences=width,
        max_new_tokens=max_tokens,
        do_sample=False,
        pad_token_id=1,
        eos_token_id=2,
        return_dict_in_generate=True,
        **kwargs,
    )
    lengths = (out.beam_indices >= 0).sum(dim=1).tolist()
    return [row[: len(prompt) + n].tolist() for row, n in zip(out.sequences, lengths)]


@pytest.mark.parametrize(
    ("width", "max_tokens", "length_penalty"), [(2, 12, 1.0), (4, 10, 1.0), (3, 8, 0.0)]
)
def test_beam_search_equals_transformers(tiny, width, max_tokens, length_penalty):
    folder, model = tiny
    prompts = random_prompts([5, 9, 14], seed=width)
    with LLM(folder, dtype="float32", max_model_len=128, block_size=4) as llm:
        results = llm.beam_search(
            prompts,
            BeamSearchParams(
                beam_width=width, max_tokens=max_tokens, length_penalty=length_penalty
            ),
        )
        assert llm.llm_engine.stats.num_cached_tokens > 0  # beams share their prefixes
    for prompt, result in zip(prompts, results):
        expected = hf_beams(model, prompt, width, max_tokens, length_penalty=length_penalty)
        assert [s.tokens for s in result.sequences] == expected
        for sequence in result.sequences:
            generated = sequence.tokens[len(prompt) :]
            assert sequence.cum_logprob == pytest.approx(
                sum(e[t].logprob for e, t in zip(sequence.logprobs, generated))
            )


def test_beam_search_rejects_bad_params(tiny):
    folder, _ = tiny
    with pytest.raises(ValueError, match="beam_width must be at least 1"):
        BeamSearchParams(beam_width=0, max_tokens=4)
    with LLM(folder, dtype="float32", max_model_len=64, max_logprobs=4) as llm:
        with pytest.raises(ValueError, match="raise max_logprobs"):
            llm.beam_search([[5, 6, 7]], BeamSearchParams(beam_width=3, max_tokens=4))
