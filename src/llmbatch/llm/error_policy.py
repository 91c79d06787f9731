"""Ray Data LLM 2.60's ``should_continue_on_error`` around llmbatch's error rows.

False stops a run at the first row the processor fails (rows that arrive with an ``error``,
e.g. from an earlier processor, pass). True keeps llmbatch's error rows and adds Ray's
``__inference_error__`` column: "" for a good row, the error for a failed one, whose generation
columns then hold Ray's defaults ("" / [] / 0 / -1) instead of nulls.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from llmbatch.llm.columns import (
    ERROR,
    GENERATION_TYPES,
    INFERENCE_ERROR,
    PROMPT,
    RAY_GENERATION_TYPES,
    as_table,
    errors_of,
    set_column,
)

# What Ray Data LLM 2.60 writes into a failed row's generation columns.
_RAY_ERROR_DEFAULTS: dict[str, Any] = {
    PROMPT: "",
    "generated_text": "",
    "generated_tokens": [],
    "num_input_tokens": 0,
    "num_generated_tokens": 0,
    "time_taken_llm": -1.0,
    "prompt_token_ids": [],
    "request_id": -1,
    "params": "",
}
_TYPES = {PROMPT: pa.string(), **GENERATION_TYPES, **RAY_GENERATION_TYPES}


class RowFailed(RuntimeError):
    """A row failed and the processor's ``should_continue_on_error`` is False."""


class ErrorPolicy:
    """The stages that apply the policy: `mark` goes first and notes which rows arrive with an
    error, `expose` goes before postprocess (which, as in Ray, sees ``__inference_error__``) and
    `apply` goes last. Rows keep their order through every stage in between, so the notes are
    read back row by row."""

    def __init__(self, stop_on_error: bool, error_column: bool) -> None:
        self.stop_on_error = stop_on_error
        self.error_column = error_column
        self._arrived_failed: deque[bool] = deque()
        self.mark = _MarkArrivingErrors(self._arrived_failed)
        self.expose = _ExposeErrors()
        self.apply = _ApplyErrorPolicy(self)

    @property
    def active(self) -> bool:
        return self.stop_on_error or self.error_column

    def next_arrived_failed(self) -> bool:
        return self._arrived_failed.popleft() if self._arrived_failed else False


class _MarkArrivingErrors:
    name = "arriving_errors"

    def __init__(self, notes: deque[bool]) -> None:
        self._notes = notes

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        self._notes.clear()
        for block in blocks:
            table = as_table(block)
            self._notes.extend(error is not None for error in errors_of(table))
            yield table


class _ExposeErrors:
    name = "inference_error"

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for block in blocks:
            table = as_table(block)
            yield _with_ray_error_column(table, errors_of(table))


class _ApplyErrorPolicy:
    name = "error_policy"

    def __init__(self, policy: ErrorPolicy) -> None:
        self._policy = policy

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        policy = self._policy
        position = 0
        for block in blocks:
            table = as_table(block)
            errors = errors_of(table)
            for error in errors:
                position += 1
                arrived_failed = policy.next_arrived_failed()
                if policy.stop_on_error and error is not None and not arrived_failed:
                    raise RowFailed(
                        f"row {position} of this run failed: {error}. should_continue_on_error "
                        "is False (build_processor's default, as in Ray Data LLM), so the run "
                        "stops at the first failed row; set should_continue_on_error=True to "
                        f"write failed rows with {ERROR!r} and {INFERENCE_ERROR!r} and go on"
                    )
            if policy.error_column:
                table = _with_ray_error_column(table, errors)
            yield table


def _with_ray_error_column(table: pa.Table, errors: list[str | None]) -> pa.Table:
    failed = [i for i, error in enumerate(errors) if error is not None]
    for name, default in _RAY_ERROR_DEFAULTS.items():
        if not failed or name not in table.column_names:
            continue
        values = table.column(name).to_pylist()
        for i in failed:
            if values[i] is None:
                values[i] = default
        kind = table.schema.field(name).type
        kind = _TYPES[name] if pa.types.is_null(kind) else kind
        table = set_column(table, name, pa.array(values, type=kind))
    column = pa.array(["" if error is None else error for error in errors], pa.string())
    return set_column(table, INFERENCE_ERROR, column)
