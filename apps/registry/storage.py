"""Where artifact bytes live: `STORAGES["artifacts"]`, local files or S3 (django-storages).

Keys come from ids only (`models/<model id>/versions/<version id>/<uuid4 hex>`): the user's
path never reaches the file system or the bucket (SECURITY AR-01, AR-13, AR-14).

What this module adds on top of Django's storage API, and why:

- Local storage: every open, write and delete resolves the real path first and refuses one
  that leaves the storage root (a symlink planted inside the root, AR-15). Files are created
  with O_EXCL (never overwritten) and mode 0o600 from the first byte, directories 0o700.
- S3: django-storages' `S3File` downloads the whole object into memory before the first
  read (`AWS_S3_MAX_MEMORY_SIZE` defaults to 0, "never spill"), so reads go through
  `get_object`'s streaming body (sequential) or ranged GETs (seekable, for detection).
  Writes go through `Storage.save` (multipart upload that reads the stream in parts) after
  checking the key is absent; `file_overwrite` is False in settings as a second guard.
- Errors of the S3 client surface as `OSError` (`FileNotFoundError` for a missing key), the
  same as local files, so callers and task retries treat both backends alike.
"""

import contextlib
import io
import logging
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage, storages

from apps.registry.models import ModelVersion

CHUNK_SIZE = 1024 * 1024
KEY_PREFIX = "models"

logger = logging.getLogger(__name__)


class StorageKeyTaken(Exception):
    """The id-derived key already holds an object: refuse rather than overwrite it."""


def artifact_storage() -> Storage:
    """The storage backend configured as `STORAGES["artifacts"]`."""
    return storages["artifacts"]


def new_storage_key(version: ModelVersion) -> str:
    """A fresh key for one file of `version`, built from ids and a random part only."""
    return f"{KEY_PREFIX}/{version.model_id}/versions/{version.pk}/{uuid.uuid4().hex}"


def is_local(storage: Storage) -> bool:
    return isinstance(storage, FileSystemStorage)


# --- Local files ----------------------------------------------------------------------------


def local_path(storage: FileSystemStorage, key: str) -> Path:
    """The file for `key`, refusing any path whose real location leaves the storage root."""
    root = Path(os.path.realpath(storage.location))
    candidate = Path(os.path.realpath(storage.path(key)))  # storage.path refuses `..`
    _ensure_inside(root, candidate, key)
    return candidate


def _ensure_inside(root: Path, real: Path, key: str) -> None:
    if real == root or root not in real.parents:
        raise SuspiciousFileOperation(f"Artifact key {key!r} resolves outside the storage root.")


def _ensure_directories(storage: FileSystemStorage, key: str) -> None:
    """Create the key's folders one level at a time, never through a link leaving the root."""
    mode = storage.directory_permissions_mode or 0o700
    Path(storage.location).mkdir(mode=mode, parents=True, exist_ok=True)
    root = Path(os.path.realpath(storage.location))
    current = root
    for part in Path(key).parent.parts:
        current = current / part
        # Checked before mkdir: a planted link must not make us create folders elsewhere.
        _ensure_inside(root, Path(os.path.realpath(current)), key)
        with contextlib.suppress(FileExistsError):
            current.mkdir(mode=mode)


def _local_write(storage: FileSystemStorage, key: str, stream: IO[bytes]) -> None:
    _ensure_directories(storage, key)
    path = local_path(storage, key)  # checked after the folders exist: no planted symlink
    mode = storage.file_permissions_mode or 0o600
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise StorageKeyTaken(key) from None
    with os.fdopen(fd, "wb") as target:
        while chunk := stream.read(CHUNK_SIZE):
            target.write(chunk)


def _local_open(storage: FileSystemStorage, key: str) -> IO[bytes]:
    path = local_path(storage, key)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    return os.fdopen(fd, "rb")


# --- S3 -------------------------------------------------------------------------------------


def _s3_name(storage: Any, key: str) -> str:
    # The storage's own normalisation: prefixes its `location`, refuses `..` escapes.
    return storage._normalize_name(key)


def _s3_client(storage: Any) -> Any:
    return storage.connection.meta.client


def _s3_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _as_os_error(error: Exception, key: str) -> OSError:
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    if code in {"404", "NoSuchKey", "NotFound"}:
        return FileNotFoundError(f"No stored object for key {key}")
    return OSError(f"Storage error for key {key}: {error}")


