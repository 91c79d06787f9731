"""Resumable writes: commit results in shards, and on a rerun process only the missing rows.

Rows are numbered by their position in the job's source. A rerun skips the committed rows
before they reach the processing (so the model never sees them again) and streams the others
through it; each output row goes back to its input number, and shards never span a gap.
See ``checkpoint`` for the manifest and how a torn write is detected.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llmbatch.data.blocks import Stream, concat
from llmbatch.data.checkpoint import (
    MANIFEST_NAME,
    Manifest,
    OutputConflictError,
    ResumableJob,
    Shard,
    commit_shard_file,
    crash_point,
    delete_files,
    shard_name,
    stray_files,
)
from llmbatch.data.files import DiskFullError, OutputFolder, PathLike, is_disk_full
from llmbatch.data.identity import digest
from llmbatch.data.writers import write_table

logger = logging.getLogger("llmbatch")

Wanted = Callable[[int, int], list[tuple[int, int]]]


@dataclass(slots=True, frozen=True)
class WriteReport:
    """What one resumable write did."""

    path: str
    total_rows: int
    rows_written: int  # committed by this call
    rows_already_committed: int  # found committed when it started
    rows_retried: int
    error_rows: int  # in the whole output, after this call


def write_resumable(
    job: ResumableJob,
    path: PathLike,
    file_format: str,
    *,
    filesystem: Any = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    min_rows_per_file: int | None = None,
    max_rows_per_file: int | None = None,
    options: dict[str, Any] | None = None,
) -> WriteReport:
    """Writes ``job``'s output into the folder ``path``, resuming a previous write of the same
    job; ``retry_failed`` then re-runs the rows whose ``error`` is set."""
    options = options or {}
    if retry_failed and file_format == "csv":
        raise ValueError(
            "retry_failed needs Parquet or JSON output: CSV cannot be read back unchanged"
        )
    folder = OutputFolder.create(path, filesystem)
    folder.check_writable()
    fingerprint = digest(job.source_fingerprint(), job.identity(), file_format, repr(options))
    try:
        manifest = claim(folder, fingerprint, file_format, overwrite)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(error, path, folder) from error
        raise
    before = manifest.committed_rows()
    crash_point("job_start")
    writer = ShardWriter(folder, manifest, file_format, options)
    written = retried = 0
    work = not manifest.complete or (retry_failed and any(s.errors for s in manifest.shards))
    try:
        with job.watch(folder, fingerprint) if work else nullcontext():
            if not manifest.complete:
                job.prepare()
                written = _write_missing(job, writer, min_rows_per_file, max_rows_per_file)
            if retry_failed and any(shard.errors for shard in manifest.shards):
                job.prepare()
                retried = _retry_errors(job, writer)
    except KeyboardInterrupt:
        logger.warning(
            "interrupted: %d of the rows are committed in %s; run the same write again to "
            "finish the others",
            manifest.committed_rows(),
            path,
        )
        raise
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(error, path, folder) from error
        raise
    return WriteReport(
        path=str(path),
        total_rows=manifest.total_rows or 0,
        rows_written=written,
        rows_already_committed=before,
        rows_retried=retried,
        error_rows=sum(len(shard.errors) for shard in manifest.shards),
    )


def disk_full_error(error: OSError, path: PathLike, folder: OutputFolder) -> DiskFullError:
    """The error of a write that filled its disk, with what the manifest on disk holds."""
    manifest = Manifest.load(folder)
    shards = [] if manifest is None else manifest.shards
    rows = sum(shard.stop - shard.start for shard in shards)
    return DiskFullError(
        error.errno,
        f"the disk holding {path} is full ({os.strerror(error.errno)}): the {rows} rows "
        f"committed in {len(shards)} file(s) are intact and the unfinished file was removed; "
        f"free some space (or write to another folder) and run the same write again: it "
        f"finishes the other rows",
    )


def gaps(done: list[tuple[int, int]], low: int, high: int) -> list[tuple[int, int]]:
    """The runs of ``[low, high)`` that ``done`` (sorted ``[start, stop)`` ranges) leaves."""
    runs, cursor = [], low
    for start, stop in done:
        if stop <= cursor or start >= high:
            continue
        if start > cursor:
            runs.append((cursor, min(start, high)))
        cursor = max(cursor, stop)
    if cursor < high:
        runs.append((cursor, high))
    return runs


def rows_to_process(path: PathLike, total_rows: int | None, filesystem: Any = None) -> int | None:
    """How many rows a resumable write into ``path`` is about to process, once it has claimed
    the folder: ``total_rows`` less those committed, or the error rows of a complete output
    (which only a retry processes). None when ``total_rows`` is unknown."""
    manifest = Manifest.load(OutputFolder.create(path, filesystem))
    if manifest is None:
        return total_rows
    if manifest.complete:
        return sum(len(shard.errors) for shard in manifest.shards)
    if total_rows is None:
        return None
    return max(total_rows - manifest.committed_rows(), 0)


def committed_files(path: PathLike, filesystem: Any = None) -> list[str] | None:
    """The files of a finished resumable write in ``path``, in input order (their paths on the
    folder's filesystem); None while the write is not finished."""
    folder = OutputFolder.create(path, filesystem)
    manifest = Manifest.load(folder)
    if manifest is None or not manifest.complete:
        return None
    return [folder.path_of(shard.name) for shard in sorted(manifest.shards, key=lambda s: s.start)]


def clear_for_plain_write(
    path: PathLike, file_format: str, filesystem: Any, overwrite: bool
) -> None:
    """A write without resume never mixes into a resumable write's folder: that is an error,
    or with ``overwrite`` the folder's files of this format and its manifest are deleted."""
    folder = OutputFolder.create(path, filesystem)
    folder.check_writable()
    manifest = Manifest.load(folder)
    if manifest is not None and not overwrite:
        raise OutputConflictError(
            f"{folder.fs_path} holds the output of a resumable job; write with overwrite=True "
            f"to replace it, or choose another folder"
        )
    if overwrite:
        delete_files(folder, stray_files(folder, None, file_format))
        if manifest is not None:
            delete_files(folder, [MANIFEST_NAME])


def claim(folder: OutputFolder, fingerprint: str, file_format: str, overwrite: bool) -> Manifest:
    """The manifest to continue: this job's, or a new one once other outputs are cleared."""
    manifest = Manifest.load(folder)
    if manifest is not None and (manifest.job != fingerprint or manifest.format != file_format):
        # A job that stopped before committing a row (e.g. its model failed to load) leaves
        # nothing to protect.
        if not manifest.shards:
            manifest = None
        elif not overwrite:
            raise OutputConflictError(
                f"{folder.fs_path} holds the output of a different job (its input, model, "
                f"settings, code or format differ from this one); write with overwrite=True "
                f"(--overwrite on the command line) to replace it, or choose another folder"
            )
    if overwrite and manifest is not None:
        delete_files(folder, [shard.name for shard in manifest.shards])
        manifest = None
    strays = stray_files(folder, manifest, file_format)
    foreign = [name for name in strays if not name.startswith(".")]
    if manifest is None and foreign and not overwrite:
        raise OutputConflictError(
            f"{folder.fs_path} already holds {len(foreign)} .{file_format} file(s) from another "
            f"write (e.g. {foreign[0]}); choose an empty folder or write with overwrite=True"
        )
    manifest = manifest or Manifest(fingerprint, file_format)
    damaged = manifest.drop_damaged(folder)
    if damaged:
        logger.warning("redoing %d output file(s) that changed since written", len(damaged))
    delete_files(folder, stray_files(folder, manifest, file_format))
    manifest.save(folder)
    return manifest


class ShardWriter:
    """Commits shards: the file first, then the manifest entry that lists it."""

    def __init__(
        self, folder: OutputFolder, manifest: Manifest, file_format: str, options: dict
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        self.format = file_format
        self._options = options

    def commit(self, table: pa.Table, start: int, stop: int, name: str | None = None) -> None:
        name = name or shard_name(start, self.format)
        size, sha = commit_shard_file(
            self.folder, name, lambda stream: write_table(stream, table, self.format, self._options)
        )
        errors = [start + i for i, error in enumerate(_error_column(table)) if error is not None]
        new = all(shard.name != name for shard in self.manifest.shards)
        self.manifest.add(Shard(name, start, stop, size, sha, errors))
        try:
            self.manifest.save(self.folder)
        except OSError:
            if new:
                # Not listed, so not committed: leave the folder as the manifest says it is.
                self.manifest.shards = [s for s in self.manifest.shards if s.name != name]
                with suppress(OSError):
                    self.folder.filesystem.delete_file(self.folder.path_of(name))
            raise

    def read(self, shard: Shard) -> pa.Table:
        with self.folder.filesystem.open_input_file(self.folder.path_of(shard.name)) as file:
            if self.format == "parquet":
                return pq.read_table(file)
            return pa.table({"line": file.read().decode().splitlines(keepends=True)})


class _RowTracker:
    """The input row numbers of the rows handed to the processing, in order."""

    def __init__(self) -> None:
        self.runs: deque[list[int]] = deque()
        self.total: int | None = None
        self.empty_schema: pa.Schema | None = None

    def select(self, blocks: Iterable[pa.Table], wanted: Wanted) -> Stream:
        position = 0
        for block in blocks:
            crash_point("input_block")
            if position == 0 and block.num_rows == 0 and self.empty_schema is None:
                self.empty_schema = block.schema
            for start, stop in wanted(position, position + block.num_rows):
                self.runs.append([start, stop])
                yield block.slice(start - position, stop - start)
            position += block.num_rows
        self.total = position

    def take(self, count: int) -> Iterator[tuple[int, int]]:
        """The input rows of the next ``count`` output rows, as contiguous runs."""
        while count:
            if not self.runs:
                raise RuntimeError("the processing returned more rows than it was given")
            run = self.runs[0]
            step = min(count, run[1] - run[0])
            yield run[0], run[0] + step
            run[0] += step
            count -= step
            if run[0] == run[1]:
                self.runs.popleft()


def _processed(job: ResumableJob, wanted: Wanted, tracker: _RowTracker) -> Stream:
    for table in job.process(tracker.select(job.source(), wanted)):
        crash_point("output_block")
        yield table
    if tracker.runs:
        raise RuntimeError("the processing returned fewer rows than it was given")


def _write_missing(
    job: ResumableJob, writer: ShardWriter, min_rows: int | None, max_rows: int | None
) -> int:
    manifest = writer.manifest
    done = manifest.done_ranges()

    def missing(low: int, high: int) -> list[tuple[int, int]]:
        return gaps(done, low, high)

    tracker = _RowTracker()
    pieces: list[pa.Table] = []
    span = [0, 0]
    written = 0

    def flush() -> None:
        nonlocal written
        if pieces:
            writer.commit(concat(pieces), span[0], span[1])
            written += span[1] - span[0]
            pieces.clear()

    for table in _processed(job, missing, tracker):
        offset = 0
        for start, stop in tracker.take(table.num_rows):
            while start < stop:
                if pieces and span[1] != start:
                    flush()
                if not pieces:
                    span[:] = [start, start]
                take = stop - start
                if max_rows is not None:
                    take = min(take, max_rows - (span[1] - span[0]))
                pieces.append(table.slice(offset, take))
                span[1] += take
                offset += take
                start += take
                if max_rows is not None and span[1] - span[0] >= max_rows:
                    flush()
        if span[1] - span[0] >= (min_rows or 1):
            flush()
    flush()
    if tracker.total == 0 and not manifest.shards and tracker.empty_schema is not None:
        writer.commit(tracker.empty_schema.empty_table(), 0, 0)
    manifest.complete = True
    manifest.total_rows = tracker.total
    manifest.save(writer.folder)
    return written


def _retry_errors(job: ResumableJob, writer: ShardWriter) -> int:
    shards_by_row = {row: shard for shard in writer.manifest.shards for row in shard.errors}
    failed = sorted(shards_by_row)

    def wanted(low: int, high: int) -> list[tuple[int, int]]:
        return [(row, row + 1) for row in failed if low <= row < high]

    tracker = _RowTracker()
    current: Shard | None = None
    replacements: dict[int, pa.Table] = {}
    for table in _processed(job, wanted, tracker):
        offset = 0
        for start, stop in tracker.take(table.num_rows):
            for row in range(start, stop):
                shard = shards_by_row[row]
                if current is not None and shard is not current:
                    rewrite_shard(writer, current, replacements)
                    replacements = {}
                current = shard
                replacements[row - shard.start] = table.slice(offset, 1)
                offset += 1
    if current is not None:
        rewrite_shard(writer, current, replacements)
    return len(failed)


def rewrite_shard(writer: ShardWriter, shard: Shard, replacements: dict[int, pa.Table]) -> None:
    old = writer.read(shard)
    pieces, cursor = [], 0
    for position in sorted(replacements):
        pieces.append(old.slice(cursor, position - cursor))
        pieces.append(_as_stored(replacements[position], writer.format))
        cursor = position + 1
    pieces.append(old.slice(cursor))
    merged = concat([piece for piece in pieces if piece.num_rows] or [old])
    if writer.format == "parquet":
        writer.commit(merged, shard.start, shard.stop, shard.name)
        return
    lines = merged.column("line").to_pylist()
    text = "".join(lines).encode()
    size, sha = commit_shard_file(writer.folder, shard.name, lambda stream: stream.write(text))
    errors = [
        shard.start + i for i, line in enumerate(lines) if json.loads(line).get("error") is not None
    ]
    writer.manifest.add(Shard(shard.name, shard.start, shard.stop, size, sha, errors))
    writer.manifest.save(writer.folder)


def _as_stored(row: pa.Table, file_format: str) -> pa.Table:
    if file_format == "parquet":
        return row
    buffer = io.BytesIO()
    write_table(pa.PythonFile(buffer, mode="w"), row, "json", {})
    return pa.table({"line": [buffer.getvalue().decode()]})


def _error_column(table: pa.Table) -> list[Any]:
    if "error" not in table.column_names:
        return [None] * table.num_rows
    return table.column("error").to_pylist()
