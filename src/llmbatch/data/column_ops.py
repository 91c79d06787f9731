"""Columns: ``add_column``, ``select_columns``, ``drop_columns`` and ``rename_columns``, with
their arguments checked as Ray Data checks them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from llmbatch.data import operators
from llmbatch.data.batch_format import BatchFormat, check_batch_format
from llmbatch.data.plan import PlanInfo
from llmbatch.data.udf import UserFunction, check_scheduling_keywords

if TYPE_CHECKING:
    from typing_extensions import Self

    from llmbatch.data.blocks import Stream


class ColumnOperations:
    """The column half of ``Dataset``."""

    if TYPE_CHECKING:
        _info: PlanInfo

        def _chain(
            self, name: str, apply: Callable[[Stream], Stream], info: PlanInfo, code: Any = None
        ) -> Self: ...

    def add_column(
        self,
        col: str,
        fn: Callable[[Any], Any],
        *,
        batch_format: BatchFormat | None = "pandas",
        **scheduling: Any,
    ) -> Self:
        """Sets column ``col`` to what ``fn`` computes from each block (a DataFrame by
        default): one value per row, or a scalar given to every row. An existing column of that
        name is replaced, in its place."""
        check_scheduling_keywords("add_column", scheduling)
        if not isinstance(col, str):
            raise TypeError(f"add_column: col must be a str, got {type(col).__name__}")
        batch_format = check_batch_format(batch_format)
        udf = UserFunction.of(fn)
        return self._chain(
            f"add_column({col})",
            lambda stream: operators.add_column(stream, col, udf, batch_format),
            self._info.with_schema(None),
            udf,
        )

    def select_columns(self, cols: str | list[str], **scheduling: Any) -> Self:
        """Keeps only ``cols``, in that order."""
        check_scheduling_keywords("select_columns", scheduling)
        cols = _column_names("select_columns", cols)
        schema = self._known_schema_with(cols, "select_columns")
        return self._chain(
            f"select_columns({cols})",
            lambda stream: operators.select_columns(stream, cols),
            self._info.with_schema(
                None if schema is None else pa.schema(schema.field(c) for c in cols)
            ),
        )

    def drop_columns(self, cols: str | list[str], **scheduling: Any) -> Self:
        """Removes ``cols`` (each named once); the others keep their order."""
        check_scheduling_keywords("drop_columns", scheduling)
        cols = _column_names("drop_columns", cols)
        schema = self._known_schema_with(cols, "drop_columns")
        return self._chain(
            f"drop_columns({cols})",
            lambda stream: operators.drop_columns(stream, cols),
            self._info.with_schema(
                None if schema is None else pa.schema(f for f in schema if f.name not in cols)
            ),
        )

    def rename_columns(self, names: Mapping[str, str] | Sequence[str], **scheduling: Any) -> Self:
        """Renames columns: a dict ``{old: new}``, or a list with a new name for every column.
        New names must be distinct strings."""
        check_scheduling_keywords("rename_columns", scheduling)
        names = _renames(names)
        schema = self._info.schema
        if schema is not None and isinstance(names, dict):
            self._known_schema_with(list(names), "rename_columns")
        return self._chain(
            "rename_columns",
            lambda stream: operators.rename_columns(stream, names),
            self._info.with_schema(None),
        )

    def _known_schema_with(self, cols: list[str], method: str) -> pa.Schema | None:
        schema = self._info.schema
        missing = [] if schema is None else [c for c in cols if c not in schema.names]
        if missing:
            raise KeyError(f"{method}: no column(s) {missing}; the columns are {schema.names}")
        return schema


def _column_names(method: str, cols: Any) -> list[str]:
    """``cols`` as a list of distinct column names; a clear error otherwise."""
    if isinstance(cols, str):
        return [cols]
    if not isinstance(cols, list | tuple):
        raise TypeError(
            f"{method} needs a column name or a list of them, got {type(cols).__name__}"
        )
    wrong = [c for c in cols if not isinstance(c, str)]
    if wrong:
        raise TypeError(f"{method}: column names must be strings, got {wrong!r}")
    duplicates = sorted({c for c in cols if cols.count(c) > 1})
    if duplicates:
        raise ValueError(f"{method}: column(s) {duplicates} named more than once in {list(cols)}")
    return list(cols)


def _renames(names: Any) -> dict[str, str] | list[str]:
    if isinstance(names, Mapping):
        if not names:
            raise ValueError("rename_columns needs at least one column to rename")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
            raise TypeError(
                f"rename_columns: old and new names must be strings, got {dict(names)!r}"
            )
        new = list(names.values())
    elif isinstance(names, list | tuple):
        if not names:
            raise ValueError("rename_columns needs at least one name")
        if not all(isinstance(name, str) for name in names):
            raise TypeError(f"rename_columns: names must be strings, got {list(names)!r}")
        new = list(names)
    else:
        raise TypeError(
            f"rename_columns needs a dict {{old: new}} or a list of names, "
            f"got {type(names).__name__}"
        )
    duplicates = sorted({name for name in new if new.count(name) > 1})
    if duplicates:
        raise ValueError(f"rename_columns: new name(s) {duplicates} given more than once")
    return dict(names) if isinstance(names, Mapping) else new
