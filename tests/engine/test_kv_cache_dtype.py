"""An fp8 KV cache on the real SmolLM2: four times the tokens of a float32 cache in the same
memory, and predictions close to transformers' in float32."""

from __future__ import annotations

import pytest
import torch
from engine_testing import ENGINE_KWARGS

from llmbatch import LLM, SamplingParams

QUESTIONS = [
    "Tell me a story about a lighthouse keeper.",
    "How do I make a cup of tea?",
    "List three uses of a paperclip.",
]
NEW_TOKENS = 32


def chat_prompts(tokenizer) -> list[list[int]]:
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in QUESTIONS
    ]
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


@pytest.fixture(scope="module")
def float32_blocks(smollm2_dir) -> int:
    with LLM(smollm2_dir, **ENGINE_KWARGS, max_model_len=512) as llm:
        return llm.llm_engine.num_kv_blocks


@pytest.mark.parametrize(
    ("kv_cache_dtype", "max_mean_error", "min_agreement"),
    [("fp8", 0.15, 0.9), ("fp8_e5m2", 0.25, 0.8)],
)
def test_fp8_cache_holds_4x_the_tokens_and_keeps_the_models_predictions(
    smollm2_dir, hf_smollm2, float32_blocks, kv_cache_dtype, max_mean_error, min_agreement
):
    with LLM(smollm2_dir, **ENGINE_KWARGS, max_model_len=512, kv_cache_dtype=kv_cache_dtype) as llm:
        assert llm.llm_engine.num_kv_blocks == 4 * float32_blocks
        prompts = chat_prompts(llm.get_tokenizer())
        params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, logprobs=0, ignore_eos=True)
        outputs = llm.generate(prompts, params)
    agreeing = 0
    for prompt, out in zip(prompts, outputs):
        ids = torch.tensor([prompt + out.token_ids])
        with torch.no_grad():
            logits = hf_smollm2(ids).logits[0, len(prompt) - 1 : -1].float()
        reference = torch.log_softmax(logits, dim=-1)
        errors = [
            abs(entry[token].logprob - reference[step, token].item())
            for step, (token, entry) in enumerate(zip(out.token_ids, out.logprobs))
        ]
        assert sum(errors) / len(errors) <= max_mean_error
        agreeing += sum(int(reference[step].argmax()) == t for step, t in enumerate(out.token_ids))
    assert agreeing >= min_agreement * NEW_TOKENS * len(prompts)
