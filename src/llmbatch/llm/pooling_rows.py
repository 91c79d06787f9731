"""Rows of a pooling model: their params (a row's ``pooling_params``) and their answer columns
(``embeddings`` or ``probs``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from llmbatch.engine.pooling_params import PoolingParams
from llmbatch.llm.columns import GENERATION_TYPES, POOLING_COLUMN_OF_TASK, POOLING_TYPES

if TYPE_CHECKING:
    from llmbatch.engine.pooling_outputs import PoolingRequestOutput


def pooling_params_of(value: Any, sampling_params: Any) -> PoolingParams:
    """A row's ``pooling_params`` (a dict, or None for the defaults) as PoolingParams. Sampling
    params mean nothing to a pooling model: a row that gives them is an error, not ignored."""
    given = sampling_params if isinstance(sampling_params, dict) else {"": sampling_params}
    if any(v is not None for v in given.values()):
        raise ValueError(
            "the row gives sampling_params, but this processor runs a pooling model (embed / "
            "classify), which generates no text: drop them, or give pooling_params"
        )
    if value is None:
        return PoolingParams()
    if not isinstance(value, dict):
        raise TypeError(f"'pooling_params' must be a dict, got {type(value).__name__}")
    # Arrow structs give keys that other rows set (and this one did not) as None.
    return PoolingParams.from_dict({k: v for k, v in value.items() if v is not None})


def pooling_columns(
    task: str, outputs: Sequence[PoolingRequestOutput | None], seconds: Sequence[float | None]
) -> dict[str, pa.Array]:
    """The answer columns of a pooling model's rows (None for error rows): ``embeddings`` or
    ``probs``, ``num_input_tokens`` and ``time_taken_llm``."""
    name = POOLING_COLUMN_OF_TASK[task]
    values = [None if o is None else o.outputs.data.tolist() for o in outputs]
    tokens = [None if o is None else o.num_prompt_tokens for o in outputs]
    return {
        name: pa.array(values, type=POOLING_TYPES[name]),
        "num_input_tokens": pa.array(tokens, type=GENERATION_TYPES["num_input_tokens"]),
        "time_taken_llm": pa.array(list(seconds), type=GENERATION_TYPES["time_taken_llm"]),
    }
