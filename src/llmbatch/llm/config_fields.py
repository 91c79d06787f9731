"""Keyword-only config classes whose unknown, missing and mistyped fields are errors naming them
(as Ray Data LLM's pydantic configs reject them), and which pickle by their fields."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from llmbatch.data.identity import IDENTITY

# Where a processor serves its live dashboard. They change nothing in the output, so a job's
# fingerprint leaves them out (a resumed job may turn the dashboard on or off): declare them
# with ``field(default=..., metadata=NOT_IDENTITY)``.
NOT_IDENTITY = {IDENTITY: False}
DASHBOARD_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "dashboard": (bool,),
    "dashboard_host": (str,),
    "dashboard_port": (int,),
}


def _rebuild(cls: type, values: dict[str, Any]) -> Any:
    return cls(**values)


class CheckedFields:
    """Mixin of the config dataclasses: checks the given field names before the dataclass's
    own ``__init__`` (which would only say "unexpected keyword"), and field types after it.

    ``_REQUIRED`` maps each required field to a hint of what to give; ``_TYPES`` the accepted
    types of each field (merged along the class hierarchy; ``None`` is written ``type(None)``).
    """

    __slots__ = ()
    _REQUIRED: ClassVar[dict[str, str]] = {}
    _TYPES: ClassVar[dict[str, tuple[type, ...]]] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"{cls.__name__} got unknown field(s) {', '.join(map(repr, unknown))}; "
                f"accepted fields: {', '.join(accepted)}"
            )
        for name, hint in cls._REQUIRED.items():
            if name not in kwargs:
                raise TypeError(f"{cls.__name__} needs {name}: {hint}")
        return object.__new__(cls)

    def __reduce__(self) -> tuple[Any, tuple[type, dict[str, Any]]]:
        # The default reduction calls __new__ without the fields, which refuses.
        return _rebuild, (type(self), self.field_values())

    def field_values(self) -> dict[str, Any]:
        """The fields as a dict (shallow: nested configs stay objects)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def identity_values(self) -> dict[str, Any]:
        """The fields that decide a job's output (see `llmbatch.data.identity.IDENTITY`)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.metadata.get(IDENTITY, True)
        }

    @classmethod
    def field_types(cls) -> dict[str, tuple[type, ...]]:
        types: dict[str, tuple[type, ...]] = {}
        for klass in reversed(cls.__mro__):
            types.update(vars(klass).get("_TYPES", {}))
        return types

    def check_types(self) -> None:
        """A field of a type it does not accept is a TypeError naming it and the accepted ones."""
        for name, types in self.field_types().items():
            value = getattr(self, name)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                accepted = " or ".join("None" if t is type(None) else t.__name__ for t in types)
                raise TypeError(
                    f"{type(self).__name__}.{name} must be {accepted}, "
                    f"got {type(value).__name__} ({value!r})"
                )

    def check_positive(self, name: str, value: int | float) -> None:
        if value < 1:
            raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {value}")

    def check_dashboard(self) -> None:
        """A host to listen on, and a port in 0..65535 (0: a free one)."""
        label = type(self).__name__
        if not self.dashboard_host:  # type: ignore[attr-defined]
            raise ValueError(f"{label}.dashboard_host must name an address, e.g. '127.0.0.1'")
        if not 0 <= self.dashboard_port <= 65535:  # type: ignore[attr-defined]
            raise ValueError(
                f"{label}.dashboard_port must be in 0..65535 (0 picks a free port), "
                f"got {self.dashboard_port}"  # type: ignore[attr-defined]
            )

    def check_concurrency(self, name: str = "concurrency") -> None:
        """An int >= 1 or a ``(min, max)`` pair with 1 <= min <= max (stored as a tuple)."""
        value = getattr(self, name)
        if value is None or isinstance(value, int):
            if value is not None:
                self.check_positive(name, value)
            return
        label = f"{type(self).__name__}.{name}"
        if len(value) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise TypeError(f"{label} must be an int or a (min, max) pair of ints, got {value!r}")
        low, high = value
        if not 1 <= low <= high:
            raise ValueError(f"{label}=({low}, {high}) needs 1 <= min <= max")
        setattr(self, name, (low, high))
