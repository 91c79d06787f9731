"""The stages that run the user's preprocess and postprocess functions, one row at a time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from llmbatch.llm.columns import (
    ERROR,
    as_table,
    error_kind,
    errors_of,
    format_error,
    rows_to_table,
    set_column,
    split_table,
    to_arrow,
    with_errors,
)
from llmbatch.llm.summary import RunStats

Row = dict[str, Any]
RowFn = Callable[[Row], Row]

logger = logging.getLogger("llmbatch")

# The error rate is judged only after this many rows, so one early bad row does not stop a job.
MIN_ROWS_FOR_ERROR_RATE = 20


class ErrorRateExceeded(RuntimeError):
    """Too many rows became error rows: the job stops instead of burning compute on them."""


def _call(fn: RowFn, row: Row, stage: str) -> Row:
    result = fn(row)
    if not isinstance(result, dict):
        raise TypeError(f"{stage} must return a dict of columns, got {type(result).__name__}")
    return result


def _explain_missing(exc: KeyError, row: Row) -> KeyError:
    """A KeyError for a column the row lacks names the columns it has."""
    key = exc.args[0] if exc.args else None
    if not isinstance(key, str) or key in row:
        return exc
    columns = ", ".join(repr(name) for name in row)
    return KeyError(f"the row has no column {key!r}; its columns are {columns}")


def _check_error_column(table: pa.Table) -> None:
    if ERROR in table.column_names and not pa.types.is_string(table.schema.field(ERROR).type):
        raise TypeError(
            f"the input has a column {ERROR!r} of type {table.schema.field(ERROR).type}; "
            f"llmbatch keeps per-row errors (text) in {ERROR!r}: rename that column first"
        )


class PreprocessStage:
    """First stage: cuts the input into ``batch_size`` tables and merges ``preprocess(row)``
    into each row (its columns are added, or replace same-named originals).

    Rows whose ``error`` is already set (e.g. from an earlier processor) pass untouched.
    """

    name = "preprocess"

    def __init__(self, fn: RowFn | None, batch_size: int) -> None:
        self._fn = fn
        self._batch_size = batch_size

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for block in blocks:
            table = as_table(block)
            _check_error_column(table)
            for piece in split_table(table, self._batch_size):
                yield piece if self._fn is None else self._apply(piece)

    def _apply(self, table: pa.Table) -> pa.Table:
        errors = errors_of(table)
        results: list[Row | None] = []
        for i, row in enumerate(table.to_pylist()):
            if errors[i] is not None:
                results.append(None)
                continue
            row.pop(ERROR, None)
            try:
                results.append(_call(self._fn, row, self.name))
            except KeyError as exc:
                errors[i] = format_error(self.name, _explain_missing(exc, row))
                results.append(None)
            except Exception as exc:
                errors[i] = format_error(self.name, exc)
                results.append(None)
        new_columns = dict.fromkeys(name for res in results if res for name in res)
        new_columns.pop(ERROR, None)
        for name in new_columns:
            original = table.column(name).to_pylist() if name in table.column_names else None
            values = [
                res[name]
                if res is not None and name in res
                else (original[i] if original is not None else None)
                for i, res in enumerate(results)
            ]
            table = set_column(table, name, to_arrow(name, values))
        return with_errors(table, errors)


class OutputStage:
    """Last stage: applies ``postprocess(row)`` to good rows, keeps error rows whole, puts the
    ``error`` column last, and counts rows and errors into the run's stats."""

    name = "postprocess"

    def __init__(
        self,
        fn: RowFn | None,
        start_run: Callable[[], RunStats],
        max_error_rate: float | None = None,
    ) -> None:
        self._fn = fn
        self._start_run = start_run
        self._max_error_rate = max_error_rate

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        stats = self._start_run()
        seen_kinds: set[str] = set()
        first_errors: dict[str, str] = {}
        for block in blocks:
            table = as_table(block)
            table = self._apply(table) if self._fn is not None else table
            errors = errors_of(table)
            table = with_errors(
                table.drop_columns([ERROR]) if ERROR in table.column_names else table, errors
            )
            stats.rows += table.num_rows
            for error in errors:
                if error is None:
                    continue
                kind = error_kind(error)
                stats.errors_by_kind[kind] += 1
                if kind not in seen_kinds:
                    seen_kinds.add(kind)
                    first_errors[kind] = error
                    logger.warning("first error row from stage %r: %s", kind, error)
            self._check_error_rate(stats, first_errors)
            yield table
        stats.finished_at = time.perf_counter()

    def _check_error_rate(self, stats: RunStats, first_errors: dict[str, str]) -> None:
        limit = self._max_error_rate
        if limit is None or stats.rows < MIN_ROWS_FOR_ERROR_RATE:
            return
        errors = sum(stats.errors_by_kind.values())
        if errors / stats.rows > limit:
            examples = "; ".join(first_errors.values())
            raise ErrorRateExceeded(
                f"stopped: {errors} of the first {stats.rows} rows are error rows, more than "
                f"max_error_rate={limit}. First errors: {examples}. Fix the cause and run again "
                f"(finished rows stay committed), or raise max_error_rate"
            )

    def _apply(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return table
        errors = errors_of(table)
        rows: list[Row] = []
        for i, row in enumerate(table.to_pylist()):
            if errors[i] is not None:
                rows.append(row)
                continue
            row.pop(ERROR, None)
            try:
                rows.append(_call(self._fn, row, self.name))
            except Exception as exc:
                row[ERROR] = format_error(self.name, exc)
                rows.append(row)
        return rows_to_table(rows)
