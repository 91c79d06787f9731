"""Tiny random-weight checkpoints of each supported family, saved as real model folders."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Olmo2Config,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)

VOCAB_SIZE = 128
_COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_configs() -> dict[str, PretrainedConfig]:
    """One config per family feature the model code must honour."""
    return {
        "qwen2-bias-tied": Qwen2Config(
            **_COMMON, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256
        ),
        "qwen3-qk-norm": Qwen3Config(
            **_COMMON, num_key_value_heads=2, head_dim=32, max_position_embeddings=256
        ),
        "mistral-sliding-window": MistralConfig(
            **_COMMON, num_key_value_heads=1, sliding_window=6, max_position_embeddings=256
        ),
        "llama3-rope-scaling": LlamaConfig(
            **_COMMON,
            num_key_value_heads=2,
            attention_bias=True,
            mlp_bias=True,
            max_position_embeddings=256,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
    }


# shorter than every parity prompt, so that the sliding layers cut their context
TINY_WINDOW = 6
_FAMILY_COMMON = dict(
    _COMMON, num_hidden_layers=3, num_key_value_heads=2, max_position_embeddings=256
)


def family_configs() -> dict[str, PretrainedConfig]:
    """One config per family with its own code beyond Llama's, its special features switched
    on: sliding windows shorter than the prompts, soft-capping (small caps, so that they bite),
    LongRoPE factors with a partial rotary, several experts with top-2 routing."""
    gemma = dict(_FAMILY_COMMON, head_dim=16, query_pre_attn_scalar=24, pad_token_id=0)
    return {
        "gemma2-softcap-window": Gemma2Config(
            **gemma,
            sliding_window=TINY_WINDOW,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        ),
        "gemma3-local-global-rope": Gemma3TextConfig(
            **gemma,
            sliding_window=TINY_WINDOW,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 4.0},
            },
        ),
        "phi3-longrope-partial-window": Phi3Config(
            **_FAMILY_COMMON,
            pad_token_id=0,
            sliding_window=TINY_WINDOW,
            original_max_position_embeddings=128,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "short_factor": [1.0 + 0.1 * i for i in range(6)],
                "long_factor": [2.0 + 0.3 * i for i in range(6)],
                "partial_rotary_factor": 0.75,
            },
        ),
        "mixtral-top2-window": MixtralConfig(
            **_FAMILY_COMMON, num_local_experts=4, num_experts_per_tok=2, sliding_window=TINY_WINDOW
        ),
        "qwen3-moe-top2": Qwen3MoeConfig(
            **_FAMILY_COMMON,
            head_dim=16,
            num_experts=6,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            norm_topk_prob=True,
            mlp_only_layers=[1],
        ),
        "qwen2-moe-shared-expert": Qwen2MoeConfig(
            **_FAMILY_COMMON,
            num_experts=6,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            norm_topk_prob=False,
        ),
    }


def fallback_configs() -> dict[str, PretrainedConfig]:
    """Architectures without llmbatch code, each with what its transformers code does beyond
    Llama, for the transformers fallback."""
    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    return {
        # per-head q/k norms over the whole projection, norms after the sub-layers
        "olmo2": Olmo2Config(**common, num_key_value_heads=2),
        # embedding, residual and attention multipliers, logits divided in the model's head
        "granite": GraniteConfig(
            **common,
            num_key_value_heads=2,
            embedding_multiplier=3.0,
            residual_multiplier=0.5,
            attention_multiplier=0.3,
            logits_scaling=4.0,
        ),
        # LayerNorm, fused QKV, rotary on a quarter of each head, parallel residual
        "gpt_neox": GPTNeoXConfig(**common, rotary_pct=0.25, use_parallel_residual=True),
        # learned absolute positions (from each token's own position), a head that reads more
        # than the last hidden state from its decoder's output
        "gpt2": GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=256,
            bos_token_id=1,
            eos_token_id=2,
        ),
    }


def tiny_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: token i is the word "w{i}" (0-2: unk, bos, eos)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def random_hf_model(config: PretrainedConfig, seed: int = 0) -> PreTrainedModel:
    """A transformers model whose every weight, bias and norm scale is random.

    transformers starts biases at 0 and norm scales at 1, which would hide a wrongly loaded one; the
    spread is wide enough that attention is far from uniform, so masking mistakes show.
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)
    return model.eval()


def save_tiny_model(folder: Path, config: PretrainedConfig, **save_kwargs) -> PreTrainedModel:
    """Saves a random model with a tokenizer to ``folder``; returns the transformers model."""
    model = random_hf_model(config)
    model.save_pretrained(folder, **save_kwargs)
    tiny_tokenizer(config.vocab_size).save_pretrained(folder)
    return model


def random_prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB_SIZE, (n,), generator=generator).tolist() for n in lengths]


def hf_greedy(
    model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, eos_ids: list[int]
) -> list[list[int]]:
    """transformers generate(), greedy, all prompts in one left-padded batch with an attention
    mask; each output cut after its first EOS."""
    width = max(len(p) for p in prompts)
    pad = eos_ids[0] if eos_ids else 0
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        generated = model.generate(
            input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos_ids or None,
        )
    outputs = []
    for row in generated[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        outputs.append(row[:cut])
    return outputs
