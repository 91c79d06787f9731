"""LoRA adapters per request: greedy outputs equal transformers + PEFT with the adapter merged,
with rows of three adapters and the base model interleaved in one batch."""

from __future__ import annotations

import pytest
from tiny_lora import make_adapter, make_lora_setup, merged_model, write_peft_adapter
from tiny_models import hf_greedy, random_prompts, save_tiny_model, tiny_configs

from llmbatch import LLM, LoRARequest, SamplingParams
from llmbatch.engine.outputs import RequestRejected

NEW_TOKENS = 8
ENGINE = dict(
    kv_cache_memory_bytes=1 << 22,
    max_num_batched_tokens=64,
    max_num_seqs=16,
    enable_lora=True,
    max_lora_rank=16,
)


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    return make_lora_setup(tmp_path_factory.mktemp("lora"))


def requests_of(folders) -> list[LoRARequest | None]:
    """The base and each adapter in turn."""
    loras = [None] + [
        LoRARequest(name, i + 1, str(folder)) for i, (name, folder) in enumerate(folders.items())
    ]
    return loras


def test_interleaved_adapters_equal_transformers_with_the_adapter_merged(lora_setup):
    base, folders = lora_setup
    loras = requests_of(folders)
    prompts = random_prompts([7, 12, 5, 20, 9, 14, 6, 11], seed=2)
    chosen = [loras[i % len(loras)] for i in range(len(prompts))]
    expected = []
    references = {}
    for prompt, lora in zip(prompts, chosen):
        key = None if lora is None else lora.lora_name
        if key not in references:
            references[key] = merged_model(base, None if lora is None else lora.lora_path)
        expected.append(hf_greedy(references[key], [prompt], NEW_TOKENS, [])[0])
    # two device slots for three adapters: slots are reused as requests finish
    with LLM(str(base), **{**ENGINE, "max_loras": 2}) as llm:
        outputs = llm.generate(
            prompts,
            SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True),
            lora_request=chosen,
        )
    assert [o.outputs[0].token_ids for o in outputs] == expected
    by_adapter = {}
    for lora, tokens in zip(chosen, expected):
        by_adapter.setdefault(None if lora is None else lora.lora_name, tokens)
    assert len({tuple(t) for t in by_adapter.values()}) > 1, "the adapters change the outputs"


def test_prefix_cache_is_shared_only_within_one_adapter(lora_setup):
    base, folders = lora_setup
    first, second = requests_of(folders)[1:3]
    prompt = random_prompts([40], seed=4)[0]
    params = SamplingParams(max_tokens=2, temperature=0)
    with LLM(str(base), **ENGINE) as llm:
        llm.generate([prompt], params, lora_request=first)
        same = llm.generate([prompt], params, lora_request=first)[0]
        other = llm.generate([prompt], params, lora_request=second)[0]
        base_run = llm.generate([prompt], params)[0]
    assert same.num_cached_tokens == 32
    assert other.num_cached_tokens == 0
    assert base_run.num_cached_tokens == 0


def bad_adapter(tmp_path, base, kind: str):
    folder = tmp_path / kind
    if kind == "rank-too-large":
        make_adapter(base, folder, ["q_proj"], rank=32, seed=5)
    elif kind == "embedding-target":
        make_adapter(base, folder, ["embed_tokens", "q_proj"], rank=4, seed=5)
    elif kind == "other-base-shape":
        other = tmp_path / "other_base"
        config = tiny_configs()["qwen3-qk-norm"]
        config.intermediate_size = 80
        save_tiny_model(other, config)
        make_adapter(other, folder, ["up_proj"], rank=4, seed=5)
    elif kind == "dora":
        make_adapter(base, folder, ["q_proj"], rank=4, seed=5, use_dora=True)
    return folder


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("rank-too-large", "rank 32 of model.layers.0.self_attn.q_proj exceeds max_lora_rank=16"),
        ("embedding-target", "targets modules this model does not run with LoRA"),
        ("other-base-shape", r"was made for other shapes than this model's: .*up_proj"),
        ("dora", "use_dora"),
        ("missing", "no such folder"),
    ],
)
def test_an_incompatible_adapter_is_rejected_naming_the_problem(
    lora_setup, tmp_path, kind, message
):
    base, _ = lora_setup
    folder = tmp_path / "missing" if kind == "missing" else bad_adapter(tmp_path, base, kind)
    with LLM(str(base), **ENGINE) as llm:
        with pytest.raises(RequestRejected, match=message):
            llm.llm_engine.add_request(
                "bad", [5, 6, 7], SamplingParams(), lora_request=LoRARequest("bad", 9, str(folder))
            )
        assert not llm.llm_engine.has_unfinished()


def test_adapters_need_enable_lora(lora_setup):
    base, folders = lora_setup
    lora = requests_of(folders)[1]
    with LLM(str(base), kv_cache_memory_bytes=1 << 22) as llm:
        with pytest.raises(ValueError, match="enable_lora=True"):
            llm.generate(["w5 w6"], SamplingParams(max_tokens=2), lora_request=lora)


def test_an_adapter_written_in_peft_s_format_equals_peft_merged(lora_setup, tmp_path):
    """The form the GPU tests and benchmarks write adapters in (no PEFT there)."""
    base, _ = lora_setup
    folder = tmp_path / "written"
    write_peft_adapter(folder, tiny_configs()["qwen3-qk-norm"], ["k_proj", "gate_proj"], 8, seed=7)
    prompts = random_prompts([9, 15], seed=8)
    reference = merged_model(base, folder)
    expected = [hf_greedy(reference, [p], NEW_TOKENS, [])[0] for p in prompts]
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    with LLM(str(base), **ENGINE) as llm:
        outputs = llm.generate(prompts, params, lora_request=LoRARequest("written", 1, str(folder)))
    assert [o.outputs[0].token_ids for o in outputs] == expected
