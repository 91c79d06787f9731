"""Batches as user functions see them ("numpy", "pandas", "pyarrow") and back to Arrow blocks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from llmbatch.data.blocks import values_to_array

BatchFormat = Literal["default", "numpy", "pandas", "pyarrow"]
BATCH_FORMATS = ("default", "numpy", "pandas", "pyarrow")


def check_batch_format(batch_format: str | None) -> str:
    """Validates a batch format name; ``None`` means the block itself (a pyarrow Table)."""
    if batch_format is None:
        return "pyarrow"
    if batch_format not in BATCH_FORMATS:
        raise ValueError(
            f"batch_format={batch_format!r} is not supported; use one of {', '.join(BATCH_FORMATS)}"
        )
    return batch_format


def to_batch(table: pa.Table, batch_format: str) -> Any:
    """The batch a user function receives: "default" and "numpy" give a dict of numpy arrays."""
    if batch_format == "pyarrow":
        return table
    if batch_format == "pandas":
        return table.to_pandas()
    return {name: column_to_numpy(table.column(name)) for name in table.column_names}


def column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """One column as numpy; fixed-size lists without nulls become an n-dimensional array."""
    if pa.types.is_fixed_size_list(column.type) and column.null_count == 0:
        array = column.combine_chunks()
        inner = column_to_numpy(pa.chunked_array([array.flatten()]))
        return inner.reshape(len(array), column.type.list_size, *inner.shape[1:])
    return column.to_numpy()


def from_batch(batch: Any, producer: str) -> pa.Table:
    """Converts what a user function returned into a block; ``producer`` names it in errors."""
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    if isinstance(batch, pd.DataFrame):
        return _from_pandas(batch, producer)
    if isinstance(batch, Mapping):
        return _from_columns(batch, producer)
    raise TypeError(
        f"{producer} must return a dict of columns, a pandas DataFrame or a pyarrow Table; "
        f"got {type(batch).__name__}"
    )


def _from_pandas(frame: pd.DataFrame, producer: str) -> pa.Table:
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise TypeError(f"{producer} returned a DataFrame Arrow cannot store: {error}") from error
    return table.replace_schema_metadata(None)


def _from_columns(columns: Mapping[str, Any], producer: str) -> pa.Table:
    arrays = {str(name): column_to_arrow(str(name), values) for name, values in columns.items()}
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{producer} returned columns of different lengths: {lengths}")
    return pa.table(arrays)


def column_to_arrow(name: str, values: Any) -> pa.Array | pa.ChunkedArray:
    """One column a user function returned, as Arrow; errors name the column."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    if isinstance(values, pd.Series):
        try:
            return pa.Array.from_pandas(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return values_to_array(name, values.tolist())
    if isinstance(values, np.ndarray):
        return ndarray_to_arrow(values) if values.dtype != object else values_to_array(name, values)
    if isinstance(values, list | tuple):
        return values_to_array(name, values)
    raise TypeError(
        f"Column {name!r} must be a list, numpy array, pandas Series or Arrow array; "
        f"got {type(values).__name__}"
    )


def ndarray_to_arrow(array: np.ndarray) -> pa.Array:
    """A numpy array as one Arrow column; dimensions after the first become fixed-size lists."""
    if array.ndim == 0:
        raise ValueError("a column needs a numpy array of at least one dimension, got a scalar")
    if array.ndim == 1:
        return pa.array(array)
    inner = ndarray_to_arrow(array.reshape(-1, *array.shape[2:]))
    return pa.FixedSizeListArray.from_arrays(inner, array.shape[1])
