"""Partitioned folders: values encoded in a file's folder names become columns of its rows.

``Partitioning("hive")`` reads ``country=us/year=2024/part-0.csv`` as ``country="us"`` and
``year="2024"``; ``Partitioning("dir", field_names=["country", "year"])`` reads ``us/2024/...``.
Folders are those of the file's path below ``base_dir`` (the whole path when it is not given),
values are text unless ``field_types`` gives a type (``{"year": int}``), as in Ray Data, whose
own ``Partitioning`` objects are accepted too.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pyarrow as pa

_TYPES: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
}
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass(frozen=True, slots=True)
class Partitioning:
    """How folder names hold column values: ``style`` "hive" (``name=value`` folders) or "dir"
    (one folder per name of ``field_names``, in order)."""

    style: str
    base_dir: str | None = None
    field_names: Sequence[str] | None = None
    field_types: Mapping[str, type] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.style not in ("hive", "dir"):
            raise ValueError(f"Partitioning style must be 'hive' or 'dir', got {self.style!r}")
        if self.style == "dir" and not self.field_names:
            raise ValueError("Partitioning('dir') needs field_names: one per folder level")
        wrong = {k: v for k, v in dict(self.field_types or {}).items() if v not in _TYPES}
        if wrong:
            raise ValueError(
                f"Partitioning field_types must be str, int, float or bool, got {wrong!r}"
            )

    @classmethod
    def of(cls, partitioning: Any) -> Partitioning | None:
        """Ours, Ray Data's (by its fields), "hive", or None."""
        if partitioning is None or isinstance(partitioning, Partitioning):
            return partitioning
        if isinstance(partitioning, str):
            return cls(partitioning)
        style = getattr(partitioning, "style", None)
        if style is None:
            raise TypeError(
                f"partitioning must be a Partitioning, 'hive' or None, got "
                f"{type(partitioning).__name__}"
            )
        return cls(
            str(getattr(style, "value", style)),
            getattr(partitioning, "base_dir", None) or None,
            getattr(partitioning, "field_names", None),
            dict(getattr(partitioning, "field_types", None) or {}),
        )

    def values(self, path: str) -> dict[str, Any]:
        """The column values the folders of ``path`` hold."""
        folder = posixpath.dirname(path.replace("\\", "/"))
        if self.base_dir:
            base = self.base_dir.replace("\\", "/").rstrip("/")
            if folder == base or folder.startswith(base + "/"):
                folder = folder[len(base) :]
            else:
                raise ValueError(f"{path} is not below the partitioning base_dir {self.base_dir}")
        names = [part for part in folder.split("/") if part]
        if self.style == "hive":
            pairs = [part.split("=", 1) for part in names if part.count("=") == 1]
            found = {unquote(key): unquote(value) for key, value in pairs}
        else:
            wanted = list(self.field_names or [])
            if len(names) < len(wanted):
                raise ValueError(
                    f"{path} has {len(names)} folder(s) below the base, fewer than the "
                    f"field_names {wanted}"
                )
            found = dict(zip(wanted, names[len(names) - len(wanted) :]))
        return {name: self._typed(name, value, path) for name, value in found.items()}

    def _typed(self, name: str, value: str, path: str) -> Any:
        kind = dict(self.field_types or {}).get(name, str)
        try:
            if kind is bool:
                lowered = value.lower()
                if lowered not in _TRUE | _FALSE:
                    raise ValueError(value)
                return lowered in _TRUE
            return kind(value)
        except ValueError:
            raise ValueError(
                f"partition folder {name}={value!r} of {path} is not a {kind.__name__}"
            ) from None


def with_partitions(table: pa.Table, values: Mapping[str, Any], path: str) -> pa.Table:
    """``table`` with one constant column per partition value."""
    for name, value in values.items():
        if name in table.column_names:
            raise ValueError(
                f"{path}: its folder gives the column {name!r}, which the file has too; read "
                f"with partitioning=None to keep the file's"
            )
        column = pa.array([value] * table.num_rows, _TYPES[type(value)])
        table = table.append_column(name, column)
    return table
