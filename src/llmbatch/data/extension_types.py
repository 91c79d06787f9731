"""Python values Arrow has no type of its own for, kept exactly in a column.

- numpy arrays of one shape and a numeric dtype: Arrow's canonical fixed-shape tensor type;
- numpy arrays of different shapes (ragged), or of other fixed-width dtypes: ``llmbatch.ragged
  _tensor``, each value's raw bytes with its shape (the dtype is the column's);
- anything else Arrow cannot store (objects of your own classes, sets, ...):
  ``llmbatch.python_object``, each value pickled. Reading such a column back unpickles it, so read
  Parquet files holding one only when you trust who wrote them.

Rows read from these columns give back numpy arrays of the same shape and dtype, and the same
objects.
"""

from __future__ import annotations

import datetime
import decimal
import json
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

_ARROW_KINDS = (
    bool,
    int,
    float,
    str,
    bytes,
    bytearray,
    dict,
    list,
    tuple,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    np.generic,
    np.ndarray,
    pd.Timestamp,
    pd.Timedelta,
)


class RaggedTensorType(pa.ExtensionType):
    """numpy arrays of one dtype and any shape: each value is its bytes and its shape."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        storage = pa.struct([("data", pa.large_binary()), ("shape", pa.list_(pa.int64()))])
        super().__init__(storage, "llmbatch.ragged_tensor")

    def __arrow_ext_serialize__(self) -> bytes:
        return json.dumps({"dtype": self.dtype.str}).encode()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> Any:
        return cls(np.dtype(json.loads(serialized)["dtype"]))

    def __arrow_ext_scalar_class__(self) -> type:
        return RaggedTensorScalar

    def __reduce__(self) -> tuple[Any, ...]:
        return RaggedTensorType, (self.dtype,)


class RaggedTensorScalar(pa.ExtensionScalar):
    def as_py(self, **kwargs: Any) -> np.ndarray | None:
        if not self.is_valid:
            return None
        value = self.value
        data, shape = value["data"].as_py(), value["shape"].as_py()
        return np.frombuffer(data, dtype=self.type.dtype).reshape(shape).copy()


class PythonObjectType(pa.ExtensionType):
    """Any picklable Python object, stored pickled."""

    def __init__(self) -> None:
        super().__init__(pa.large_binary(), "llmbatch.python_object")

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> Any:
        return cls()

    def __arrow_ext_scalar_class__(self) -> type:
        return PythonObjectScalar

    def __reduce__(self) -> tuple[Any, ...]:
        return PythonObjectType, ()


class PythonObjectScalar(pa.ExtensionScalar):
    def as_py(self, **kwargs: Any) -> Any:
        return None if not self.is_valid else pickle.loads(self.value.as_py())


def _register(extension_type: pa.ExtensionType) -> None:
    try:
        pa.register_extension_type(extension_type)
    except pa.ArrowKeyError:
        pass  # already registered (this module imported twice, e.g. by a Ray worker)


_register(RaggedTensorType(np.dtype("float64")))
_register(PythonObjectType())


def is_tensor_type(data_type: pa.DataType) -> bool:
    return isinstance(data_type, pa.FixedShapeTensorType | RaggedTensorType)


def tensor_dtype(data_type: pa.DataType) -> np.dtype:
    """The numpy dtype of a tensor type's values."""
    if isinstance(data_type, RaggedTensorType):
        return data_type.dtype
    return np.dtype(data_type.value_type.to_pandas_dtype())


def needs_conversion(data_type: pa.DataType) -> bool:
    """Whether a column of this type needs `column_values` to give back its Python values
    (pyarrow gives a fixed-shape tensor's values as one flat list)."""
    return isinstance(data_type, pa.FixedShapeTensorType)


