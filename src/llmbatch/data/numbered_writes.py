"""Resumable writes whose processing gives rows back in any order (a processor over a Ray
Dataset): each output row carries its input row number in ``ROW_NUMBER``, and the driver
commits what comes back as shards of consecutive rows, with the manifest and shards of
``resume``, so either kind of write resumes the other's output."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa

from llmbatch.data.files import OutputFolder, PathLike, is_disk_full
from llmbatch.data.resume import (
    ShardWriter,
    WriteReport,
    claim,
    disk_full_error,
    gaps,
    rewrite_shard,
)

# Added to each input row before the processing, read and dropped when writing.
ROW_NUMBER = "__llmbatch_row"


def write_numbered(
    total_rows: int,
    fingerprint: str,
    process_rows: Callable[[list[tuple[int, int]]], Iterable[pa.Table]],
    path: PathLike,
    file_format: str,
    *,
    filesystem: Any = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    max_rows_per_file: int | None = None,
    options: dict[str, Any] | None = None,
) -> WriteReport:
    """A resumable write whose processing may give back its rows in any order: each output
    block carries each row's input number in ``ROW_NUMBER``. ``process_rows(runs)`` processes
    the input rows of ``runs`` (``[start, stop)`` pairs); ``fingerprint`` names the job. Shards
    and manifest are those of `write_resumable`, so either can resume the other's output."""
    options = options or {}
    if retry_failed and file_format == "csv":
        raise ValueError(
            "retry_failed needs Parquet or JSON output: CSV cannot be read back unchanged"
        )
    folder = OutputFolder.create(path, filesystem)
    folder.check_writable()
    try:
        manifest = claim(folder, fingerprint, file_format, overwrite)
        before = manifest.committed_rows()
        writer = ShardWriter(folder, manifest, file_format, options)
        written = retried = 0
        if not manifest.complete:
            runs = gaps(manifest.done_ranges(), 0, total_rows)
            for table in process_rows(runs):
                written += _commit_numbered(writer, table, max_rows_per_file)
            if manifest.committed_rows() != total_rows:
                raise RuntimeError(
                    f"the processing gave back {manifest.committed_rows()} of {total_rows} rows"
                )
            manifest.complete = True
            manifest.total_rows = total_rows
            manifest.save(folder)
        if retry_failed and any(shard.errors for shard in manifest.shards):
            retried = _retry_numbered(writer, process_rows)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(error, path, folder) from error
        raise
    return WriteReport(
        path=str(path),
        total_rows=total_rows,
        rows_written=written,
        rows_already_committed=before,
        rows_retried=retried,
        error_rows=sum(len(shard.errors) for shard in manifest.shards),
    )


def _numbered_rows(table: pa.Table) -> tuple[pa.Table, list[int]]:
    if ROW_NUMBER not in table.column_names:
        raise RuntimeError(f"the processing dropped the {ROW_NUMBER!r} column of input rows")
    numbers = table.column(ROW_NUMBER).to_pylist()
    order = sorted(range(len(numbers)), key=numbers.__getitem__)
    table = table.drop_columns([ROW_NUMBER])
    if order != list(range(len(numbers))):
        table = table.take(order)
        numbers = [numbers[i] for i in order]
    return table, numbers


def _commit_numbered(writer: ShardWriter, table: pa.Table, max_rows: int | None) -> int:
    """Commits a block of numbered rows as shards of consecutive input rows."""
    table, numbers = _numbered_rows(table)
    start = 0
    for index in range(1, len(numbers) + 1):
        if index < len(numbers) and numbers[index] == numbers[index - 1] + 1:
            if max_rows is None or index - start < max_rows:
                continue
        writer.commit(table.slice(start, index - start), numbers[start], numbers[index - 1] + 1)
        start = index
    return len(numbers)


def _retry_numbered(
    writer: ShardWriter, process_rows: Callable[[list[tuple[int, int]]], Iterable[pa.Table]]
) -> int:
    shards_by_row = {row: shard for shard in writer.manifest.shards for row in shard.errors}
    replacements: dict[str, dict[int, pa.Table]] = {}
    for table in process_rows([(row, row + 1) for row in sorted(shards_by_row)]):
        table, numbers = _numbered_rows(table)
        for offset, row in enumerate(numbers):
            shard = shards_by_row[row]
            replacements.setdefault(shard.name, {})[row - shard.start] = table.slice(offset, 1)
    for shard in list(writer.manifest.shards):
        if shard.name in replacements:
            rewrite_shard(writer, shard, replacements[shard.name])
    return len(shards_by_row)
