"""User functions given to map, map_batches, flat_map and filter."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Ray's scheduling keywords: accepted so Ray code ports unchanged, though nothing is scheduled.
SCHEDULING_KEYWORDS = frozenset(
    {
        "compute",
        "concurrency",
        "num_cpus",
        "num_gpus",
        "memory",
        "resources",
        "ray_remote_args_fn",
        "scheduling_strategy",
    }
)


def check_scheduling_keywords(method: str, keywords: Mapping[str, Any]) -> None:
    """Rejects keywords that are neither this method's own nor Ray's scheduling keywords."""
    unknown = sorted(set(keywords) - SCHEDULING_KEYWORDS)
    if unknown:
        raise TypeError(
            f"{method}() got unexpected keyword argument(s): {', '.join(unknown)}. "
            f"Ray's scheduling keywords ({', '.join(sorted(SCHEDULING_KEYWORDS))}) are accepted "
            f"and have no effect here."
        )


@dataclass(frozen=True, slots=True)
class UserFunction:
    """A function, or a callable class instantiated once each time the dataset runs."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    constructor_args: tuple[Any, ...] = ()
    constructor_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        fn: Callable[..., Any],
        fn_args: Iterable[Any] | None = None,
        fn_kwargs: Mapping[str, Any] | None = None,
        fn_constructor_args: Iterable[Any] | None = None,
        fn_constructor_kwargs: Mapping[str, Any] | None = None,
    ) -> UserFunction:
        """Validates Ray's ``fn_*`` arguments for ``fn``."""
        if not callable(fn):
            raise TypeError(f"expected a function or a callable class, got {type(fn).__name__}")
        is_class = isinstance(fn, type)
        if is_class and not any("__call__" in vars(base) for base in fn.__mro__[:-1]):
            raise TypeError(f"class {fn.__name__} has no __call__ method")
        if not is_class and (fn_constructor_args or fn_constructor_kwargs):
            raise ValueError(
                "fn_constructor_args and fn_constructor_kwargs apply only when fn is a class"
            )
        return cls(
            fn,
            tuple(fn_args or ()),
            dict(fn_kwargs or {}),
            tuple(fn_constructor_args or ()),
            dict(fn_constructor_kwargs or {}),
        )

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)

    def instantiate(self) -> Callable[[Any], Any]:
        """The callable to apply to each row or batch during one run."""
        target = self.fn
        if isinstance(target, type):
            target = target(*self.constructor_args, **self.constructor_kwargs)
        if not self.args and not self.kwargs:
            return target
        return lambda value: target(value, *self.args, **self.kwargs)
