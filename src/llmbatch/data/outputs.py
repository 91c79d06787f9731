"""How rows leave a dataset: iteration, in-memory results, counts and files."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from llmbatch.data.batch_format import BatchFormat, check_batch_format, to_batch
from llmbatch.data.blocks import Stream, concat, rebatch
from llmbatch.data.checkpoint import ResumableJob
from llmbatch.data.extension_types import table_rows
from llmbatch.data.files import PathLike
from llmbatch.data.operators import ROWS_PER_CALL
from llmbatch.data.plan import PlanInfo
from llmbatch.data.resume import clear_for_plain_write, write_resumable
from llmbatch.data.writers import write_blocks


class DatasetOutputs:
    """The consuming half of ``Dataset``: every method here runs the plan."""

    _info: PlanInfo
    _resumable: ResumableJob | None

    if TYPE_CHECKING:

        def _blocks(self) -> Stream: ...

        def limit(self, limit: int) -> DatasetOutputs: ...

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Rows as dicts, in order."""
        for table in self._blocks():
            for batch in table.to_batches(max_chunksize=ROWS_PER_CALL):
                yield from table_rows(batch)

    def iter_batches(
        self,
        *,
        batch_size: int | None = 256,
        batch_format: BatchFormat | None = "default",
        drop_last: bool = False,
    ) -> Iterator[Any]:
        """Batches of exactly ``batch_size`` rows (the last may be smaller unless ``drop_last``);
        ``batch_size=None`` gives each block as it is."""
        if batch_size is not None:
            batch_size = check_count("batch_size", batch_size, minimum=1)
        batch_format = check_batch_format(batch_format)
        stream = self._blocks()
        batches = (
            (t for t in stream if t.num_rows) if batch_size is None else rebatch(stream, batch_size)
        )
        for table in batches:
            if drop_last and batch_size is not None and table.num_rows < batch_size:
                return
            yield to_batch(table, batch_format)

    def take(self, limit: int = 20) -> list[dict[str, Any]]:
        """The first ``limit`` rows as dicts."""
        return list(self.limit(limit).iter_rows())

    def take_all(self, limit: int | None = None) -> list[dict[str, Any]]:
        """All rows as dicts; raises ValueError when there are more than ``limit``."""
        source = self if limit is None else self.limit(limit + 1)
        rows = list(source.iter_rows())
        _check_at_most(len(rows), limit, "take_all")
        return rows

    def take_batch(
        self, batch_size: int = 20, *, batch_format: BatchFormat | None = "default"
    ) -> Any:
        """The first batch of up to ``batch_size`` rows."""
        for batch in self.limit(batch_size).iter_batches(
            batch_size=batch_size, batch_format=batch_format
        ):
            return batch
        raise ValueError("take_batch: the dataset is empty")

    def show(self, limit: int = 20) -> None:
        """Prints the first ``limit`` rows, one per line."""
        for row in self.take(limit):
            print(row)

    def to_pandas(self, limit: int | None = None) -> pd.DataFrame:
        """The dataset as one DataFrame; raises ValueError when it has more than ``limit`` rows."""
        source = self if limit is None else self.limit(limit + 1)
        tables = list(source._blocks())
        if not tables:
            return pd.DataFrame()
        table = concat(tables)
        _check_at_most(table.num_rows, limit, "to_pandas")
        return to_batch(table, "pandas")

    def count_if_known(self) -> int | None:
        """The number of rows when the plan or the source can tell it without running any
        function (a source may read its files to count); None otherwise."""
        return self._info.exact_rows()

    def count(self) -> int:
        """The number of rows: from what the plan knows, a source's metadata, or by running."""
        rows = self._info.exact_rows()
        return rows if rows is not None else sum(table.num_rows for table in self._blocks())

    def schema(self, fetch_if_missing: bool = True) -> pa.Schema | None:
        """The columns and their types; when not known before running, those of the first block."""
        if self._info.schema is not None or not fetch_if_missing:
            return self._info.schema
        first = next(self._blocks(), None)
        return None if first is None else first.schema

    def columns(self, fetch_if_missing: bool = True) -> list[str] | None:
        """The column names, as ``schema()`` finds them."""
        schema = self.schema(fetch_if_missing)
        return None if schema is None else schema.names

    def size_bytes(self) -> int:
        """The bytes the dataset's blocks take in memory (Arrow's buffers); runs the plan."""
        return sum(table.nbytes for table in self._blocks())

    def num_blocks(self) -> int:
        """The number of blocks; runs the dataset when the plan does not say."""
        if self._info.num_blocks is not None:
            return self._info.num_blocks
        return sum(1 for _ in self._blocks())

    def write_parquet(
        self,
        path: PathLike,
        *,
        filesystem: Any = None,
        min_rows_per_file: int | None = None,
        max_rows_per_file: int | None = None,
        overwrite: bool = False,
        retry_failed: bool = False,
        **arrow_parquet_args: Any,
    ) -> None:
        """Writes Parquet files into the folder ``path`` (see ``_write`` for resuming).

        ``arrow_parquet_args`` go to ``pyarrow.parquet.ParquetWriter`` (e.g. ``compression``).
        """
        self._write(
            path,
            "parquet",
            filesystem,
            min_rows_per_file,
            max_rows_per_file,
            overwrite,
            retry_failed,
            arrow_parquet_args,
        )

    def write_csv(
        self,
        path: PathLike,
        *,
        filesystem: Any = None,
        min_rows_per_file: int | None = None,
        max_rows_per_file: int | None = None,
        overwrite: bool = False,
        retry_failed: bool = False,
        **arrow_csv_args: Any,
    ) -> None:
        """Writes CSV files into the folder ``path``; ``arrow_csv_args`` go to ``CSVWriter``.
        Lists and structs are stored as JSON text, bytes (e.g. images) as base64."""
        self._write(
            path,
            "csv",
            filesystem,
            min_rows_per_file,
            max_rows_per_file,
            overwrite,
            retry_failed,
            arrow_csv_args,
        )

    def write_json(
        self,
        path: PathLike,
        *,
        filesystem: Any = None,
        min_rows_per_file: int | None = None,
        max_rows_per_file: int | None = None,
        overwrite: bool = False,
        retry_failed: bool = False,
    ) -> None:
        """Writes JSON-lines files into the folder ``path``."""
        self._write(
            path,
            "json",
            filesystem,
            min_rows_per_file,
            max_rows_per_file,
            overwrite,
            retry_failed,
            {},
        )

    def write_numpy(
        self,
        path: PathLike,
        *,
        column: str,
        filesystem: Any = None,
        min_rows_per_file: int | None = None,
        max_rows_per_file: int | None = None,
        overwrite: bool = False,
    ) -> None:
        """Writes column ``column`` into the folder ``path`` as ``.npy`` files, one array per
        file (a block's values stacked on a first axis); its values must share one shape."""
        if not isinstance(column, str):
            raise TypeError(f"write_numpy: column must be a column name, got {column!r}")
        self._write(
            path,
            "npy",
            filesystem,
            min_rows_per_file,
            max_rows_per_file,
            overwrite,
            False,
            {"column": column},
        )

    def _write(
        self,
        path: PathLike,
        file_format: str,
        filesystem: Any,
        min_rows_per_file: int | None,
        max_rows_per_file: int | None,
        overwrite: bool,
        retry_failed: bool,
        options: dict[str, Any],
    ) -> None:
        """The output of an LLM processor is written resumably: a rerun into the same folder
        finishes only the missing rows, ``retry_failed`` re-runs the error rows, and
        ``overwrite`` replaces another job's output. Other datasets are written in one pass,
        one file per block, next to the files already in the folder (``overwrite`` deletes
        those first)."""
        job = self._resumable
        if job is not None:
            write_resumable(
                job,
                path,
                file_format,
                filesystem=filesystem,
                overwrite=overwrite,
                retry_failed=retry_failed,
                min_rows_per_file=min_rows_per_file,
                max_rows_per_file=max_rows_per_file,
                options=options,
            )
            return
        if retry_failed:
            raise ValueError(
                "retry_failed applies to the output of an LLM processor written directly "
                "(processor(ds).write_parquet(...)); this dataset has no processor stage"
            )
        clear_for_plain_write(path, file_format, filesystem, overwrite)
        write_blocks(
            self._blocks(),
            path,
            file_format,
            filesystem=filesystem,
            min_rows_per_file=min_rows_per_file,
            max_rows_per_file=max_rows_per_file,
            options=options,
        )


