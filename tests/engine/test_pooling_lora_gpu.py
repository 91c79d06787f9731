"""On CUDA: embeddings and classifier probabilities in bfloat16 within transformers' own
bfloat16 error, and LoRA adapters interleaved in batches replayed by CUDA graphs (with async
scheduling) giving the CPU engine's greedy tokens, which equal transformers + PEFT merged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_lora import write_peft_adapter
from tiny_models import random_prompts, save_tiny_model, tiny_configs
from tiny_pooling import qwen3_config, save_base_model, save_classifier
from transformers import AutoModel, AutoModelForSequenceClassification

from llmbatch import LLM, LoRARequest, SamplingParams

pytestmark = pytest.mark.gpu
PROMPTS = random_prompts([5, 37, 1, 70, 12, 200], seed=3)


def reference(auto, folder, dtype: torch.dtype, task: str) -> list[torch.Tensor]:
    model = auto.from_pretrained(folder, dtype=dtype).to("cuda").eval()
    results = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = torch.tensor([prompt], device="cuda")
            if task == "embed":
                hidden = model(ids).last_hidden_state[0, -1].float()
                results.append(F.normalize(hidden, dim=-1))
            else:
                results.append(model(ids).logits[0].float().softmax(-1))
    return results


def assert_within_bfloat16_error(ours, exact, rounded) -> None:
    """Ours are as close to transformers' float32 results as its own bfloat16 results are
    (twice their largest error, or 1e-2)."""
    for mine, reference_value, theirs in zip(ours, exact, rounded):
        bound = max(1e-2, 2 * (theirs - reference_value).abs().max().item())
        error = (mine.cpu() - reference_value.cpu()).abs().max().item()
        assert error <= bound, f"error {error:.3g} beyond {bound:.3g}"


def test_bfloat16_embeddings_within_transformers_error(tmp_path):
    folder = tmp_path / "embedder"
    save_base_model(folder, qwen3_config(max_position_embeddings=512), "lasttoken")
    with LLM(str(folder), dtype="bfloat16", max_num_batched_tokens=128) as llm:
        ours = [torch.tensor(o.outputs.embedding) for o in llm.embed(PROMPTS)]
    exact = reference(AutoModel, folder, torch.float32, "embed")
    rounded = reference(AutoModel, folder, torch.bfloat16, "embed")
    assert_within_bfloat16_error(ours, exact, rounded)


def test_bfloat16_classifier_within_transformers_error(tmp_path):
    folder = tmp_path / "classifier"
    config = qwen3_config(
        num_labels=5,
        pad_token_id=0,
        max_position_embeddings=512,
        architectures=["Qwen3ForSequenceClassification"],
    )
    save_classifier(folder, config)
    with LLM(str(folder), dtype="bfloat16", max_num_batched_tokens=128) as llm:
        ours = [torch.tensor(o.outputs.probs) for o in llm.classify(PROMPTS)]
    auto = AutoModelForSequenceClassification
    assert_within_bfloat16_error(
        ours,
        reference(auto, folder, torch.float32, "classify"),
        reference(auto, folder, torch.bfloat16, "classify"),
    )


ADAPTER_TARGETS = [
    ["q_proj", "v_proj"],
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ["up_proj", "down_proj", "o_proj"],
]


def test_lora_adapters_under_cuda_graphs_give_the_cpu_engine_s_tokens(tmp_path):
    """The CPU engine's LoRA outputs equal transformers + PEFT (tests/engine/test_lora.py);
    the adapters here are written in PEFT's format, which needs no PEFT on the GPU host."""
    config = tiny_configs()["qwen3-qk-norm"]
    base = tmp_path / "base"
    save_tiny_model(base, config)
    loras: list[LoRARequest | None] = [None]
    for index, targets in enumerate(ADAPTER_TARGETS):
        folder = tmp_path / f"adapter{index}"
        write_peft_adapter(folder, config, targets, rank=4 * (index + 1), seed=index)
        loras.append(LoRARequest(f"adapter{index}", index + 1, str(folder)))
    prompts = random_prompts([7, 12, 5, 20, 9, 14, 6, 11, 30, 3, 17, 8], seed=2)
    chosen = [loras[i % len(loras)] for i in range(len(prompts))]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    engine = dict(dtype="float32", enable_lora=True, max_loras=2, max_lora_rank=16)
    with LLM(str(base), device="cpu", kv_cache_memory_bytes=1 << 24, **engine) as llm:
        expected = [
            o.outputs[0].token_ids for o in llm.generate(prompts, params, lora_request=chosen)
        ]
    with LLM(str(base), device="cuda", **engine) as llm:
        assert llm.llm_engine.config.cuda_graphs and llm.llm_engine.config.async_scheduling
        outputs = llm.generate(prompts, params, lora_request=chosen)
        replays = llm.llm_engine._runner._decode_graphs.replays
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert replays > 0
