"""Where tables live: a local path, or a URL every node of a cluster can reach.

A location is a pyarrow filesystem plus a path in it. Local paths and `file://` use
the local filesystem; `s3://`, `gs://`, `hdfs://` and `abfs://` use pyarrow's own
filesystems (credentials and endpoints from the usual environment variables, e.g.
AWS_ENDPOINT_URL for an S3-compatible store); any other scheme goes through fsspec if
a package for it is installed.

Writes are atomic everywhere: a file is written to a hidden temporary name in the same
directory and published under its real name only once it is whole. On a local disk the
temporary file is fsync'ed, renamed over the target and the directory fsync'ed, so a
crash leaves the old file or the new one. On an object store the temporary key matters
too: an upload stream interrupted by an exception or Ctrl-C is completed by its close,
with whatever was written so far; that partial object lands on the temporary key, which
is deleted, and the real key is never touched. Temporaries of a killed writer are
hidden (readers skip names that start with a dot) and `clean_temporaries` removes them.

Reads are retried: a read that fails (a dropped connection, a throttled request, an NFS
hiccup) is tried `READ_TRIES` times in all, with growing pauses, before it counts as
failed, so that a transient error is not taken for a missing or corrupt file.
"""

from __future__ import annotations

import datetime
import os
import time
import uuid
from dataclasses import dataclass
from typing import Callable, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from tfnas_ray.errors import TfnasError

T = TypeVar("T")

# Object stores: the same place from every node (given credentials there); they have
# no directories to create before writing.
_OBJECT_STORES = tuple(
    getattr(pafs, name) for name in ("S3FileSystem", "GcsFileSystem", "AzureFileSystem") if hasattr(pafs, name)
)


TEMPORARY_SUFFIX = ".tmp"  # `.<name>.<uuid>.tmp`: a write in progress, or one that died
PROBE_PREFIX = ".tfnas-probe-"  # an empty file whose modification time is the storage's clock now
READ_TRIES = 4  # a read is tried this often before its error counts
READ_BACKOFF_S = 0.25  # pause before the 2nd try; doubled before each next one


