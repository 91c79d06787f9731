"""Batches as user functions see them ("numpy", "pandas", "pyarrow") and back to Arrow blocks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from llmbatch.data.blocks import values_to_array
from llmbatch.data.extension_types import (
    PythonObjectType,
    is_tensor_type,
    ndarray_to_tensors,
    tensors_to_numpy,
)

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


def to_batch(table: pa.Table, batch_format: str, zero_copy: bool = True) -> Any:
    """The batch a user function receives: "default" and "numpy" give a dict of numpy arrays.

    With ``zero_copy`` numpy arrays may share Arrow's (read-only) memory; without, every array
    is the batch's own and writable."""
    if batch_format == "pyarrow":
        return table
    if batch_format == "pandas":
        return _to_pandas(table)
    columns = {name: column_to_numpy(table.column(name)) for name in table.column_names}
    if zero_copy:
        return columns
    return {name: np.array(values, copy=True) for name, values in columns.items()}


def _holds_python_values(data_type: pa.DataType) -> bool:
    return is_tensor_type(data_type) or isinstance(data_type, PythonObjectType)


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """A DataFrame; tensor and object columns hold each row's numpy array or object."""
    special = [f.name for f in table.schema if _holds_python_values(f.type)]
    if not special:
        return table.to_pandas()
    frame = table.drop_columns(special).to_pandas()
    for name in special:
        values = tensors_to_numpy(table.column(name))
        if values.ndim > 1:
            values = _rows_of(values)
        frame[name] = pd.Series(values, index=frame.index, dtype=object)
    return frame[table.column_names]


def _rows_of(array: np.ndarray) -> np.ndarray:
    rows = np.empty(len(array), dtype=object)
    for index, row in enumerate(array):
        rows[index] = row
    return rows


def column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """One column as numpy: fixed-shape tensors (and fixed-size lists without nulls) as one
    n-dimensional array, ragged tensors and objects as an object array of each row's value."""
    if _holds_python_values(column.type):
        return tensors_to_numpy(column)
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
    # Object columns may hold numpy arrays or objects of any class: converted value by value,
    # so that they come back as they were.
    objects = [name for name, dtype in frame.dtypes.items() if dtype == np.dtype(object)]
    plain = frame.drop(columns=objects) if objects else frame
    try:
        table = pa.Table.from_pandas(plain, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise TypeError(f"{producer} returned a DataFrame Arrow cannot store: {error}") from error
    table = table.replace_schema_metadata(None)
    if not objects:
        return table
    columns = {
        str(name): table.column(str(name))
        if name not in objects
        else values_to_array(str(name), frame[name].tolist())
        for name in frame.columns
    }
    return pa.table(columns)


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
        if values.dtype == object:
            return values_to_array(name, values.tolist())
        return pa.Array.from_pandas(values)
    if isinstance(values, np.ndarray):
        if values.dtype == object:
            return values_to_array(name, list(values))
        return ndarray_to_arrow(values)
    if isinstance(values, list | tuple):
        return values_to_array(name, values)
    raise TypeError(
        f"Column {name!r} must be a list, numpy array, pandas Series or Arrow array; "
        f"got {type(values).__name__}"
    )


def ndarray_to_arrow(array: np.ndarray) -> pa.Array:
    """A numpy array as one Arrow column: each row of an array of two or more dimensions is a
    tensor (a numpy array again when read back)."""
    if array.ndim == 0:
        raise ValueError("a column needs a numpy array of at least one dimension, got a scalar")
    if array.ndim == 1:
        return pa.array(array)
    return ndarray_to_tensors(array)
