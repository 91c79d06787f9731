"""Functions over rows and batches: ``map``, ``flat_map``, ``filter`` and ``map_batches``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from llmbatch.data import operators
from llmbatch.data.batch_format import BatchFormat, check_batch_format
from llmbatch.data.expressions import as_expression
from llmbatch.data.outputs import check_count
from llmbatch.data.plan import PlanInfo
from llmbatch.data.udf import UserFunction, check_scheduling_keywords

if TYPE_CHECKING:
    from typing_extensions import Self

    from llmbatch.data.blocks import Stream


class RowOperations:
    """The map-like half of ``Dataset``."""

    if TYPE_CHECKING:
        _info: PlanInfo

        def _chain(
            self, name: str, apply: Callable[[Stream], Stream], info: PlanInfo, code: Any = None
        ) -> Self: ...

    def map(
        self,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        fn_args: Iterable[Any] | None = None,
        fn_kwargs: Mapping[str, Any] | None = None,
        fn_constructor_args: Iterable[Any] | None = None,
        fn_constructor_kwargs: Mapping[str, Any] | None = None,
        **scheduling: Any,
    ) -> Self:
        """Applies ``fn`` to each row (a dict) and keeps the dict it returns.

        Every returned row must have the same keys (a ValueError names both sets otherwise).
        Values keep their types: timestamps to the nanosecond, numpy arrays as tensors of their
        shape and dtype, other objects pickled. ``fn`` may be a callable class, instantiated
        once per run with ``fn_constructor_args``; ``fn_args``/``fn_kwargs`` follow the row.
        """
        check_scheduling_keywords("map", scheduling)
        udf = UserFunction.of(fn, fn_args, fn_kwargs, fn_constructor_args, fn_constructor_kwargs)
        return self._chain(
            f"map({udf.name})",
            lambda stream: operators.map_rows(stream, udf),
            self._info.with_schema(None),
            udf,
        )

    def flat_map(
        self,
        fn: Callable[[dict[str, Any]], list[dict[str, Any]]],
        *,
        fn_args: Iterable[Any] | None = None,
        fn_kwargs: Mapping[str, Any] | None = None,
        fn_constructor_args: Iterable[Any] | None = None,
        fn_constructor_kwargs: Mapping[str, Any] | None = None,
        **scheduling: Any,
    ) -> Self:
        """Applies ``fn`` to each row; each returns a list of rows (possibly empty), all with
        the same keys."""
        check_scheduling_keywords("flat_map", scheduling)
        udf = UserFunction.of(fn, fn_args, fn_kwargs, fn_constructor_args, fn_constructor_kwargs)
        return self._chain(
            f"flat_map({udf.name})",
            lambda stream: operators.flat_map_rows(stream, udf),
            PlanInfo(num_blocks=self._info.num_blocks),
            udf,
        )

    def filter(
        self,
        fn: Callable[[dict[str, Any]], bool] | None = None,
        expr: Any = None,
        *,
        fn_args: Iterable[Any] | None = None,
        fn_kwargs: Mapping[str, Any] | None = None,
        fn_constructor_args: Iterable[Any] | None = None,
        fn_constructor_kwargs: Mapping[str, Any] | None = None,
        **scheduling: Any,
    ) -> Self:
        """Keeps the rows for which ``fn(row)`` is true, or for which the expression ``expr``
        is: a ``pyarrow.compute`` expression (``pc.field("score") > 3``), Ray Data's
        (``col("score") > 3``), or text in Python's syntax (``"score > 3 and name != 'x'"``),
        evaluated by pyarrow over whole blocks. A null result drops the row."""
        check_scheduling_keywords("filter", scheduling)
        if (fn is None) == (expr is None):
            raise ValueError("filter needs exactly one of fn and expr")
        if expr is not None:
            expression = as_expression(expr)
            return self._chain(
                f"filter(expr={expression})",
                lambda stream: operators.filter_expression(stream, expression),
                self._info.fewer_rows(),
            )
        udf = UserFunction.of(fn, fn_args, fn_kwargs, fn_constructor_args, fn_constructor_kwargs)
        return self._chain(
            f"filter({udf.name})",
            lambda stream: operators.filter_rows(stream, udf),
            self._info.fewer_rows(),
            udf,
        )

    def map_batches(
        self,
        fn: Callable[[Any], Any],
        *,
        batch_size: int | None = None,
        batch_format: BatchFormat | None = "default",
        zero_copy_batch: bool = True,
        fn_args: Iterable[Any] | None = None,
        fn_kwargs: Mapping[str, Any] | None = None,
        fn_constructor_args: Iterable[Any] | None = None,
        fn_constructor_kwargs: Mapping[str, Any] | None = None,
        **scheduling: Any,
    ) -> Self:
        """Applies ``fn`` to batches of rows; it returns (or yields) batches of any length.

        A batch is a dict of numpy arrays ("default", "numpy"), a pandas DataFrame ("pandas") or
        a pyarrow Table ("pyarrow", or None: the block itself); fn may return any of these.
        ``batch_size=None`` passes each block whole; otherwise whole blocks are grouped until
        they hold ``batch_size`` rows and cut into batches of ``batch_size``, so the last batch
        of a group may be smaller. Each group gives one output block. With
        ``zero_copy_batch=True`` numpy arrays may share the block's read-only memory; with
        False each batch is a writable copy. A callable class is instantiated once per run.
        """
        check_scheduling_keywords("map_batches", scheduling)
        if batch_size is not None:
            batch_size = check_count("batch_size", batch_size, minimum=1)
        batch_format = check_batch_format(batch_format)
        udf = UserFunction.of(fn, fn_args, fn_kwargs, fn_constructor_args, fn_constructor_kwargs)
        return self._chain(
            f"map_batches({udf.name})",
            lambda stream: operators.map_batches(
                stream, udf, batch_size, batch_format, zero_copy_batch
            ),
            PlanInfo(num_blocks=self._info.num_blocks if batch_size is None else None),
            udf,
        )