def _retried(what: Callable[[], "T"]) -> "T":
    """`what()`, tried again after a growing pause when it raises OSError (not
    FileNotFoundError: a missing file is an answer, not a hiccup)."""
    for attempt in range(READ_TRIES):
        try:
            return what()
        except FileNotFoundError:
            raise
        except OSError:
            if attempt == READ_TRIES - 1:
                raise
            time.sleep(READ_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Location:
    """A file or directory: `filesystem` and the `path` inside it; `url` for messages."""

    filesystem: pafs.FileSystem
    path: str
    url: str

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def is_object_store(self) -> bool:
        """S3, GCS or Azure: the same place from every node (given credentials there)."""
        return isinstance(self.filesystem, _OBJECT_STORES)

    @property
    def parent(self) -> "Location":
        return Location(self.filesystem, self.path.rstrip("/").rsplit("/", 1)[0], self.url.rstrip("/").rsplit("/", 1)[0])

    def child(self, name: str) -> "Location":
        return Location(self.filesystem, f"{self.path.rstrip('/')}/{name}", f"{self.url.rstrip('/')}/{name}")

    def file_type(self) -> pafs.FileType:
        """File, Directory or NotFound: one request (a HEAD on an object store)."""
        try:
            return self.filesystem.get_file_info(self.path).type
        except OSError as err:
            raise TfnasError(f"cannot reach {self.url}: {_first_line(err)}") from None

    def exists(self) -> bool:
        return self.file_type() != pafs.FileType.NotFound

    def files(self, suffix: str, *, recursive: bool = False) -> list["Location"]:
        """Files under this directory whose names end with `suffix`, hidden ones left
        out (temporary and quarantined files start with a dot), sorted by path."""
        try:
            infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True))
        except OSError as err:
            raise TfnasError(f"cannot list {self.url}: {_first_line(err)}") from None
        base = self.path.rstrip("/")
        found = []
        for info in infos:
            relative = info.path[len(base) :].lstrip("/") if info.path.startswith(base) else info.base_name
            if info.type == pafs.FileType.File and info.base_name.endswith(suffix) and not any(part.startswith(".") for part in relative.split("/")):
                found.append(Location(self.filesystem, info.path, f"{self.url.rstrip('/')}/{relative}"))
        return sorted(found, key=lambda loc: loc.path)

    def hidden_files(self) -> list["Location"]:
        """The files directly in this directory whose names start with a dot
        (temporaries, quarantined shards, the lease), sorted by path."""
        try:
            infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except OSError as err:
            raise TfnasError(f"cannot list {self.url}: {_first_line(err)}") from None
        return sorted((self.child(i.base_name) for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(".")), key=lambda loc: loc.path)

    def make_dirs(self) -> None:
        try:
            self.filesystem.create_dir(self.path, recursive=True)
        except OSError as err:
            raise TfnasError(f"cannot create {self.url}: {_first_line(err)}") from None

    def read_bytes(self, *, missing_ok: bool = False) -> bytes | None:
        """The file's bytes (retried on a transient error, see `READ_TRIES`); None for a
        missing file with `missing_ok`.

        Raises:
            TfnasError: the file is missing (without `missing_ok`), or every try failed.
        """

        def read() -> bytes:
            with self.filesystem.open_input_stream(self.path) as stream:
                return stream.read()

        try:
            return _retried(read)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise TfnasError(f"{self.url} does not exist") from None
        except OSError as err:
            raise TfnasError(f"cannot read {self.url} ({READ_TRIES} tries): {_first_line(err)}") from None

    def storage_now(self) -> datetime.datetime | None:
        """The storage's own clock now: the modification time of an empty probe file
        written in this directory (and deleted). None where the storage keeps no
        modification times or the probe cannot be written. Comparing it with other
        files' modification times never mixes two hosts' clocks."""
        probe = self.child(f"{PROBE_PREFIX}{uuid.uuid4().hex}")
        try:
            if self.is_local:
                os.close(os.open(probe.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            else:
                with self.filesystem.open_output_stream(probe.path):
                    pass
            return self.filesystem.get_file_info(probe.path).mtime
        except OSError:
            return None
        finally:
            self.discard(probe.path)

    def write_atomic(self, write: Callable[[pa.NativeFile], None]) -> None:
        """Call `write(stream)` so that readers see either the old file or the whole
        new one, whatever stops the write (an exception, Ctrl-C, a killed process)."""
        temporary = f"{self.parent.path}/.{self.name}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}"
        try:
            if self.is_local:
                self._write_local(temporary, write)
            else:
                if not self.is_object_store:
                    self.parent.make_dirs()
                with self.filesystem.open_output_stream(temporary) as stream:
                    write(stream)
                # On S3/GCS a server-side copy and a delete; whole or not at all.
                try:
                    self.filesystem.move(temporary, self.path)
                except pa.ArrowNotImplementedError:  # Azure without a hierarchical namespace
                    self.filesystem.copy_file(temporary, self.path)
        except OSError as err:
            raise TfnasError(f"cannot write {self.url}: {_first_line(err)}") from None
        finally:
            self.discard(temporary)

    def _write_local(self, temporary: str, write: Callable[[pa.NativeFile], None]) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        with open(temporary, "xb") as handle:
            with pa.PythonFile(handle, mode="w") as stream:
                write(stream)
                handle.flush()
                os.fsync(handle.fileno())  # the bytes are on disk before the name is
        os.replace(temporary, self.path)
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # … and the rename too
        finally:
            os.close(descriptor)

    def discard(self, path: str) -> None:
        """Delete `path` if it exists (a temporary left by a failed write)."""
        try:
            if self.filesystem.get_file_info(path).type != pafs.FileType.NotFound:
                self.filesystem.delete_file(path)
        except OSError:
            pass  # best effort while another error propagates; `clean_temporaries` retries

    def clean_temporaries(self, *, older_than: float = 0.0) -> int:
        """Delete the temporaries that killed writers left in this directory (call it
        only while holding the directory's lease: a live writer's temporary looks the
        same). With `older_than` > 0, only those the storage last modified more than that
        many seconds ago (by its own clock, `storage_now`): after taking over the lease
        of a run that may still be alive, its writes in progress are left alone.
        Returns how many were deleted."""
        try:
            infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except OSError as err:
            raise TfnasError(f"cannot list {self.url}: {_first_line(err)}") from None
        stale = [i for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(".") and i.base_name.endswith(TEMPORARY_SUFFIX)]
        if older_than > 0 and stale:
            now = self.storage_now()
            # Without the storage's clock no age is known: keep them all (they are hidden).
            stale = [i for i in stale if now is not None and i.mtime is not None and (now - i.mtime).total_seconds() > older_than]
        stale = [i.path for i in stale]
        for path in stale:
            self.discard(path)
        return len(stale)

    def write_bytes(self, data: bytes) -> None:
        self.write_atomic(lambda stream: stream.write(data))

    def move_aside(self, suffix: str) -> "Location":
        """Rename this file to a hidden name in the same directory (readers skip it)."""
        return self.move_aside_as(f".{self.name}.{suffix}")

    def move_aside_as(self, name: str) -> "Location":
        """Rename this file to `name` (hidden: it starts with a dot) in the same directory."""
        hidden = self.parent.child(name)
        try:
            self.filesystem.move(self.path, hidden.path)
        except OSError as err:
            raise TfnasError(f"cannot move {self.url} aside: {_first_line(err)}") from None
        return hidden

    def __str__(self) -> str:
        return self.url


def is_url(where: str | os.PathLike) -> bool:
    return isinstance(where, str) and "://" in where


def locate(where: str | os.PathLike | Location) -> Location:
    """The location a path or URL names.

    Raises:
        TfnasError: a URL scheme that neither pyarrow nor an installed fsspec package knows.
    """
    if isinstance(where, Location):
        return where
    if not is_url(where):
        path = os.path.abspath(os.fspath(where))
        return Location(pafs.LocalFileSystem(), path, os.fspath(where))
    url = str(where)
    try:
        filesystem, path = pafs.FileSystem.from_uri(url)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as arrow_error:
        filesystem, path = _fsspec_location(url, arrow_error)
    except OSError as err:
        raise TfnasError(f"cannot open {url}: {_first_line(err)}") from None
    return Location(filesystem, path.rstrip("/") or path, url)


def _fsspec_location(url: str, arrow_error: Exception) -> tuple[pafs.FileSystem, str]:
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    scheme = url.split("://", 1)[0]
    try:
        filesystem, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise TfnasError(
            f"location {url!r}: scheme {scheme!r} is not supported ({_first_line(arrow_error)}; fsspec: "
            f"{_first_line(err)}); use a local path, file://, s3://, gs://, hdfs://, or install the fsspec package for {scheme}"
        ) from None
    return PyFileSystem(FSSpecHandler(filesystem)), path


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
