"""The manifest of a resumable write: which input rows each committed output file holds.

A resumable write (the output of an LLM processor written with ``write_parquet``, ``write_csv``
or ``write_json``) commits its results in shards, files named by the first input row they hold
(``000000000000.parquet``, ...) so that sorting the names gives the input order. After each
shard is renamed into place, ``_llmbatch_manifest.json`` is rewritten (temporary file, fsync,
rename) to list it with its input rows, size and SHA-256. A shard the manifest does not list, or
whose size or hash disagree, is from an interrupted write: it is deleted and its rows redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs

from llmbatch.data.blocks import Stream
from llmbatch.data.files import OutputFolder

MANIFEST_NAME = "_llmbatch_manifest.json"
# Names of llmbatch's own files in an output folder (the manifest, the run's timeline and
# report): never output shards, never strays.
OWN_FILE_PREFIX = "_llmbatch_"
MANIFEST_VERSION = 1
CRASH_ENV = "LLMBATCH_TEST_CRASH_AT"
_crash_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """A named moment of a resumable write, for crash tests: with ``LLMBATCH_TEST_CRASH_AT`` set
    to ``name:N``, the process kills itself (SIGKILL) the Nth time it reaches ``name``."""
    target = os.environ.get(CRASH_ENV)
    if not target:
        return
    point, _, count = target.partition(":")
    if point != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


WriteWatch = Callable[[OutputFolder, str], AbstractContextManager[object]]


def unwatched(folder: OutputFolder, job: str) -> AbstractContextManager[object]:
    return nullcontext()


class OutputConflictError(FileExistsError):
    """The output folder holds the results of another job."""


@dataclass(frozen=True, slots=True)
class ResumableJob:
    """What a resumable write needs from the processing that feeds it, as functions over
    streams of blocks.

    ``source()`` streams the job's input from its first row; ``process(stream)`` applies the
    processing to a stream holding any subset of those rows, in order, and yields one output
    row per input row. ``source_fingerprint`` names the input (file names, sizes and times, or
    in-memory content, and the stages before the processing); ``identity`` everything else that
    decides the output (model, settings, code); ``prepare`` loads what the processing needs
    (the model), so that a missing or broken model fails before any row is read;
    ``watch(folder, job_fingerprint)`` is entered around a write's processing, once the folder
    is claimed (to keep a record of the run next to the output).
    """

    source: Callable[[], Stream]
    process: Callable[[Stream], Stream]
    source_fingerprint: Callable[[], str]
    identity: Callable[[], str]
    prepare: Callable[[], None] = lambda: None
    watch: WriteWatch = unwatched


@dataclass(slots=True)
class Shard:
    """One committed output file and the input rows ``[start, stop)`` it holds."""

    name: str
    start: int
    stop: int
    size: int
    sha256: str
    errors: list[int] = field(default_factory=list)  # input rows whose ``error`` is set


@dataclass(slots=True)
class Manifest:
    """The committed state of a resumable write."""

    job: str
    format: str
    shards: list[Shard] = field(default_factory=list)
    complete: bool = False
    total_rows: int | None = None

    @classmethod
    def load(cls, folder: OutputFolder) -> Manifest | None:
        path = folder.path_of(MANIFEST_NAME)
        if folder.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with folder.filesystem.open_input_stream(path) as stream:
            text = stream.read().decode()
        try:
            data = json.loads(text)
            if data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            shards = [Shard(**shard) for shard in data["shards"]]
            return cls(data["job"], data["format"], shards, data["complete"], data["total_rows"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path} is not a readable llmbatch manifest ({error}); delete the folder or "
                f"write with overwrite=True"
            ) from error

    def save(self, folder: OutputFolder) -> None:
        """Replaces the manifest atomically and durably."""
        data = {"version": MANIFEST_VERSION, **asdict(self)}
        crash_point("manifest_before_write")
        with folder.atomic_file(MANIFEST_NAME, before_rename=_synced(folder)) as stream:
            stream.write(json.dumps(data, indent=1).encode())
        sync_folder(folder)
        crash_point("manifest_renamed")

    def done_ranges(self) -> list[tuple[int, int]]:
        return sorted((shard.start, shard.stop) for shard in self.shards)

    def committed_rows(self) -> int:
        return sum(shard.stop - shard.start for shard in self.shards)

    def add(self, shard: Shard) -> None:
        self.shards = [s for s in self.shards if s.name != shard.name] + [shard]
        self.shards.sort(key=lambda s: s.start)

    def drop_damaged(self, folder: OutputFolder) -> list[str]:
        """Forgets shards that are missing or whose size or hash changed; returns their names."""
        damaged = [shard.name for shard in self.shards if not _intact(folder, shard)]
        self.shards = [shard for shard in self.shards if shard.name not in damaged]
        if damaged:
            self.complete = False
        return damaged


def shard_name(start: int, file_format: str) -> str:
    return f"{start:012d}.{file_format}"


def commit_shard_file(
    folder: OutputFolder, name: str, write: Callable[[Any], None]
) -> tuple[int, str]:
    """Writes a shard through ``write(stream)`` durably and atomically; returns size and hash."""
    measured: dict[str, Any] = {}

    def before_rename(temporary: str) -> None:
        _synced(folder)(temporary)
        measured["size"], measured["sha256"] = _measure(folder, temporary)
        crash_point("shard_before_rename")

    with folder.atomic_file(name, before_rename=before_rename) as stream:
        write(stream)
    crash_point("shard_renamed")
    return measured["size"], measured["sha256"]


def stray_files(folder: OutputFolder, manifest: Manifest | None, extension: str) -> list[str]:
    """Files of the folder that no manifest entry accounts for: temporary files of a write,
    shards renamed but not yet listed, and output files of other writes."""
    listed = {shard.name for shard in manifest.shards} if manifest else set()
    selector = pafs.FileSelector(folder.fs_path, allow_not_found=True)
    strays = []
    for info in folder.filesystem.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        name = info.base_name
        if name.startswith(OWN_FILE_PREFIX):
            continue
        ours_temporary = name.startswith(".") and name.endswith(".tmp")
        if ours_temporary or (name.endswith(f".{extension}") and name not in listed):
            strays.append(name)
    return sorted(strays)


def delete_files(folder: OutputFolder, names: list[str]) -> None:
    for name in names:
        folder.filesystem.delete_file(folder.path_of(name))


def sync_folder(folder: OutputFolder) -> None:
    """Makes renames inside a local folder durable."""
    if not folder.is_local() or not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(folder.fs_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _synced(folder: OutputFolder) -> Callable[[str], None]:
    def sync(path: str) -> None:
        if folder.is_local():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)

    return sync


def _measure(folder: OutputFolder, path: str) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    with folder.filesystem.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def _intact(folder: OutputFolder, shard: Shard) -> bool:
    path = folder.path_of(shard.name)
    info = folder.filesystem.get_file_info(path)
    if info.type != pafs.FileType.File or info.size != shard.size:
        return False
    return _measure(folder, path) == (shard.size, shard.sha256)
