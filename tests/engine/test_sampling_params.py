"""SamplingParams: vLLM names and semantics, validated at construction."""

from __future__ import annotations

import numpy as np
import pytest

from llmbatch import SamplingParams
from llmbatch.engine.sampling_params import ACCEPTED_KEYS


def test_defaults_follow_vllm():
    params = SamplingParams()
    assert (params.n, params.temperature, params.top_p, params.top_k) == (1, 1.0, 1.0, 0)
    assert params.max_tokens == 16 and params.min_tokens == 0 and params.stop is None
    assert params.detokenize and params.skip_special_tokens and not params.ignore_eos


def test_stop_accepts_a_string_or_a_list():
    assert SamplingParams(stop="END").stop == ["END"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]


def test_from_dict_takes_the_tutorials_params():
    params = SamplingParams.from_dict(dict(temperature=0.3, max_tokens=150, detokenize=False))
    assert (params.temperature, params.max_tokens, params.detokenize) == (0.3, 150, False)


def test_numpy_numbers_from_table_rows_are_accepted():
    params = SamplingParams.from_dict(dict(temperature=np.float64(0.5), max_tokens=np.int64(8)))
    assert params.max_tokens == 8 and type(params.max_tokens) is int


def test_from_dict_rejects_unknown_keys_naming_the_accepted_ones():
    with pytest.raises(ValueError, match=r"unknown sampling parameter\(s\) \['beam_width'\]"):
        SamplingParams.from_dict({"temperature": 0.1, "beam_width": 4})
    with pytest.raises(ValueError, match=", ".join(ACCEPTED_KEYS[:3])):
        SamplingParams.from_dict({"typo": 1})
    with pytest.raises(TypeError, match="must be a dict"):
        SamplingParams.from_dict([("temperature", 0.1)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n=0), "n must be at least 1"),
        (dict(temperature=-0.1), "temperature must be >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-2), "top_k must be -1 or 0"),
        (dict(min_p=1.5), r"min_p must be in \[0, 1\]"),
        (dict(presence_penalty=3.0), r"presence_penalty must be in \[-2, 2\]"),
        (dict(frequency_penalty=-2.5), r"frequency_penalty must be in \[-2, 2\]"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
        (dict(max_tokens=0), "max_tokens must be at least 1"),
        (dict(max_tokens=4, min_tokens=5), r"min_tokens \(5\) must not exceed max_tokens \(4\)"),
        (dict(min_tokens=-1), "min_tokens must be >= 0"),
        (dict(logprobs=-1), "logprobs must be >= 0"),
        (dict(seed=-5), "seed must be >= 0"),
        (dict(stop=[""]), "stop strings must not be empty"),
        (dict(stop="x", detokenize=False), "stop strings need detokenize=True"),
        (dict(stop_token_ids=[-1]), "stop_token_ids must be non-negative"),
        (dict(truncate_prompt_tokens=0), "truncate_prompt_tokens must be at least 1"),
    ],
)
def test_invalid_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature="hot"), "temperature='hot' has type str; expected float"),
        (dict(seed=1.5), "seed=1.5 has type float; expected int or None"),
        (dict(ignore_eos="yes"), "ignore_eos='yes' has type str; expected bool"),
        (dict(stop=["ok", 3]), "stop must hold str values"),
        (dict(stop_token_ids=["2"]), "stop_token_ids must hold int values"),
    ],
)
def test_wrong_types_raise_type_errors(kwargs, message):
    with pytest.raises(TypeError, match=message):
        SamplingParams(**kwargs)
