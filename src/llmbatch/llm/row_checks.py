"""One row's values never end a job: a row whose request or whose columns cannot be stored
with the others becomes an error row saying what is wrong.

The request columns a preprocess returns (``messages``, ``sampling_params``) are checked row by
row before they become Arrow columns, and put in the one form every row can share (as vLLM
reads them: a text-only message's content parts joined into text, ``stop`` as a list). Any other
column whose value in some rows has a type that cannot share a column with the others (an int
among texts) makes those rows error rows naming the column and both types; across blocks, the
type a column had first is the one later rows must fit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from llmbatch.data.blocks import SchemaConflictError, unify_schemas, values_to_array
from llmbatch.llm.columns import ERROR, MESSAGES, SAMPLING_PARAMS, format_error

_TEXT_PART_TYPES = ("text", "input_text")


class RequestError(TypeError):
    """A row's request cannot be what the engine takes."""


def check_request(
    result: dict[str, Any],
    has_image: bool,
    parse_params: Callable[[Any], Any] | None = None,
) -> str | None:
    """Checks (and puts in their shared form) the request columns of one preprocess result;
    the error row's text when they are wrong. ``parse_params`` reads ``sampling_params`` given
    with other names than the engine's (SGLang's)."""
    if MESSAGES in result and result[MESSAGES] is not None:
        try:
            result[MESSAGES] = _checked_messages(result[MESSAGES], has_image)
        except RequestError as exc:
            return format_error(MESSAGES, exc)
    if SAMPLING_PARAMS in result and result[SAMPLING_PARAMS] is not None:
        try:
            result[SAMPLING_PARAMS] = _checked_sampling_params(
                result[SAMPLING_PARAMS], parse_params
            )
        except (TypeError, ValueError) as exc:
            return format_error(SAMPLING_PARAMS, exc)
    return None


def _checked_messages(messages: Any, has_image: bool) -> list[dict[str, Any]]:
    if not isinstance(messages, list | tuple) or not messages:
        raise RequestError(f"messages must be a non-empty list of dicts, got {_describe(messages)}")
    checked = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise RequestError(
                f"{where} must be a dict with 'role' and 'content', got {_describe(message)}"
            )
        if not isinstance(message.get("role"), str):
            raise RequestError(
                f"{where}['role'] must be text, got {_describe(message.get('role'))}"
            )
        message = dict(message)
        message["content"] = _checked_content(message.get("content"), where, has_image)
        checked.append(message)
    return checked


def _checked_content(content: Any, where: str, has_image: bool) -> Any:
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list | tuple):
        raise RequestError(
            f"{where}['content'] is {_describe(content)}; a message's content must be text or a "
            f"list of content parts"
        )
    for position, part in enumerate(content):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise RequestError(
                f"{where}['content'][{position}] must be a dict with a 'type', got "
                f"{_describe(part)}"
            )
        if part["type"] in _TEXT_PART_TYPES and not isinstance(part.get("text"), str):
            raise RequestError(
                f"{where}['content'][{position}]['text'] must be text, got "
                f"{_describe(part.get('text'))}"
            )
    if has_image or any(part["type"] not in _TEXT_PART_TYPES for part in content):
        return list(content)
    # A text-only model reads text parts as one text, as vLLM gives them to a text template.
    return "\n".join(part["text"] for part in content)


def _checked_sampling_params(
    params: Any, parse_params: Callable[[Any], Any] | None
) -> dict[str, Any]:
    from llmbatch.engine.sampling_params import SamplingParams

    if not isinstance(params, Mapping):
        raise TypeError(f"'sampling_params' must be a dict, got {_describe(params)}")
    if parse_params is not None:
        parse_params(dict(params))
    else:
        SamplingParams.from_dict({k: v for k, v in params.items() if v is not None})
    params = dict(params)
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    return params