def column_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """A column's values as Python values, with tensors as numpy arrays (read-only views)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if not isinstance(column.type, pa.FixedShapeTensorType):
        return [value for chunk in chunks for value in chunk.to_pylist()]
    values: list[Any] = []
    for chunk in chunks:
        if chunk.null_count == 0:
            values.extend(chunk.to_numpy_ndarray())
        else:
            values.extend(None if not s.is_valid else s.to_numpy() for s in chunk)
    return values


def table_rows(table: pa.Table | pa.RecordBatch) -> list[dict[str, Any]]:
    """The rows as dicts, with tensor columns as numpy arrays and objects as themselves."""
    if not any(needs_conversion(field.type) for field in table.schema):
        return table.to_pylist()
    columns = [column_values(table.column(i)) for i in range(table.num_columns)]
    names = table.column_names
    return [dict(zip(names, values)) for values in zip(*columns)]


def tensors_to_arrow(values: Sequence[Any]) -> pa.Array:
    """numpy arrays (and None) as one column: a fixed-shape tensor column when they share a
    numeric dtype and shape, a ragged one when they share a fixed-width dtype, else objects."""
    arrays = [value for value in values if value is not None]
    dtypes = {array.dtype for array in arrays}
    if len(dtypes) != 1 or next(iter(dtypes)).hasobject or any(a.ndim == 0 for a in arrays):
        return objects_to_arrow(values)
    dtype = next(iter(dtypes))
    shapes = {array.shape for array in arrays}
    if len(shapes) == 1 and dtype.kind in "biuf":
        return _fixed_shape(values, dtype, next(iter(shapes)))
    return ragged_tensors(values, dtype)


def ragged_tensors(values: Sequence[Any], dtype: np.dtype) -> pa.Array:
    """numpy arrays of ``dtype`` (and None), of any shapes, as a ragged tensor column."""
    storage = pa.array(
        [
            None
            if value is None
            else {"data": np.ascontiguousarray(value).tobytes(), "shape": list(value.shape)}
            for value in values
        ],
        RaggedTensorType(dtype).storage_type,
    )
    return pa.ExtensionArray.from_storage(RaggedTensorType(dtype), storage)


def _fixed_shape(values: Sequence[Any], dtype: np.dtype, shape: tuple[int, ...]) -> pa.Array:
    tensor_type = pa.fixed_shape_tensor(pa.from_numpy_dtype(dtype), shape)
    filler = np.zeros(shape, dtype)
    if values:
        stacked = np.stack([filler if value is None else value for value in values])
    else:
        stacked = np.zeros((0, *shape), dtype)
    flat = pa.array(np.ascontiguousarray(stacked).reshape(-1))
    size = int(np.prod(shape, dtype=np.int64))
    mask = pa.array([value is None for value in values], pa.bool_())
    storage = pa.FixedSizeListArray.from_arrays(
        flat, size, mask=mask if any(value is None for value in values) else None
    )
    return pa.ExtensionArray.from_storage(tensor_type, storage)


def ndarray_to_tensors(array: np.ndarray) -> pa.Array:
    """The rows of an array of two or more dimensions, one tensor per row."""
    if array.dtype.kind in "biuf":
        return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(array))
    return tensors_to_arrow(list(array))


def objects_to_arrow(values: Sequence[Any]) -> pa.Array:
    """Any Python values, pickled (None stays null)."""
    try:
        pickled = [None if value is None else pickle.dumps(value) for value in values]
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        raise TypeError(f"a value Arrow cannot store cannot be pickled either: {error}") from error
    storage = pa.array(pickled, pa.large_binary())
    return pa.ExtensionArray.from_storage(PythonObjectType(), storage)


def is_arrow_kind(value: Any) -> bool:
    """Whether Arrow has a type of its own for values like this one."""
    return value is None or isinstance(value, _ARROW_KINDS)


def tensors_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A tensor or object column as numpy: one n-dimensional array for fixed-shape tensors
    without nulls, else an object array holding each row's value."""
    if isinstance(column.type, pa.FixedShapeTensorType) and column.null_count == 0:
        chunks = [chunk.to_numpy_ndarray() for chunk in column.chunks]
        if chunks:
            return np.concatenate(chunks)
        return np.zeros((0, *column.type.shape), column.type.value_type.to_pandas_dtype())
    values = column_values(column)
    result = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        result[index] = value
    return result