# Set by a processor on the Ray Dataset it returns: ``writer(path, file_format, **options)``.
RESUMABLE_WRITER = "_llmbatch_resumable_write"


def write_parquet(dataset: Any, path: PathLike, **options: Any) -> Any:
    """Writes ``dataset`` as Parquet with llmbatch's writers: an llmbatch Dataset (as its
    ``write_parquet``), or the Ray Dataset a processor returned, written resumably on this
    machine (see ``write_resumable``): a rerun into the same folder processes only the rows
    not yet committed. Returns the write's report for a Ray Dataset."""
    return _write_any(dataset, path, "parquet", options)


def write_json(dataset: Any, path: PathLike, **options: Any) -> Any:
    """As ``write_parquet``, in JSON lines."""
    return _write_any(dataset, path, "json", options)


def write_csv(dataset: Any, path: PathLike, **options: Any) -> Any:
    """As ``write_parquet``, in CSV."""
    return _write_any(dataset, path, "csv", options)


def _write_any(dataset: Any, path: PathLike, file_format: str, options: dict[str, Any]) -> Any:
    if isinstance(dataset, DatasetOutputs):
        return getattr(dataset, f"write_{file_format}")(path, **options)
    writer = getattr(dataset, RESUMABLE_WRITER, None)
    if writer is None:
        raise TypeError(
            f"llmbatch.data.write_{file_format} takes an llmbatch Dataset or the Ray Dataset an "
            f"LLM processor returned (as it returned it, before other Ray operations), got "
            f"{type(dataset).__name__}; write other Ray Datasets with their own writers"
        )
    return writer(path, file_format, **options)


def check_count(name: str, value: Any, *, minimum: int) -> int:
    """``value`` as a Python int when it is an integer (numpy's too, not bools) of at least
    ``minimum``; a ValueError otherwise."""
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def _check_at_most(num_rows: int, limit: int | None, method: str) -> None:
    if limit is not None and num_rows > limit:
        raise ValueError(
            f"{method}: the dataset has more than {limit} rows; raise the limit or use limit()"
        )