def column_or_conflicts(
    name: str, values: Sequence[Any], known: pa.DataType | None = None
) -> tuple[pa.Array, dict[int, str]]:
    """``values`` as one Arrow column, less the values whose type cannot share it with the
    others (the column's ``known`` type from earlier rows when any value fits it, else the most
    common type); those rows' error messages, by row."""
    try:
        return values_to_array(name, values), {}
    except (SchemaConflictError, TypeError):
        pass
    kinds = [None if value is None else _arrow_type(value) for value in values]
    counts = Counter(str(kind) for kind in kinds if kind is not None)
    fitting = [str(kind) for kind in kinds if kind is not None and _compatible(kind, known)]
    majority_text = (
        Counter(fitting).most_common(1)[0][0] if fitting else counts.most_common(1)[0][0]
    )
    majority = next(kind for kind in kinds if str(kind) == majority_text)
    example = next(v for v, kind in zip(values, kinds) if str(kind) == majority_text)
    conflicts = {
        index: (
            f"column {name!r} holds {_kind_of(values[index], example, kind)} in this row and "
            f"{_kind_of(example, values[index], majority)} in the others"
        )
        for index, kind in enumerate(kinds)
        if kind is not None and not _compatible(kind, majority)
    }
    kept = [None if index in conflicts else value for index, value in enumerate(values)]
    try:
        return values_to_array(name, kept), conflicts
    except (SchemaConflictError, TypeError):
        conflicts.update(
            {
                index: f"column {name!r} holds a value that cannot share a column with the others"
                for index, value in enumerate(kept)
                if value is not None and str(kinds[index]) != majority_text
            }
        )
        kept = [None if index in conflicts else value for index, value in enumerate(values)]
        return values_to_array(name, kept), conflicts


def rows_to_checked_table(
    rows: list[dict[str, Any]], stage: str, types: ColumnTypes | None = None
) -> pa.Table:
    """Row dicts as a table (the union of their keys); a row with a value of a conflicting type
    keeps its other values and gets an ``error`` naming the column and both types. ``types``
    tells the columns' types in earlier blocks."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    names.pop(ERROR, None)
    errors: list[str | None] = [row.get(ERROR) for row in rows]
    columns = {}
    for name in names:
        known = None if types is None else types.known(name)
        array, conflicts = column_or_conflicts(name, [row.get(name) for row in rows], known)
        for index, message in conflicts.items():
            errors[index] = errors[index] or format_error(stage, TypeError(message))
        columns[name] = array
    if any(error is not None for error in errors) or any(ERROR in row for row in rows):
        columns[ERROR] = pa.array(errors, pa.string())
    if not columns:
        return pa.Table.from_pylist(rows)
    return pa.table(columns)


class ColumnTypes:
    """The type each column had first; later blocks must fit it. A value that does not makes
    its row an error row (the value is dropped, the row kept)."""

    def __init__(self, stage: str) -> None:
        self._stage = stage
        self._types: dict[str, pa.DataType] = {}

    def known(self, name: str) -> pa.DataType | None:
        return self._types.get(name)

    def settle(self, table: pa.Table) -> pa.Table:
        errors: list[str | None] | None = None
        for index, field in enumerate(table.schema):
            if field.name == ERROR or pa.types.is_null(field.type):
                continue
            known = self._types.get(field.name)
            if known is None:
                self._types[field.name] = field.type
                continue
            if _compatible(field.type, known):
                continue
            column = table.column(index)
            if errors is None:
                errors = _errors_of(table)
            message = (
                f"column {field.name!r} holds {field.type} in this row and {known} in earlier rows"
            )
            valid = column.is_valid().to_pylist()
            for row, is_valid in enumerate(valid):
                if is_valid:
                    errors[row] = errors[row] or format_error(self._stage, TypeError(message))
            table = table.set_column(index, field.name, pa.nulls(table.num_rows, known))
        if errors is None:
            return table
        error_column = pa.array(errors, pa.string())
        if ERROR in table.column_names:
            return table.set_column(table.column_names.index(ERROR), ERROR, error_column)
        return table.append_column(ERROR, error_column)


def _errors_of(table: pa.Table) -> list[str | None]:
    if ERROR not in table.column_names:
        return [None] * table.num_rows
    return table.column(ERROR).to_pylist()


def _arrow_type(value: Any) -> pa.DataType | None:
    try:
        return values_to_array("value", [value]).type
    except (SchemaConflictError, TypeError):
        return None


def _compatible(kind: pa.DataType | None, other: pa.DataType | None) -> bool:
    if kind is None or other is None:
        return kind is other
    if kind == other:
        return True
    try:
        unify_schemas([pa.schema([("v", kind)]), pa.schema([("v", other)])])
    except SchemaConflictError:
        return False
    return True


def _kind_of(value: Any, other: Any, kind: pa.DataType | None) -> str:
    """A value's type as its Python type, or its Arrow type when both are the same Python
    type (two dicts of different fields)."""
    if type(value) is not type(other) or kind is None:
        return f"a {type(value).__name__}"
    return f"a {type(value).__name__} of Arrow type {kind}"


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} ({text[:40]}{'...' if len(text) > 40 else ''})"
