"""The stages that run the user's preprocess and postprocess functions, one row at a time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from llmbatch.llm.columns import (
    ERROR,
    IMAGES,
    MESSAGES,
    MULTIMODAL_DATA,
    SAMPLING_PARAMS,
    as_table,
    column_values,
    error_kind,
    errors_of,
    format_error,
    set_column,
    split_table,
    storable_sampling_params,
    with_errors,
)
from llmbatch.llm.image_columns import images_to_arrow
from llmbatch.llm.images import (
    ImageInputError,
    as_content_parts,
    check_no_images,
    load_message_images,
    load_multimodal_data,
)
from llmbatch.llm.row_checks import (
    ColumnTypes,
    check_request,
    column_or_conflicts,
    rows_to_checked_table,
)
from llmbatch.llm.summary import RunStats

Row = dict[str, Any]
RowFn = Callable[[Row], Row]

logger = logging.getLogger("llmbatch")

# The error rate is judged only after this many rows, so one early bad row does not stop a job.
MIN_ROWS_FOR_ERROR_RATE = 20
# Images of different rows are fetched and decoded at once: URLs mostly wait on the network.
IMAGE_LOADING_THREADS = 8


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

    With ``has_image``, each row's message images (or its ``multimodal_data`` images) are loaded
    (several rows at once, in threads) and taken out of the row: the image parts become ``{"type": "image"}``, every content
    becomes a list of parts (the form that multimodal chat templates take and that Arrow can
    store for all rows alike), and the RGB images go to an intermediate column. A row whose image
    cannot be read becomes an error row. Without ``has_image``, a row holding an image stops the
    job: every such row would fail alike, so the fix is the config's, not the row's.

    Rows whose ``error`` is already set (e.g. from an earlier processor) pass untouched.
    """

    name = "preprocess"

    def __init__(
        self,
        fn: RowFn | None,
        batch_size: int,
        has_image: bool = False,
        parse_params: Callable[[Any], Any] | None = None,
    ) -> None:
        self._fn = fn
        self._batch_size = batch_size
        self._has_image = has_image
        self._parse_params = parse_params

    def __call__(self, blocks: Iterator[pa.Table]) -> Iterator[pa.Table]:
        types = ColumnTypes(self.name)
        with ThreadPoolExecutor(IMAGE_LOADING_THREADS, "llmbatch-images") as pool:
            for block in blocks:
                table = as_table(block)
                _check_error_column(table)
                for piece in split_table(table, self._batch_size):
                    yield types.settle(self._apply(piece, pool))

    def _apply(self, table: pa.Table, pool: ThreadPoolExecutor) -> pa.Table:
        errors = errors_of(table)
        results = self._run_fn(table, errors) if self._fn is not None else None
        if not self._has_image:
            for result in results or ():
                if result is not None:
                    check_no_images(result.get(MESSAGES), result.get(MULTIMODAL_DATA))
            return table if results is None else _merge(table, results, errors)
        if results is None:
            results = [{} if error is None else None for error in errors]
        originals = column_values(table, MESSAGES)
        messages = [
            None if res is None else res.get(MESSAGES, originals[i])
            for i, res in enumerate(results)
        ]
        given = column_values(table, MULTIMODAL_DATA)
        multimodal = [
            None if res is None else res.pop(MULTIMODAL_DATA, given[i])
            for i, res in enumerate(results)
        ]
        images: list[list[Any] | None] = [None] * table.num_rows
        for i, loaded in enumerate(pool.map(_load_row_images, messages, multimodal)):
            if results[i] is None:
                continue
            if isinstance(loaded, ImageInputError):
                errors[i] = format_error("images", loaded)
                results[i] = None
            elif messages[i] is not None or multimodal[i] is not None:
                stored, images[i] = loaded
                if messages[i] is not None:
                    results[i][MESSAGES] = stored
        table = _merge(table, results, errors)
        if MULTIMODAL_DATA in table.column_names:
            table = table.drop_columns([MULTIMODAL_DATA])
        return set_column(table, IMAGES, images_to_arrow(images))

    def _run_fn(self, table: pa.Table, errors: list[str | None]) -> list[Row | None]:
        results: list[Row | None] = []
        for i, row in enumerate(table.to_pylist()):
            if errors[i] is not None:
                results.append(None)
                continue
            row.pop(ERROR, None)
            try:
                result = _call(self._fn, row, self.name)
            except KeyError as exc:
                errors[i] = format_error(self.name, _explain_missing(exc, row))
                results.append(None)
            except Exception as exc:
                errors[i] = format_error(self.name, exc)
                results.append(None)
            else:
                problem = check_request(result, self._has_image, self._parse_params)
                if problem is not None:
                    errors[i] = problem
                    results.append(None)
                    continue
                if SAMPLING_PARAMS in result:
                    result[SAMPLING_PARAMS] = storable_sampling_params(result[SAMPLING_PARAMS])
                results.append(result)
        return results


def _load_row_images(
    messages: Any, multimodal_data: Any = None
) -> tuple[Any, list[Any]] | ImageInputError:
    """A row's messages in stored form (content as parts, images as placeholders) and its
    images (those of its messages, or of its ``multimodal_data``); the error instead when an
    image cannot be loaded."""
    try:
        if multimodal_data is not None and messages is not None:
            raise ImageInputError(
                "the row gives both messages and multimodal_data: put its images in the "
                "messages' content, or give multimodal_data with a prompt that holds the image "
                "placeholders"
            )
        messages, images = load_message_images(messages)
        images += load_multimodal_data(multimodal_data)
    except ImageInputError as exc:
        return exc
    return as_content_parts(messages), images


def _merge(table: pa.Table, results: list[Row | None], errors: list[str | None]) -> pa.Table:
    """Each row's results as columns over the table's own (rows without results keep theirs)."""
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
        column, conflicts = column_or_conflicts(name, values)
        for i, message in conflicts.items():
            errors[i] = errors[i] or format_error(PreprocessStage.name, TypeError(message))
        table = set_column(table, name, column)
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
        types = ColumnTypes(self.name)
        for block in blocks:
            table = as_table(block)
            if self._fn is not None:
                # only a user's function can give a column two types; the engine's own columns
                # may differ by row on purpose (a list of n answers beside single answers)
                table = types.settle(self._apply(table, types))
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

    def _apply(self, table: pa.Table, types: ColumnTypes) -> pa.Table:
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
        return rows_to_checked_table(rows, self.name, types)