class _S3Body(io.RawIOBase):
    """A sequential reader over `get_object`'s body, with S3 errors raised as OSError."""

    def __init__(self, storage: Any, key: str) -> None:
        super().__init__()
        self._key = key
        try:
            answer = _s3_client(storage).get_object(
                Bucket=storage.bucket_name, Key=_s3_name(storage, key)
            )
        except _s3_errors() as error:
            raise _as_os_error(error, key) from error
        self._body = answer["Body"]

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._body.read(None if size is None or size < 0 else size)
        except _s3_errors() as error:
            raise _as_os_error(error, self._key) from error

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class _S3Ranged(io.RawIOBase):
    """A seekable reader that fetches each read with a ranged GET (for bounded probes)."""

    def __init__(self, storage: Any, key: str) -> None:
        super().__init__()
        self._storage, self._key, self._position = storage, key, 0
        try:
            head = _s3_client(storage).head_object(
                Bucket=storage.bucket_name, Key=_s3_name(storage, key)
            )
        except _s3_errors() as error:
            raise _as_os_error(error, key) from error
        self._size = int(head["ContentLength"])

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        if end <= self._position:
            return b""
        data = self._get_range(self._position, end - 1)
        self._position += len(data)
        return data

    def _get_range(self, first: int, last: int) -> bytes:
        try:
            answer = _s3_client(self._storage).get_object(
                Bucket=self._storage.bucket_name,
                Key=_s3_name(self._storage, self._key),
                Range=f"bytes={first}-{last}",
            )
            return answer["Body"].read()
        except _s3_errors() as error:
            raise _as_os_error(error, self._key) from error


# --- The operations the services use ---------------------------------------------------------


class _NonSeekable(File):
    """Hands a one-pass stream to `Storage.save` without it trying to rewind or size it."""

    DEFAULT_CHUNK_SIZE = CHUNK_SIZE

    def seekable(self) -> bool:
        return False


def save_stream(key: str, stream: IO[bytes]) -> None:
    """Write everything `stream.read()` yields under `key`; never replaces an existing object.

    Exceptions raised by the stream (too large, client gone) propagate; the caller deletes
    whatever part was written (`delete_quietly`).
    """
    storage = artifact_storage()
    if is_local(storage):
        _local_write(storage, key, stream)
        return
    if storage.exists(key):
        raise StorageKeyTaken(key)
    saved = storage.save(key, _NonSeekable(stream, name=key))
    if saved != key:  # the backend picked another name: never keep a file we cannot find
        storage.delete(saved)
        raise StorageKeyTaken(key)


def open_stream(key: str) -> IO[bytes]:
    """Open the object for one sequential read (constant memory on every backend)."""
    storage = artifact_storage()
    if is_local(storage):
        return _local_open(storage, key)
    return _S3Body(storage, key)


def open_seekable(key: str) -> IO[bytes]:
    """Open the object for a few bounded, seeking reads (framework detection)."""
    storage = artifact_storage()
    if is_local(storage):
        return _local_open(storage, key)
    return _S3Ranged(storage, key)


def object_exists(key: str) -> bool:
    storage = artifact_storage()
    if is_local(storage):
        return local_path(storage, key).is_file()
    try:
        return storage.exists(key)
    except _s3_errors() as error:
        raise _as_os_error(error, key) from error


def delete_quietly(key: str) -> None:
    """Delete the object if it exists; used on every failure path, so it never raises."""
    storage = artifact_storage()
    try:
        if is_local(storage):
            local_path(storage, key).unlink(missing_ok=True)
        else:
            storage.delete(key)
    except Exception:  # cleanup must not hide the error that caused it
        logger.exception("Could not delete stored object %s", key)


def stored_keys(prefix: str = KEY_PREFIX) -> Iterator[tuple[str, datetime]]:
    """Every object under `prefix` (the artifact key prefix unless told) with its
    last-modified time (orphan sweeps)."""
    storage = artifact_storage()
    if is_local(storage):
        yield from _local_keys(storage, prefix)
    else:
        yield from _s3_keys(storage, prefix)


def _local_keys(storage: FileSystemStorage, prefix: str) -> Iterator[tuple[str, datetime]]:
    root = Path(storage.location)
    for path in (root / prefix).rglob("*"):
        if path.is_file() and not path.is_symlink():
            modified = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
            yield path.relative_to(root).as_posix(), modified


def _s3_keys(storage: Any, prefix: str) -> Iterator[tuple[str, datetime]]:
    location = storage.location.strip("/")
    base = f"{location}/" if location else ""
    for item in storage.bucket.objects.filter(Prefix=f"{base}{prefix}/"):
        yield item.key[len(base) :], item.last_modified
