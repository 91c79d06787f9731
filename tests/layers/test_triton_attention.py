"""The Triton attention backend against a naive per-sequence reference, on random paged batches.

On the CPU the kernels run under Triton's interpreter in a child process: triton reads
TRITON_INTERPRET when a kernel is decorated, i.e. when llmbatch's Triton modules are imported, so
it is set for the child only and never leaks into the rest of the suite. bfloat16 is checked on
the GPU only (the interpreter's bfloat16 dot product is wrong).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import pytest
import torch
from interpreted import interpreted_results as run_interpreted
from interpreted import print_results

from llmbatch.layers.attention.base import AttentionMetadata


@dataclass(slots=True)
class AttentionCase:
    name: str
    query_lens: list[int]
    seq_lens: list[int]
    heads: tuple[int, int]  # (query heads, KV heads)
    head_dim: int = 64
    block_size: int = 16
    dtype: torch.dtype = torch.float32
    sliding_window: int | None = None
    softcap: float | None = None
    decode_splits: int | None = None
    padding_tokens: int = 0
    padding_seqs: int = 0  # sequences with no query tokens, after the real ones (captured steps)
    cache_dtype: torch.dtype | None = None  # None: the case's dtype
    # The step's own K/V already sit in the cache and nothing is written: the read path alone
    # (Triton's interpreter rounds to fp8 wrongly, so fp8 writes are checked on the GPU).
    cache_prewritten: bool = False
    seed: int = 0


@dataclass(slots=True)
class PagedBatch:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    kv_cache: torch.Tensor
    meta: AttentionMetadata
    keys: list[torch.Tensor] = field(default_factory=list)  # per sequence, all seq_len tokens
    values: list[torch.Tensor] = field(default_factory=list)
    expected_cache: torch.Tensor | None = None  # kv_cache once this step's K/V are written


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def build_batch(
    case: AttentionCase,
    device: str,
    num_blocks: int | None = None,
    table_width: int | None = None,
) -> PagedBatch:
    """A flat batch whose earlier tokens sit in randomly scattered cache blocks."""
    from llmbatch.layers.attention.torch_backend import to_cache_dtype

    gen = torch.Generator().manual_seed(case.seed)
    cache_dtype = case.cache_dtype or case.dtype

    def as_cached(x: torch.Tensor) -> torch.Tensor:
        return to_cache_dtype(x, cache_dtype)

    (num_heads, kv_heads), page, dim = case.heads, case.block_size, case.head_dim
    blocks_per_seq = [cdiv(s, page) for s in case.seq_lens]
    num_blocks = num_blocks or sum(blocks_per_seq) + 3
    table_width = table_width or max(blocks_per_seq)
    block_order = torch.randperm(num_blocks, generator=gen)
    # Unused blocks hold noise too, so reading a wrong block cannot go unnoticed.
    kv_cache = torch.randn(2, num_blocks, page, kv_heads, dim, generator=gen).to(cache_dtype)
    flat_cache = kv_cache.view(2, num_blocks * page, kv_heads, dim)
    block_tables = torch.zeros(len(case.seq_lens), table_width, dtype=torch.int32)
    keys, values, new_slots, fresh_keys, fresh_values = [], [], [], [], []
    used = 0
    for seq, (query_len, seq_len) in enumerate(zip(case.query_lens, case.seq_lens)):
        blocks = block_order[used : used + blocks_per_seq[seq]]
        used += blocks_per_seq[seq]
        block_tables[seq, : len(blocks)] = blocks.to(torch.int32)
        slots = blocks.repeat_interleave(page)[:seq_len] * page + torch.arange(seq_len) % page
        seq_keys = torch.randn(seq_len, kv_heads, dim, generator=gen).to(case.dtype)
        seq_values = torch.randn(seq_len, kv_heads, dim, generator=gen).to(case.dtype)
        context = seq_len if case.cache_prewritten else seq_len - query_len
        flat_cache[0, slots[:context]] = as_cached(seq_keys[:context])
        flat_cache[1, slots[:context]] = as_cached(seq_values[:context])
        # the reference attends to what the cache holds
        keys.append(as_cached(seq_keys).to(case.dtype))
        values.append(as_cached(seq_values).to(case.dtype))
        fresh_keys.append(seq_keys[seq_len - query_len :])
        fresh_values.append(seq_values[seq_len - query_len :])
        if case.cache_prewritten:
            new_slots.append(torch.full((query_len,), -1))
        else:
            new_slots.append(slots[context:])
    num_tokens = sum(case.query_lens) + case.padding_tokens
    pad = torch.randn(2, case.padding_tokens, kv_heads, dim, generator=gen).to(case.dtype)
    k = torch.cat(fresh_keys + [pad[0]])
    v = torch.cat(fresh_values + [pad[1]])
    slot_mapping = torch.cat(new_slots + [torch.full((case.padding_tokens,), -1)])
    expected_cache = kv_cache.clone()
    written = slot_mapping >= 0
    expected_cache.view_as(flat_cache)[0, slot_mapping[written]] = as_cached(k[written])
    expected_cache.view_as(flat_cache)[1, slot_mapping[written]] = as_cached(v[written])
    q = torch.randn(num_tokens, num_heads, dim, generator=gen).to(case.dtype)
    query_lens = torch.tensor(case.query_lens + [0] * case.padding_seqs)
    seq_lens = case.seq_lens + [0] * case.padding_seqs
    block_tables = torch.cat([block_tables, block_tables.new_zeros(case.padding_seqs, table_width)])
    meta = AttentionMetadata(
        num_seqs=len(seq_lens),
        num_tokens=num_tokens,
        query_start_loc=torch.cat([torch.zeros(1), query_lens.cumsum(0)])
        .to(torch.int32)
        .to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        slot_mapping=slot_mapping.to(torch.int64).to(device),
        max_query_len=max(case.query_lens),
        max_seq_len=max(case.seq_lens),
        query_lens_cpu=query_lens.tolist(),
        seq_lens_cpu=seq_lens,
    )
    return PagedBatch(
        q=q.to(device),
        k=k.to(device),
        v=v.to(device),
        kv_cache=kv_cache.to(device),
        meta=meta,
        keys=[key.to(device) for key in keys],
        values=[val.to(device) for val in values],
        expected_cache=expected_cache.to(device),
    )


def reference_attention(
    batch: PagedBatch, scale: float, sliding_window: int | None, softcap: float | None = None
) -> torch.Tensor:
    """Per sequence, in float32: causal softmax attention with the query offset, GQA, window and
    soft-capped scores."""
    outputs = []
    start = 0
    num_heads = batch.q.shape[1]
    for query_len, seq_len, keys, values in zip(
        batch.meta.query_lens_cpu, batch.meta.seq_lens_cpu, batch.keys, batch.values
    ):
        q = batch.q[start : start + query_len].float()
        start += query_len
        group = num_heads // keys.shape[1]
        keys = keys.float().repeat_interleave(group, dim=1)
        values = values.float().repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, keys) * scale
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        positions = torch.arange(seq_len - query_len, seq_len, device=q.device)[:, None]
        key_positions = torch.arange(seq_len, device=q.device)[None, :]
        allowed = key_positions <= positions
        if sliding_window is not None:
            allowed &= key_positions > positions - sliding_window
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        outputs.append(torch.einsum("hqk,khd->qhd", probs, values))
    return torch.cat(outputs)


def run_case(case: AttentionCase, device: str) -> dict[str, float]:
    """Run the backend on one case; its errors against the float32 reference and the torch backend.

    The float32 reference is computed from each sequence's own K/V, not from the cache, so it also
    catches a wrong cache write or block lookup; the torch backend pins both backends to one
    meaning of the contract.
    """
    from llmbatch.layers.attention.torch_backend import TorchAttentionBackend
    from llmbatch.layers.attention.triton_backend import TritonAttentionBackend

    batch = build_batch(case, device)
    scale = case.head_dim**-0.5
    window, softcap = case.sliding_window, case.softcap
    torch_out = TorchAttentionBackend().forward(
        batch.q, batch.k, batch.v, batch.kv_cache.clone(), batch.meta, scale, window, softcap
    )
    backend = TritonAttentionBackend(decode_splits=case.decode_splits)
    out = backend.forward(
        batch.q, batch.k, batch.v, batch.kv_cache, batch.meta, scale, window, softcap
    )
    num_real = sum(case.query_lens)
    expected = reference_attention(batch, scale, window, softcap)
    return {
        "attention_error": (out[:num_real].float() - expected).abs().max().item(),
        "torch_backend_error": (out[:num_real] - torch_out[:num_real]).float().abs().max().item(),
        "cache_error": (batch.kv_cache.float() - batch.expected_cache.float()).abs().max().item(),
    }


TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

INTERPRETED_CASES = [
    # Fresh prefill, decode one past a block boundary, a chunk after a 33-token prefix, a decode
    # that fills its second block exactly.
    AttentionCase("mixed_mha", [20, 1, 7, 1], [20, 17, 40, 32], heads=(4, 4)),
    AttentionCase(
        "mixed_qwen_14_2_window",
        [3, 9, 1],
        [40, 9, 50],
        heads=(14, 2),
        block_size=32,
        sliding_window=8,
        padding_tokens=2,
    ),
    AttentionCase("prefix_hit_gqa3_d128", [16, 33], [48, 33], heads=(6, 2), head_dim=128),
    AttentionCase(
        "chunk_window_across_blocks_d128",
        [21, 1],
        [75, 64],
        heads=(2, 2),
        head_dim=128,
        block_size=32,
        sliding_window=19,
    ),
    AttentionCase("mixed_gqa4_fp16", [12, 1, 1], [30, 17, 45], heads=(8, 2), dtype=torch.float16),
    AttentionCase("mixed_head_dim_80", [9, 1], [25, 33], heads=(4, 2), head_dim=80),
    AttentionCase(
        "decode_gqa4_d128_split3",
        [1, 1, 1, 1],
        [1, 16, 33, 70],
        heads=(8, 2),
        head_dim=128,
        decode_splits=3,
    ),
    AttentionCase(
        "decode_gqa7_window_split4",
        [1, 1, 1],
        [5, 40, 70],
        heads=(14, 2),
        block_size=32,
        sliding_window=20,
        decode_splits=4,
        padding_tokens=1,
    ),
    AttentionCase("decode_mha_fp16", [1, 1, 1], [3, 31, 64], heads=(4, 4), dtype=torch.float16),
    # Gemma 2: soft-capped scores (a cap small enough to change them), alone and with a window
    AttentionCase("mixed_softcap_gqa2", [12, 1, 5], [12, 20, 37], heads=(4, 2), softcap=2.0),
    AttentionCase(
        "decode_softcap_window_split2",
        [1, 1],
        [9, 50],
        heads=(4, 2),
        sliding_window=16,
        softcap=1.5,
        decode_splits=2,
    ),
    # As a captured prompt step pads it: tokens of no sequence, sequences of no token.
    AttentionCase(
        "mixed_padded_as_captured",
        [9, 1, 1],
        [30, 17, 40],
        heads=(8, 2),
        padding_tokens=7,
        padding_seqs=3,
    ),
    # An fp8 cache read into float32 queries: prefill over a cached prefix, a fresh prompt, a decode.
    AttentionCase(
        "mixed_fp8_e4m3_cache",
        [9, 20, 1],
        [30, 20, 17],
        heads=(4, 2),
        cache_dtype=torch.float8_e4m3fn,
        cache_prewritten=True,
    ),
    AttentionCase(
        "decode_fp8_e5m2_cache_split2",
        [1, 1, 1],
        [17, 40, 70],
        heads=(8, 2),
        head_dim=128,
        decode_splits=2,
        cache_dtype=torch.float8_e5m2,
        cache_prewritten=True,
    ),
]
CASE_DTYPES = {case.name: case.dtype for case in INTERPRETED_CASES}


@pytest.fixture(scope="module")
def interpreted_results() -> dict[str, dict]:
    return run_interpreted(__file__)


@pytest.mark.parametrize("name", [case.name for case in INTERPRETED_CASES])
def test_interpreted_kernels_match_reference(interpreted_results: dict, name: str) -> None:
    result = interpreted_results[name]
    assert "failure" not in result, result.get("failure")
    assert result["cache_error"] == 0.0
    assert result["attention_error"] <= TOLERANCE[CASE_DTYPES[name]]
    assert result["torch_backend_error"] <= 2 * TOLERANCE[CASE_DTYPES[name]]


def test_backend_is_named_triton() -> None:
    from llmbatch.layers.attention.triton_backend import TritonAttentionBackend

    assert TritonAttentionBackend().name == "triton"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: setattr(b, "q", b.q[:, :3]), "not a multiple of num_kv_heads"),
        (lambda b: (setattr(b, "k", b.k[..., :32]), setattr(b, "v", b.v[..., :32])), "match q"),
        (lambda b: setattr(b, "kv_cache", b.kv_cache[:, :, :, :1]), "kv_cache must be"),
        (lambda b: setattr(b, "q", b.q.half()), "share one dtype"),
        (lambda b: setattr(b, "kv_cache", b.kv_cache.half()), "kv_cache must be in q's dtype"),
        (lambda b: setattr(b.meta, "slot_mapping", b.meta.slot_mapping[:-1]), "slot_mapping"),
    ],
)
def test_bad_inputs_are_rejected_with_a_clear_error(mutate, message: str) -> None:
    from llmbatch.layers.attention.triton_backend import TritonAttentionBackend

    batch = build_batch(INTERPRETED_CASES[0], "cpu")
    mutate(batch)
    with pytest.raises(ValueError, match=message):
        TritonAttentionBackend().forward(batch.q, batch.k, batch.v, batch.kv_cache, batch.meta, 0.1)


def test_bad_window_and_split_count_are_rejected() -> None:
    from llmbatch.layers.attention.triton_backend import TritonAttentionBackend

    batch = build_batch(INTERPRETED_CASES[0], "cpu")
    with pytest.raises(ValueError, match="sliding_window"):
        TritonAttentionBackend().forward(
            batch.q, batch.k, batch.v, batch.kv_cache, batch.meta, 0.1, sliding_window=0
        )
    with pytest.raises(ValueError, match="decode_splits"):
        TritonAttentionBackend(decode_splits=0)
    with pytest.raises(ValueError, match="softcap must be > 0"):
        TritonAttentionBackend().forward(
            batch.q, batch.k, batch.v, batch.kv_cache, batch.meta, 0.1, softcap=0.0
        )


GPU_CASES = [
    # Llama-8B heads: a long prefill after a 512-token prefix hit, a fresh prompt, decodes.
    AttentionCase(
        "llama8b_mixed",
        [700, 300, 1, 1, 1],
        [1212, 300, 2049, 16, 777],
        heads=(32, 8),
        head_dim=128,
        dtype=torch.bfloat16,
    ),
    AttentionCase(
        "qwen_14_2_window_page32",
        [257, 64, 1],
        [1000, 64, 1500],
        heads=(14, 2),
        block_size=32,
        dtype=torch.bfloat16,
        sliding_window=256,
        padding_tokens=5,
    ),
    AttentionCase(
        "smollm2_9_3_fp16", [100, 1, 1], [164, 95, 200], heads=(9, 3), dtype=torch.float16
    ),
    # Few long sequences: the automatic split count cuts them into parallel parts.
    AttentionCase(
        "decode_few_long_auto_split",
        [1, 1],
        [4000, 2500],
        heads=(32, 8),
        head_dim=128,
        dtype=torch.bfloat16,
    ),
    AttentionCase(
        "decode_many_seqs_window",
        [1] * 96,
        [17 + 31 * i for i in range(96)],
        heads=(14, 2),
        block_size=32,
        dtype=torch.bfloat16,
        sliding_window=1024,
    ),
    AttentionCase(
        "decode_fp32_split7", [1, 1, 1], [3000, 100, 1], heads=(8, 2), head_dim=128, decode_splits=7
    ),
    AttentionCase(
        "llama8b_mixed_padded_as_captured",
        [200, 1, 1, 37],
        [200, 513, 64, 100],
        heads=(32, 8),
        head_dim=128,
        dtype=torch.bfloat16,
        padding_tokens=18,
        padding_seqs=252,
    ),
    # Gemma-2-9B heads: head_dim 256, scores soft-capped at 50, a 4096-token window on half
    # the layers (here a shorter one, so that it cuts the contexts)
    AttentionCase(
        "gemma2_9b_mixed_softcap_window",
        [300, 1, 1, 40],
        [812, 1500, 16, 40],
        heads=(16, 8),
        head_dim=256,
        dtype=torch.bfloat16,
        sliding_window=512,
        softcap=50.0,
    ),
    AttentionCase(
        "gemma2_9b_decode_softcap",
        [1] * 8,
        [30 + 211 * i for i in range(8)],
        heads=(16, 8),
        head_dim=256,
        dtype=torch.bfloat16,
        softcap=50.0,
    ),
    # fp8 caches, written by the kernel (rounded as torch rounds) and read back into bf16.
    AttentionCase(
        "llama8b_mixed_fp8_e4m3",
        [300, 64, 1, 1, 1],
        [812, 64, 2049, 16, 777],
        heads=(32, 8),
        head_dim=128,
        dtype=torch.bfloat16,
        cache_dtype=torch.float8_e4m3fn,
    ),
    AttentionCase(
        "decode_fp8_e5m2_many_seqs",
        [1] * 64,
        [40 + 37 * i for i in range(64)],
        heads=(32, 8),
        head_dim=128,
        dtype=torch.bfloat16,
        cache_dtype=torch.float8_e5m2,
    ),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda case: case.name)
def test_gpu_kernels_match_reference(case: AttentionCase) -> None:
    result = run_case(case, "cuda")
    assert result["cache_error"] == 0.0
    assert result["attention_error"] <= TOLERANCE[case.dtype]
    assert result["torch_backend_error"] <= 2 * TOLERANCE[case.dtype]


@pytest.mark.gpu
def test_decode_replays_from_a_cuda_graph_on_new_inputs() -> None:
    from llmbatch.layers.attention.triton_backend import TritonAttentionBackend

    shape = dict(heads=(32, 8), head_dim=128, dtype=torch.bfloat16)
    captured_case = AttentionCase("captured", [1] * 8, [5, 70, 300, 16, 1, 900, 33, 64], **shape)
    replayed_case = AttentionCase(
        "replayed", [1] * 8, [6, 1500, 17, 2, 800, 901, 1, 65], **shape, seed=1
    )
    num_blocks, table_width = 512, 128
    captured = build_batch(captured_case, "cuda", num_blocks, table_width)
    replayed = build_batch(replayed_case, "cuda", num_blocks, table_width)
    backend = TritonAttentionBackend(decode_splits=4)
    scale = 128**-0.5

    def step() -> torch.Tensor:
        return backend.forward(
            captured.q, captured.k, captured.v, captured.kv_cache, captured.meta, scale
        )

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for name in ("q", "k", "v", "kv_cache"):
        getattr(captured, name).copy_(getattr(replayed, name))
    for name in ("query_start_loc", "seq_lens", "block_tables", "slot_mapping"):
        getattr(captured.meta, name).copy_(getattr(replayed.meta, name))
    graph.replay()
    torch.cuda.synchronize()
    expected = reference_attention(replayed, scale, None)
    assert (out.float() - expected).abs().max().item() <= TOLERANCE[torch.bfloat16]
    assert torch.equal(captured.kv_cache, replayed.expected_cache)


if __name__ == "__main__":
    print_results({case.name: partial(run_case, case, "cpu") for case in INTERPRETED_CASES})
