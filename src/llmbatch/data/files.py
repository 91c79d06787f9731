"""Finding, opening and atomically writing files: local paths, folders, globs, http(s) URLs and any
fsspec URL (``s3://``, ``gs://``, ``memory://``, ...) whose filesystem package is installed.

Every filesystem is used through ``pyarrow.fs``; fsspec ones are wrapped with ``FSSpecHandler``.
http(s) URLs are read with the standard library, so no extra package is needed for them.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import fsspec.core
import pyarrow as pa
import pyarrow.fs as pafs

PathLike = str | os.PathLike[str]
Paths = PathLike | Sequence[PathLike]

_GLOB_CHARS = frozenset("*?[")
_HTTP_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file to read; ``path`` is how errors and ``include_paths`` show it."""

    path: str
    filesystem: pafs.FileSystem | None  # None for an http(s) URL
    fs_path: str

    def identity(self) -> list[Any]:
        """The path with its size and modification time (a URL by its address only)."""
        if self.filesystem is None:
            return [self.path]
        info = self.filesystem.get_file_info(self.fs_path)
        return [self.path, info.size, None if info.mtime is None else info.mtime.isoformat()]

    def open_stream(self) -> pa.NativeFile:
        """A sequential stream, decompressed when the name ends in .gz, .bz2, .zst, ..."""
        if self.filesystem is None:
            stream = pa.PythonFile(_open_url(self.path), mode="r")
            codec = _codec_for(self.path)
            return stream if codec is None else pa.CompressedInputStream(stream, codec)
        return self.filesystem.open_input_stream(self.fs_path, compression="detect")

    def open_random_access(self) -> pa.NativeFile | IO[bytes]:
        """A seekable file (Parquet needs one); a URL is first downloaded to a temporary file."""
        if self.filesystem is None:
            local = tempfile.TemporaryFile()
            with _open_url(self.path) as response:
                shutil.copyfileobj(response, local)
            local.seek(0)
            return local
        return self.filesystem.open_input_file(self.fs_path)


