"""Session fixtures of the engine tests: the SmolLM2 tokenizer and transformers references."""

from __future__ import annotations

import pytest
import torch
from engine_testing import PARITY_NEW_TOKENS, GreedyReference, parity_conversations
from tiny_models import hf_greedy
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir: str):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_dir: str) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def smollm2_greedy_reference(hf_smollm2, smollm2_tokenizer) -> GreedyReference:
    prompts = [
        smollm2_tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
        for c in parity_conversations()
    ]
    prompt_ids = [smollm2_tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    eos = [hf_smollm2.generation_config.eos_token_id]
    return GreedyReference(prompt_ids, hf_greedy(hf_smollm2, prompt_ids, PARITY_NEW_TOKENS, eos))
