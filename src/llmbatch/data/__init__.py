"""Datasets in the shape of Ray Data, streamed as Arrow blocks through one process.

Code written for ``ray.data`` ports by changing the import::

    from llmbatch import data

    ds = data.read_csv("customers.csv").limit(1000).repartition(num_blocks=4)
    ds.map(lambda row: {**row, "greeting": f"Hi {row['First Name']}"}).write_parquet("out/")
"""

from llmbatch.data.blocks import SchemaConflictError
from llmbatch.data.dataset import Dataset, MaterializedDataset
from llmbatch.data.file_readers import read_binary_files, read_images, read_numpy, read_text
from llmbatch.data.grouped import GroupedData
from llmbatch.data.outputs import write_csv, write_json, write_parquet
from llmbatch.data.partitioning import Partitioning
from llmbatch.data.readers import read_csv, read_json, read_parquet
from llmbatch.data.sources import (
    from_arrow,
    from_huggingface,
    from_items,
    from_numpy,
    from_pandas,
    range,
)

__all__ = [
    "Dataset",
    "GroupedData",
    "MaterializedDataset",
    "Partitioning",
    "SchemaConflictError",
    "from_arrow",
    "from_huggingface",
    "from_items",
    "from_numpy",
    "from_pandas",
    "range",
    "read_binary_files",
    "read_csv",
    "read_images",
    "read_json",
    "read_numpy",
    "read_parquet",
    "read_text",
    "write_csv",
    "write_json",
    "write_parquet",
]
