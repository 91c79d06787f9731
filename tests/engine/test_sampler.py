"""The sampler against the definitions of each sampling parameter, on synthetic logits."""

from __future__ import annotations

import pytest
import torch

from llmbatch.engine.request import Request
from llmbatch.engine.sampler import Sampler
from llmbatch.engine.sampling_params import SamplingParams

EOS = 2
VOCAB = 50


def make_request(params: SamplingParams, token_ids: list[int] | None = None, prompt_len: int = 3):
    token_ids = token_ids if token_ids is not None else [5, 6, 7]
    request = Request(
        request_id="r",
        prompt=None,
        token_ids=list(token_ids[:prompt_len]),
        params=params,
        eos_token_ids=frozenset({EOS}),
        max_model_len=1024,
        generator=None if params.seed is None else torch.Generator().manual_seed(params.seed),
    )
    request.token_ids.extend(token_ids[prompt_len:])
    return request


@pytest.fixture(autouse=True, params=["cumulative", "gumbel race"])
def draw(request, monkeypatch):
    """Every test runs both ways of drawing: the CPU's default and the GPU's (here its PyTorch
    twin: the kernel is checked against it in tests/layers/test_triton_ops.py)."""
    race = request.param == "gumbel race"
    init = Sampler.__init__
    monkeypatch.setattr(
        Sampler, "__init__", lambda self, device, seed: init(self, device, seed, race)
    )
    return request.param


def sample(logits: torch.Tensor, requests: list[Request], seed: int = 0):
    return Sampler(torch.device("cpu"), seed)(logits.clone(), requests)


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(8, VOCAB, generator=torch.Generator().manual_seed(1)) * 3


def test_greedy_rows_take_the_argmax_even_beside_random_rows(logits):
    params = [SamplingParams(temperature=0.0 if i % 2 else 1.0) for i in range(8)]
    out = sample(logits, [make_request(p) for p in params])
    expected = logits.argmax(dim=-1).tolist()
    assert [out.token_ids[i] for i in range(1, 8, 2)] == expected[1::2]


def test_top_k_one_is_greedy(logits):
    out = sample(logits, [make_request(SamplingParams(top_k=1, seed=i)) for i in range(8)])
    assert out.token_ids == logits.argmax(dim=-1).tolist()


def test_min_tokens_masks_eos_and_stop_tokens_until_reached():
    logits = torch.zeros(3, VOCAB)
    logits[:, EOS] = 10.0
    logits[:, 9] = 9.0
    logits[:, 4] = 8.0
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[9])
    below = make_request(params, [5, 6, 7, 11], prompt_len=3)  # one output token so far
    reached = make_request(params, [5, 6, 7, 11, 12], prompt_len=3)
    ignoring = make_request(
        SamplingParams(temperature=0.0, min_tokens=2, ignore_eos=True), [5, 6, 7], prompt_len=3
    )
    out = sample(logits, [below, reached, ignoring])
    assert out.token_ids == [4, EOS, EOS]


def reference_penalties(logits: torch.Tensor, request: Request) -> torch.Tensor:
    """vLLM's definitions: repetition over prompt and output (divide positive logits, multiply
    negative ones); frequency and presence over the output only."""
    p = request.params
    expected = logits.clone()
    for token in set(request.token_ids):
        value = expected[token]
        expected[token] = (
            value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
        )
    for token in set(request.output_token_ids):
        count = request.output_token_ids.count(token)
        expected[token] -= p.frequency_penalty * count + p.presence_penalty
    return expected


def test_penalties_follow_their_definitions(logits):
    rng = torch.Generator().manual_seed(3)
    requests = []
    for i in range(8):
        history = torch.randint(0, VOCAB, (12,), generator=rng).tolist()
        params = SamplingParams(
            temperature=0.0,
            repetition_penalty=[1.0, 1.3, 0.7, 2.0][i % 4],
            frequency_penalty=[0.0, 0.5, -0.4, 1.5][(i + 1) % 4],
            presence_penalty=[0.0, 1.0, 0.8, -1.0][(i + 2) % 4],
        )
        requests.append(make_request(params, history, prompt_len=6))
    out = sample(logits, requests)
    expected = [int(reference_penalties(logits[i], r).argmax()) for i, r in enumerate(requests)]
    assert out.token_ids == expected
    # the penalties must have changed some choices, or this test shows nothing
    assert expected != logits.argmax(dim=-1).tolist()


def test_seeded_row_does_not_depend_on_the_rest_of_the_batch(logits):
    def draws(batch_rows: int, position: int, seed: int = 1234) -> list[int]:
        params = SamplingParams(temperature=1.0, seed=seed, max_tokens=100, ignore_eos=True)
        target = make_request(params)
        sampler = Sampler(torch.device("cpu"), seed=batch_rows)
        tokens = []
        for _ in range(20):
            others = [make_request(SamplingParams(temperature=1.0)) for _ in range(batch_rows)]
            requests = others[:position] + [target] + others[position:]
            batch = logits[0].expand(len(requests), VOCAB).clone()
            tokens.append(sampler(batch, requests).token_ids[position])
            target.append_token(tokens[-1])  # the next draw samples the next position
        return tokens

    alone = draws(0, 0)
    assert len(set(alone)) > 1
    assert draws(7, 3) == alone
    assert draws(50, 50) == alone
    assert draws(0, 0, seed=99) != alone


def empirical(logits_row: torch.Tensor, params: SamplingParams, draws: int = 4000) -> torch.Tensor:
    requests = [make_request(params) for _ in range(draws)]
    out = sample(logits_row.expand(draws, -1).clone(), requests)
    return torch.bincount(torch.tensor(out.token_ids), minlength=logits_row.numel()) / draws


def test_temperature_samples_the_softmax_distribution():
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    for temperature in (0.5, 1.0, 2.0):
        freq = empirical(row, SamplingParams(temperature=temperature))
        expected = torch.softmax(row / temperature, dim=-1)
        assert torch.allclose(freq, expected, atol=0.03)


def test_top_k_top_p_and_min_p_restrict_the_support():
    row = torch.log(torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))
    support = [
        (SamplingParams(top_k=2), {0, 1}),
        (SamplingParams(top_p=0.7), {0, 1, 2}),  # 0.4 + 0.25 < 0.7 <= 0.4 + 0.25 + 0.15
        (SamplingParams(min_p=0.3), {0, 1, 2}),  # p >= 0.3 * 0.4
    ]
    for params, allowed in support:
        freq = empirical(row, params, draws=2000)
        assert set(torch.nonzero(freq).flatten().tolist()) == allowed
        renormalized = torch.zeros(6)
        renormalized[list(allowed)] = row.exp()[list(allowed)]
        assert torch.allclose(freq, renormalized / renormalized.sum(), atol=0.04)


def test_logprobs_are_of_the_raw_logits_with_the_sampled_token(logits):
    params = SamplingParams(temperature=0.7, repetition_penalty=1.5, logprobs=3, seed=5)
    requests = [make_request(params), make_request(SamplingParams(temperature=0.0))]
    out = sample(logits[:2], requests)
    raw = torch.log_softmax(logits[0], dim=-1)
    entry = out.logprobs[0]
    top3 = raw.topk(3).indices.tolist()
    assert set(entry) == set(top3) | {out.token_ids[0]}
    for token, value in entry.items():
        assert value.logprob == pytest.approx(raw[token].item(), abs=1e-5)
        assert value.rank == 1 + (raw > raw[token]).sum().item()
    assert out.logprobs[1] is None
