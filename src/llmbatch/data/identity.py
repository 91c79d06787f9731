"""Stable fingerprints of what makes a job: its input files or rows, its code and its settings.

A fingerprint must be the same in a later process for the same job and differ when the job
changes, so it is built from text that survives a restart: file names, sizes and modification
times, the bytes of in-memory tables, and the source text (or bytecode) of functions together
with the values they close over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import types
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa

_PLAIN = (str, int, float, bool, type(None), bytes)
# A dataclass field with ``metadata={IDENTITY: False}`` changes nothing in a job's output (say,
# where a dashboard is served): fingerprints leave it out.
IDENTITY = "identity"


def digest(*parts: Any) -> str:
    """A hex SHA-256 of ``parts``, rendered as JSON (other values by their ``repr``)."""
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def tables_identity(tables: Iterable[pa.Table]) -> str:
    """The hash of the tables' rows and schema (Arrow IPC bytes)."""
    sha = hashlib.sha256()
    for table in tables:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        sha.update(sink.getvalue())
    return sha.hexdigest()


def code_identity(fn: Any) -> str:
    """What decides a function's behaviour: its code, defaults, closure and the plain globals
    it reads; for a bound method also its object (when that is a dataclass, by value)."""
    if fn is None:
        return "none"
    if isinstance(fn, types.MethodType):
        owner = fn.__self__
        return digest(code_identity(fn.__func__), value_identity(owner))
    if isinstance(fn, type):
        return digest(fn.__qualname__, _source(fn))
    function = fn if isinstance(fn, types.FunctionType) else vars(type(fn)).get("__call__")
    if not isinstance(function, types.FunctionType):
        return digest(type(fn).__qualname__, value_identity(fn))
    closure = [value_identity(cell.cell_contents) for cell in function.__closure__ or ()]
    names = _global_names(function.__code__)
    read_globals = {
        name: value_identity(function.__globals__[name])
        for name in sorted(names)
        if name in function.__globals__
    }
    return digest(
        function.__qualname__,
        _source(function),
        value_identity(function.__defaults__),
        closure,
        read_globals,
    )


def _source(obj: Callable[..., Any] | type) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        return "" if code is None else hashlib.sha256(code.co_code).hexdigest()


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def value_identity(value: Any) -> Any:
    """Plain data and dataclasses by value (less their fields marked as no part of the
    identity), functions by their code, anything else by its type only (an object's repr
    often holds a memory address, which would change on every run)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple):
        return [value_identity(item) for item in value]
    if isinstance(value, dict):
        return {str(key): value_identity(item) for key, item in value.items()}
    if isinstance(value, types.FunctionType | types.MethodType | type):
        return code_identity(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f for f in dataclasses.fields(value) if f.metadata.get(IDENTITY, True)]
        return {field.name: value_identity(getattr(value, field.name)) for field in fields}
    if isinstance(value, types.ModuleType):
        return value.__name__
    return type(value).__qualname__
