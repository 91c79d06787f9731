"""Beam search over an engine, with transformers' rules: at each step the best ``2 * beam_width``
continuations of all beams (more with several EOS tokens) are ranked by their summed
log-probability; those ending (EOS, or the length limit) among the first ``beam_width`` become
hypotheses scored ``sum / generated_length ** length_penalty``, the others carry on; the search
stops once no running beam can beat the worst of ``beam_width`` hypotheses.

Each step asks the engine for one token of every running beam with its top log-probabilities;
beams share their prompt and common prefix through the prefix cache, so a step recomputes only
each beam's last partial KV block.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from llmbatch.engine.outputs import Logprob
from llmbatch.engine.sampling_params import SamplingParams

# transformers' score of a beam that must not be chosen
_EXCLUDED = -1.0e9


@dataclass(slots=True)
class BeamSearchParams:
    """vLLM's beam search parameters. temperature has no effect: candidates are ranked by the
    model's raw log-probabilities, as vLLM's beam search ranks them."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        for name in ("beam_width", "max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


@dataclass(slots=True)
class BeamSearchSequence:
    """One result: ``tokens`` (prompt and generated, as vLLM gives them), the generated tokens'
    logprobs, their sum, and ``text`` (the decoded tokens)."""

    tokens: list[int]
    logprobs: list[dict[int, Logprob]]
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass(slots=True)
class BeamSearchOutput:
    """A prompt's best ``beam_width`` sequences, best first."""

    sequences: list[BeamSearchSequence]


@dataclass(slots=True)
class _Beam:
    tokens: list[int]
    logprobs: list[dict[int, Logprob]]
    score: float


@dataclass(slots=True)
class _Search:
    """One prompt's beams and hypotheses."""

    prompt: list[int]
    running: list[_Beam]
    hypotheses: list[tuple[float, _Beam, bool]] = field(default_factory=list)
    improvable: bool = True
    done: bool = False


def beam_search(
    engine: Any,
    prompts: list[list[int]],
    params: BeamSearchParams,
    eos_token_ids: list[int],
    tokenizer: Any,
) -> list[BeamSearchOutput]:
    """The best ``beam_width`` sequences of each prompt (token ids), searched together."""
    width = params.beam_width
    eos = set() if params.ignore_eos else set(eos_token_ids)
    candidates = max(2, 1 + len(eos)) * width
    step_params = SamplingParams(
        temperature=0.0, max_tokens=1, logprobs=candidates, ignore_eos=True, detokenize=False
    )
    searches = [
        _Search(
            list(prompt),
            [_Beam([], [], 0.0)],
            [(_EXCLUDED, _Beam([], [], _EXCLUDED), False)] * width,
        )
        for prompt in prompts
    ]
    ids = itertools.count()
    for length in range(params.max_tokens):
        live = [s for s in searches if not s.done]
        if not live:
            break
        asked = {}
        for search in live:
            for beam in search.running:
                request_id = f"beam-{next(ids)}"
                engine.add_request(request_id, search.prompt + beam.tokens, step_params)
                asked[request_id] = (search, beam)
        answers: dict[str, Any] = {}
        while engine.has_unfinished():
            for output in engine.step():
                answers[output.request_id] = output
        for search in live:
            beams = [(rid, beam) for rid, (s, beam) in asked.items() if s is search]
            _advance(search, beams, answers, eos, length, params, width, candidates)
    return [_output(search, width, eos, tokenizer) for search in searches]


def _advance(
    search: _Search,
    beams: list[tuple[str, _Beam]],
    answers: dict[str, Any],
    eos: set[int],
    length: int,
    params: BeamSearchParams,
    width: int,
    num_candidates: int,
) -> None:
    """One step of one prompt's search (``length`` tokens generated before it)."""
    pool = []
    for request_id, beam in beams:
        (entry,) = answers[request_id].logprobs
        for token, logprob in entry.items():
            pool.append((beam.score + logprob.logprob, beam, token, entry))
    pool.sort(key=lambda c: -c[0])
    top = pool[:num_candidates]
    last = length + 1 >= params.max_tokens
    ends = [last or token in eos for _, _, token, _ in top]
    # the beams that carry on: the best candidates that did not end
    ranked = sorted(zip(top, ends), key=lambda c: -(c[0][0] + (_EXCLUDED if c[1] else 0.0)))
    search.running = [
        _Beam(beam.tokens + [token], beam.logprobs + [entry], score + (_EXCLUDED if end else 0.0))
        for (score, beam, token, entry), end in ranked[:width]
    ]
    # the first beam_width candidates that ended become hypotheses, while one can still improve
    if search.improvable:
        generated = length + 1
        for rank, ((score, beam, token, entry), end) in enumerate(zip(top, ends)):
            if end and rank < width:
                hypothesis = _Beam(beam.tokens + [token], beam.logprobs + [entry], score)
                search.hypotheses.append(
                    (score / generated**params.length_penalty, hypothesis, True)
                )
        search.hypotheses.sort(key=lambda h: -h[0])
        del search.hypotheses[width:]
    best_possible = search.running[0].score / (length + 1) ** params.length_penalty
    all_final = all(final for _, _, final in search.hypotheses)
    worst = min(score for score, _, _ in search.hypotheses) if all_final else _EXCLUDED
    search.improvable = search.improvable and best_possible > worst
    search.done = not search.improvable or all(ends)


def _output(search: _Search, width: int, eos: set[int], tokenizer: Any) -> BeamSearchOutput:
    sequences = []
    for _, beam, final in search.hypotheses[:width]:
        if not final:
            continue
        tokens = search.prompt + beam.tokens
        ended = bool(beam.tokens) and beam.tokens[-1] in eos
        sequences.append(
            BeamSearchSequence(
                tokens=tokens,
                logprobs=beam.logprobs,
                cum_logprob=sum(e[t].logprob for e, t in zip(beam.logprobs, beam.tokens)),
                text=None if tokenizer is None else tokenizer.decode(tokens),
                finish_reason="stop" if ended else "length",
            )
        )
    return BeamSearchOutput(sequences)
