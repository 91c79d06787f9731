"""Datasets from Python, pandas, Arrow, numpy and Hugging Face data, and ``range``."""

from __future__ import annotations

import builtins
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from llmbatch.data.batch_format import ndarray_to_arrow
from llmbatch.data.blocks import Stream, balanced_sizes, rows_to_table, values_to_array
from llmbatch.data.dataset import Dataset, MaterializedDataset
from llmbatch.data.outputs import check_count
from llmbatch.data.plan import PlanInfo

RANGE_BLOCK_ROWS = 131_072
# Hugging Face datasets may be memory-mapped and larger than memory: stream them in blocks this big.
HUGGINGFACE_BLOCK_BYTES = 32 << 20
_HUGGINGFACE_STREAM_BLOCK_ROWS = 1024


def from_items(
    items: Sequence[Any], *, override_num_blocks: int | None = None
) -> MaterializedDataset:
    """Rows from a list: dicts become rows; other values become rows of one column, "item"."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
        raise TypeError(f"from_items needs a list of rows or values, got {type(items).__name__}")
    dicts = sum(isinstance(item, Mapping) for item in items)
    if 0 < dicts < len(items):
        raise TypeError("from_items: the list mixes dicts (rows) with other values; use one kind")
    if dicts:
        table = rows_to_table(items)
    else:
        table = pa.table({"item": values_to_array("item", list(items))})
    return MaterializedDataset(_split(table, override_num_blocks))


def from_pandas(dfs: pd.DataFrame | Sequence[pd.DataFrame]) -> MaterializedDataset:
    """One block per DataFrame; a non-default index is kept as a column."""
    frames = [dfs] if isinstance(dfs, pd.DataFrame) else list(dfs)
    for frame in frames:
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"from_pandas needs DataFrames, got {type(frame).__name__}")
    return MaterializedDataset(
        [pa.Table.from_pandas(frame).replace_schema_metadata(None) for frame in frames]
    )


def from_arrow(
    tables: pa.Table | pa.RecordBatch | Sequence[pa.Table | pa.RecordBatch],
) -> MaterializedDataset:
    """One block per Table or RecordBatch."""
    items = [tables] if isinstance(tables, pa.Table | pa.RecordBatch) else list(tables)
    blocks = []
    for item in items:
        if isinstance(item, pa.RecordBatch):
            item = pa.Table.from_batches([item])
        if not isinstance(item, pa.Table):
            raise TypeError(
                f"from_arrow needs pyarrow Tables or RecordBatches, got {type(item).__name__}"
            )
        blocks.append(item)
    return MaterializedDataset(blocks)


def from_numpy(ndarrays: np.ndarray | Sequence[np.ndarray]) -> MaterializedDataset:
    """One block per array, as the column "data"; each row of a 2-D+ array is a fixed-size list."""
    arrays = [ndarrays] if isinstance(ndarrays, np.ndarray) else list(ndarrays)
    for array in arrays:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"from_numpy needs numpy arrays, got {type(array).__name__}")
    return MaterializedDataset([pa.table({"data": ndarray_to_arrow(array)}) for array in arrays])


def from_huggingface(dataset: Any) -> Dataset:
    """Streams a Hugging Face ``datasets.Dataset`` (or ``IterableDataset``) over its Arrow data.

    Columns keep their Arrow storage: an image column stays a struct of ``bytes`` and ``path``.
    """
    import datasets

    if isinstance(dataset, datasets.DatasetDict | datasets.IterableDatasetDict):
        raise TypeError(
            f"from_huggingface needs one split, e.g. dataset[{next(iter(dataset), 'train')!r}]; "
            f"got a dict of splits {list(dataset)}"
        )
    if isinstance(dataset, datasets.Dataset):
        num_rows = len(dataset)
        row_bytes = dataset.data.nbytes / max(dataset.data.num_rows, 1)
        block_rows = max(1, int(HUGGINGFACE_BLOCK_BYTES // max(row_bytes, 1)))
        info = PlanInfo(num_rows=num_rows, num_blocks=-(-num_rows // block_rows))
    elif isinstance(dataset, datasets.IterableDataset):
        block_rows = _HUGGINGFACE_STREAM_BLOCK_ROWS
        info = PlanInfo()
    else:
        raise TypeError(
            f"from_huggingface needs a datasets.Dataset or IterableDataset, "
            f"got {type(dataset).__name__}"
        )

    def stream() -> Stream:
        yield from dataset.with_format("arrow").iter(batch_size=block_rows)

    return Dataset(stream, name="from_huggingface", info=info)


def range(n: int, *, override_num_blocks: int | None = None) -> Dataset:
    """Rows ``{"id": 0}`` to ``{"id": n - 1}``, generated lazily."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"range needs an integer n >= 0, got {n!r}")
    n = int(n)
    if override_num_blocks is None:
        sizes = [
            min(RANGE_BLOCK_ROWS, n - start) for start in builtins.range(0, n, RANGE_BLOCK_ROWS)
        ]
    else:
        sizes = _block_sizes(n, override_num_blocks)

    def stream() -> Stream:
        for start, size in zip(itertools.accumulate(sizes, initial=0), sizes):
            yield pa.table({"id": np.arange(start, start + size, dtype=np.int64)})

    info = PlanInfo(num_rows=n, num_blocks=len(sizes), schema=pa.schema([("id", pa.int64())]))
    return Dataset(stream, name=f"range({n})", info=info)


def _split(table: pa.Table, num_blocks: int | None) -> list[pa.Table]:
    if num_blocks is None:
        return [table]
    sizes = _block_sizes(table.num_rows, num_blocks)
    return [
        table.slice(start, size)
        for start, size in zip(itertools.accumulate(sizes, initial=0), sizes)
    ]


def _block_sizes(num_rows: int, num_blocks: Any) -> list[int]:
    """Balanced block sizes; never more blocks than rows (as in Ray Data, no empty blocks),
    and one empty block for no rows, so that the columns are still known."""
    num_blocks = check_count("override_num_blocks", num_blocks, minimum=1)
    return balanced_sizes(num_rows, max(1, min(num_blocks, num_rows)))
