"""Every row of a dataset at once, for the operations that need them (sort, shuffle, groupby,
split, zip's row alignment aside), with the process's memory bounded.

Blocks are kept in memory up to ``SPILL_THRESHOLD_BYTES`` in all; later blocks are written to
temporary Arrow IPC files (in ``tempfile.gettempdir()``, i.e. ``$TMPDIR``) and memory-mapped
back. The files are unlinked as soon as they are mapped, so the disk space returns to the system
when the last table using them is freed, even if the process is killed. Rows are then gathered
from those blocks chunk by chunk (`RowGatherer`), never by concatenating a whole column.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from llmbatch.data.blocks import Stream, conform, unify_schemas

SPILL_THRESHOLD_BYTES = 256 << 20


def hold(stream: Iterable[pa.Table], columns: Sequence[str] | None = None) -> list[pa.Table]:
    """The stream's blocks (only ``columns`` when given), those beyond the threshold spilled."""
    held: list[pa.Table] = []
    in_memory = 0
    for table in stream:
        if columns is not None:
            missing = [name for name in columns if name not in table.column_names]
            if missing:
                raise KeyError(f"no column(s) {missing}; the columns are {table.column_names}")
            table = table.select(list(columns))
        if in_memory + table.nbytes <= SPILL_THRESHOLD_BYTES:
            held.append(table)
            in_memory += table.nbytes
        else:
            held.append(spill(table))
    return held


def collect(
    stream: Iterable[pa.Table], columns: Sequence[str] | None = None
) -> tuple[pa.Table, int]:
    """The stream's rows as one table (only ``columns`` when given), spilled beyond the
    threshold, and the number of blocks they came in; types of different blocks are unified."""
    held = hold(stream, columns)
    if not held:
        empty = pa.table({}) if columns is None else pa.table({name: [] for name in columns})
        return empty, 0
    schema = unify_schemas([table.schema for table in held])
    return pa.concat_tables([conform(table, schema) for table in held]), len(held)


def spill(table: pa.Table) -> pa.Table:
    """``table`` written to a temporary file and memory-mapped back."""
    descriptor, path = tempfile.mkstemp(prefix="llmbatch-spill-", suffix=".arrow")
    os.close(descriptor)
    try:
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        mapped = pa.ipc.open_file(pa.memory_map(path)).read_all()
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(
                error.errno,
                f"no space left in {os.path.dirname(path)} to hold rows beyond "
                f"{SPILL_THRESHOLD_BYTES >> 20} MiB in memory; point TMPDIR at a larger disk",
            ) from error
        raise
    finally:
        os.unlink(path)
    return mapped


class RowGatherer:
    """Takes rows of a (chunked, possibly memory-mapped) table in any order, touching only the
    chunks that hold them: pyarrow's own ``take`` would first concatenate each column."""

    def __init__(self, table: pa.Table) -> None:
        self._schema = table.schema
        self._batches = table.to_batches()
        self._offsets = np.cumsum([0] + [batch.num_rows for batch in self._batches])

    def take(self, indices: np.ndarray) -> pa.Table:
        """The rows at ``indices`` (of the whole table), in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            return self._schema.empty_table()
        chunk_of = np.searchsorted(self._offsets, indices, side="right") - 1
        order = np.argsort(chunk_of, kind="stable")
        chunks = chunk_of[order]
        starts = np.flatnonzero(np.r_[True, chunks[1:] != chunks[:-1]])
        stops = np.r_[starts[1:], len(chunks)]
        pieces = []
        for start, stop in zip(starts, stops):
            chunk = chunks[start]
            local = indices[order[start:stop]] - self._offsets[chunk]
            pieces.append(self._batches[chunk].take(pa.array(local)))
        gathered = pa.Table.from_batches(pieces, self._schema).combine_chunks()
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return gathered.take(pa.array(back))


def emit(table: pa.Table, indices: np.ndarray, rows_per_block: int) -> Stream:
    """The rows of ``table`` at ``indices``, in that order, in blocks of ``rows_per_block``."""
    gatherer = RowGatherer(table)
    for start in range(0, len(indices), rows_per_block):
        yield gatherer.take(indices[start : start + rows_per_block])


def rows_per_block(num_rows: int, num_blocks: int) -> int:
    """Rows per output block that keep about the input's number of blocks."""
    return max(1, -(-num_rows // max(num_blocks, 1)))