def resolve_files(
    paths: Paths,
    filesystem: Any = None,
    file_extensions: Sequence[str] | None = None,
    ignore_missing_paths: bool = False,
) -> list[SourceFile]:
    """Expands paths, folders (recursively) and globs into files, in order.

    A folder gives every file in it, or with ``file_extensions`` (``["csv", "csv.gz"]``, with or
    without the dot, any case) those whose name ends in one of them; names starting with "." or
    "_" (temporary and marker files) are skipped in folders and globs. ``ignore_missing_paths``
    skips paths that do not exist instead of raising.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not paths:
        raise ValueError("No paths given: pass a file, folder, glob or URL")
    suffixes = _suffixes(file_extensions)
    files = []
    for path in paths:
        try:
            files.extend(_resolve(os.fspath(path), filesystem))
        except FileNotFoundError:
            if not ignore_missing_paths:
                raise
    if suffixes is not None:
        files = [file for file in files if file.path.lower().endswith(suffixes)]
    if not files:
        wanted = "" if suffixes is None else f" ending in {', '.join(suffixes)}"
        raise FileNotFoundError(f"No files{wanted} found in {list(map(os.fspath, paths))}")
    return files


def _suffixes(file_extensions: Sequence[str] | None) -> tuple[str, ...] | None:
    if file_extensions is None:
        return None
    if isinstance(file_extensions, str):
        file_extensions = [file_extensions]
    if not all(isinstance(ext, str) and ext.strip(".") for ext in file_extensions):
        raise ValueError(f"file_extensions must be a list of extensions, got {file_extensions!r}")
    return tuple("." + ext.lower().lstrip(".") for ext in file_extensions)


def _resolve(path: str, filesystem: Any) -> list[SourceFile]:
    if filesystem is None and path.startswith(("http://", "https://")):
        return [SourceFile(path, None, path)]
    fs, fs_path, display = _filesystem_for(path, filesystem)
    if _GLOB_CHARS & set(fs_path):
        matches = [
            info.path
            for info in _list_files(fs, _glob_base(fs_path))
            if _matches(info.path, fs_path)
        ]
        if not matches:
            raise FileNotFoundError(f"No files match the pattern {path!r}")
        return [SourceFile(display(match), fs, match) for match in sorted(matches)]
    info = fs.get_file_info(fs_path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"No such file or folder: {path!r}")
    if info.type != pafs.FileType.Directory:
        return [SourceFile(display(fs_path), fs, fs_path)]
    found = sorted(info.path for info in _list_files(fs, fs_path))
    if not found:
        raise FileNotFoundError(f"Folder {path!r} holds no files")
    return [SourceFile(display(file), fs, file) for file in found]


class DiskFullError(OSError):
    """The disk (or quota) of an output folder ran out while writing."""


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
    )


def _filesystem_for(
    path: str, filesystem: Any
) -> tuple[pafs.FileSystem, str, Callable[[str], str]]:
    if isinstance(filesystem, pafs.FileSystem):
        return filesystem, path, str
    if filesystem is not None:
        if not isinstance(filesystem, fsspec.AbstractFileSystem):
            raise TypeError(
                f"filesystem must be a pyarrow.fs.FileSystem or an fsspec filesystem, "
                f"got {type(filesystem).__name__}"
            )
        return _wrap_fsspec(filesystem), filesystem._strip_protocol(path), str
    if "://" in path and not path.startswith("file://"):
        try:
            fsspec_fs, fs_path = fsspec.core.url_to_fs(path)
        except (ImportError, ValueError) as error:
            raise ValueError(f"Cannot open {path!r}: {error}") from error
        return _wrap_fsspec(fsspec_fs), fs_path, fsspec_fs.unstrip_protocol
    local = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
    return pafs.LocalFileSystem(), local, str


def _wrap_fsspec(fsspec_fs: Any) -> pafs.FileSystem:
    return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs))


def _list_files(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    return [
        info
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File and not _is_hidden(info.path[len(folder) :])
    ]


def _is_hidden(relative_path: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative_path.split("/") if part)


def _glob_base(pattern: str) -> str:
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return "/".join(fixed) or "/"


def _matches(path: str, pattern: str) -> bool:
    """Shell-style matching where "*" stays inside one folder and "**" spans any number of them."""
    return _match_parts(path.strip("/").split("/"), pattern.strip("/").split("/"))


def _match_parts(parts: list[str], patterns: list[str]) -> bool:
    if not patterns:
        return not parts
    if patterns[0] == "**":
        return any(_match_parts(parts[skip:], patterns[1:]) for skip in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], patterns[0])
        and _match_parts(parts[1:], patterns[1:])
    )


def _open_url(url: str) -> IO[bytes]:
    try:
        return urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        kind = FileNotFoundError if error.code == 404 else OSError
        raise kind(f"Cannot read {url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise OSError(f"Cannot read {url}: {reason}") from error


def _codec_for(path: str) -> str | None:
    try:
        return pa.Codec.detect(path).name
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class OutputFolder:
    """A folder that receives files whole: each is written under a hidden name, then renamed."""

    filesystem: pafs.FileSystem
    fs_path: str

    @classmethod
    def create(cls, path: PathLike, filesystem: Any = None) -> OutputFolder:
        path = os.fspath(path)
        if filesystem is None and path.startswith(("http://", "https://")):
            raise ValueError(f"Cannot write to the URL {path!r}; give a folder or an fsspec URL")
        fs, fs_path, _ = _filesystem_for(path, filesystem)
        if fs.get_file_info(fs_path).type == pafs.FileType.File:
            raise FileExistsError(f"{path!r} is a file; writers need a folder to put files in")
        try:
            fs.create_dir(fs_path, recursive=True)
        except OSError as error:
            raise PermissionError(
                f"cannot create the output folder {path!r}: {error}; choose a folder you can "
                f"write to"
            ) from error
        return cls(fs, fs_path)

    def check_writable(self) -> None:
        """Writes and deletes a probe file, so an unwritable folder fails before any work."""
        probe = self.path_of(f".llmbatch-probe-{os.getpid()}")
        try:
            with self.filesystem.open_output_stream(probe) as stream:
                stream.write(b"")
            self.filesystem.delete_file(probe)
        except OSError as error:
            raise PermissionError(
                f"cannot write into the output folder {self.fs_path!r}: {error}; "
                f"choose a folder you can write to"
            ) from error

    def path_of(self, name: str) -> str:
        """The filesystem path of ``name`` inside the folder."""
        return f"{self.fs_path.rstrip('/')}/{name}"

    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @contextmanager
    def atomic_file(
        self, name: str, before_rename: Callable[[str], None] | None = None
    ) -> Iterator[pa.NativeFile]:
        """Yields a stream to write; the file appears under ``name`` only once it is complete.

        ``before_rename`` gets the temporary file's path once it is closed (to sync or hash it).
        """
        final = self.path_of(name)
        temporary = self.path_of(f".{name}.tmp")
        stream = self.filesystem.open_output_stream(temporary)
        try:
            yield stream
            stream.close()
            if before_rename is not None:
                before_rename(temporary)
            self.filesystem.move(temporary, final)
        except BaseException:
            # A full disk fails the close too (it flushes); an interrupt can land once the
            # rename is done and the temporary is gone: a failed clean-up must not replace the
            # error that is on its way out.
            with suppress(OSError):
                stream.close()
            with suppress(OSError):
                self.filesystem.delete_file(temporary)
            raise
