"""Engine-test material: chat prompts, tiny model configs (saved as random-weight folders by
tests/support/tiny_models.py, whose hf_greedy gives transformers' references)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import MistralConfig, PretrainedConfig, Qwen2Config, Qwen3Config

# Small enough that several engines fit a test machine; large enough for every prompt here.
ENGINE_KWARGS = dict(kv_cache_memory_bytes=256 << 20, max_num_seqs=64)
PARITY_NEW_TOKENS = 64

LONG_SYSTEM_PROMPT = (
    "You are a meticulous assistant for a small bookshop. You answer questions about opening "
    "hours, book recommendations, orders and returns. Always be polite and concise, never "
    "invent facts about stock you cannot see, and when a customer asks for a recommendation, "
    "suggest two or three titles with one sentence on why each fits. The shop opens from nine "
    "to six on weekdays and from ten to four on Saturdays; it is closed on Sundays."
)
USER_QUESTIONS = [
    "Hi!",
    "Are you open on Sunday?",
    "Can you recommend a mystery novel for a long train journey?",
    "I ordered a cookbook last week and it arrived with a torn cover. What can I do?",
    "What time do you close on Saturday, and can I pick up an order then?",
    "My daughter is nine and loves dragons. Which books would you suggest for her birthday?",
    "Do you sell gift cards?",
    "Explain, step by step, how I can return a book that I bought online two weeks ago, "
    "including whether I need the receipt and how long the refund usually takes.",
]
OTHER_CONVERSATIONS = [
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "List three uses of a paperclip."}],
    [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Describe your ship in detail."},
    ],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What colour is the sky?"},
    ],
    [
        {"role": "user", "content": "Give me a short story about a robot learning to paint."},
    ],
    [
        {"role": "user", "content": "How do I make a cup of tea?"},
        {"role": "assistant", "content": "Boil water, steep the tea, and add milk if you like."},
        {"role": "user", "content": "And how long should it steep?"},
    ],
    [{"role": "user", "content": "Translate 'good morning' into Spanish, French and German."}],
]


def parity_conversations() -> list[list[dict[str, str]]]:
    """16 conversations of different lengths; the first 8 share a long system prompt."""
    shared = [
        [{"role": "system", "content": LONG_SYSTEM_PROMPT}, {"role": "user", "content": q}]
        for q in USER_QUESTIONS
    ]
    return shared + OTHER_CONVERSATIONS


@dataclass
class GreedyReference:
    prompts: list[list[int]]
    outputs: list[list[int]]


TINY_VOCAB = 2048
_TINY_COMMON = dict(
    vocab_size=TINY_VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
)
TINY_CONFIGS: dict[str, PretrainedConfig] = {
    "qwen2": Qwen2Config(**_TINY_COMMON, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen3": Qwen3Config(**_TINY_COMMON, num_key_value_heads=2, head_dim=32),
    "mistral": MistralConfig(**_TINY_COMMON, num_key_value_heads=1, sliding_window=8),
}
