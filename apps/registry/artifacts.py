"""Artifact services: upload, seal, verify, verified reads, scrub and sweeps.

Bytes are streamed, never held: an upload is read in 1 MiB chunks while it is hashed,
counted and written to `STORAGES["artifacts"]` under an id-derived key (apps.registry.storage).
Nothing a client sends is ever loaded, unpickled or imported (SECURITY principle 5).

Failure leaves nothing behind (principle 9, WF-12): the object is written first, then its row
and audit event are created in one transaction; any exception on the way — a client that went
away, the size limit, a duplicate path, a sealed version, a failing audit write — deletes the
object before re-raising. An object orphaned by a crash or by a caller's own transaction rolling
back later is removed by `sweep_orphan_objects` once it is older than a grace period.

Verification (`version_verify`, run by the worker) is split so that hashing gigabytes never
holds a transaction or a row lock:

1. claim — a short transaction takes the version row with `select_for_update(skip_locked=True)`,
   checks it is still `verifying`, and takes a PostgreSQL *session* advisory lock on the version
   id. That lock is the lease: it outlives the transaction, dies with the worker's connection
   (SIGKILL, lost host), so a redelivered task can take over, and a duplicate delivery that
   finds it held returns at once (WF-10, WF-11, WF-15).
2. hash — outside any transaction, every stored file is re-read and hashed; progress is
   written every 64 MiB in its own one-row UPDATE ("verifying — 1.2 of 2.8 GB").
3. finalize — one transaction: `UPDATE … SET status=… WHERE status='verifying'`; only the
   caller whose UPDATE matched writes the per-file results and the audit events, so effects
   happen exactly once even if two hashes ever ran.
"""

import dataclasses
import hashlib
import io
import logging
import unicodedata
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Model, Sum
from django.utils import timezone

from apps.audit.services import audit_record
from apps.registry import detection
from apps.registry.downloads import corruption_reason, version_flag_corrupt
from apps.registry.models import Artifact, ModelVersion, VersionStatus
from apps.registry.paths import (
    InvalidArtifactPath,
    InvalidChecksum,
    normalize_artifact_path,
    sha256_hex_claim,
)
from apps.registry.storage import (
    CHUNK_SIZE,
    KEY_PREFIX,
    delete_quietly,
    new_storage_key,
    open_seekable,
    open_stream,
    save_stream,
    stored_keys,
)
from registry_site.api_errors import ApiError, Conflict

logger = logging.getLogger(__name__)

DEFAULT_MAX_ARTIFACT_BYTES = 50 * 1024**3
PROGRESS_EVERY_BYTES = 64 * 1024 * 1024
SWEEP_AFTER_MINUTES = 10
ORPHAN_GRACE = timedelta(hours=24)
SCRUB_MAX_FILES = 200
SCRUB_MAX_BYTES = 100 * 1024**3
# Namespace of the session advisory locks that lease a version to one hashing worker
# (the audit chain uses the single-bigint key space; these use the (int, int) space).
VERIFY_LOCK_NAMESPACE = 0x52564552  # "RVER"


def max_artifact_bytes() -> int:
    """The per-file size limit (`REGENT_MAX_ARTIFACT_BYTES`, default 50 GiB)."""
    return getattr(settings, "REGENT_MAX_ARTIFACT_BYTES", DEFAULT_MAX_ARTIFACT_BYTES)


# --- Errors ---------------------------------------------------------------------------------


class VersionSealed(Conflict):
    def __init__(self, version: ModelVersion) -> None:
        super().__init__("version is sealed", details={"status": version.status})


class ArtifactTooLarge(ApiError):
    status = 413
    code = "too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The file is larger than the limit of {limit} bytes.", details={"limit": limit}
        )


class UploadIncomplete(ApiError):
    """The body ended early or broke off: the client went away (400)."""

    def __init__(self, received: int, expected: int | None) -> None:
        of = f" of {expected}" if expected is not None else ""
        super().__init__(
            f"The upload ended after {received}{of} bytes.",
            details={"received": received, "expected": expected},
        )


# --- Upload ---------------------------------------------------------------------------------


def artifact_path_key(path: str) -> str:
    """casefold(NFC(path)): files that would collide on a case-insensitive disk share it."""
    return unicodedata.normalize("NFC", path).casefold()


class MeteredBody(io.RawIOBase):
    """Reads an upload body: hashes, counts, keeps the head, enforces limit and length."""

    def __init__(self, stream: Any, *, limit: int, expected: int | None) -> None:
        super().__init__()
        self._stream, self._limit, self._expected = stream, limit, expected
        self.digest = hashlib.sha256()
        self.size = 0
        self.head = bytearray()

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            data = self._stream.read(CHUNK_SIZE if size is None or size < 0 else size)
        except OSError as error:  # the connection broke (reset, server read timeout)
            raise UploadIncomplete(self.size, self._expected) from error
        if not data:
            if self._expected is not None and self.size != self._expected:
                raise UploadIncomplete(self.size, self._expected)
            return b""
        self.size += len(data)
        if self.size > self._limit:
            raise ArtifactTooLarge(self._limit)
        self.digest.update(data)
        if len(self.head) < detection.HEAD_BYTES:
            self.head += data[: detection.HEAD_BYTES - len(self.head)]
        return data


def artifact_upload(
    *,
    actor: Any,
    version: ModelVersion,
    path: str,
    stream: IO[bytes],
    content_length: int | None = None,
    claimed_sha256: str | None = None,
) -> Artifact:
    """Stream one file into a `pending` version and record it; nothing stays on failure.

    Raises ApiError 422 (bad path or claim), 409 (sealed version, path taken), 413 (over
    the size limit, declared or actual), 400 (body shorter than its Content-Length).
    """
    path = _checked_path(path)
    claim = _checked_claim(claimed_sha256)
    limit = max_artifact_bytes()
    if content_length is not None and content_length > limit:
        raise ArtifactTooLarge(limit)
    _ensure_accepting(version, path)  # fail before reading a byte when we already know
    key = new_storage_key(version)
    body = MeteredBody(stream, limit=limit, expected=content_length)
    try:
        save_stream(key, body)
        kind = _detect(path, key, bytes(body.head), body.size)
        return _artifact_record(
            actor=actor, version=version, path=path, key=key, body=body, claim=claim, kind=kind
        )
    except BaseException:  # client gone, limit, conflict, crash: the object must not stay
        delete_quietly(key)
        raise


def _checked_path(raw: str) -> str:
    try:
        return normalize_artifact_path(raw)
    except InvalidArtifactPath as error:
        raise ApiError(
            f"Invalid file path: {error}",
            status=422,
            code="invalid",
            details={"field": "path", "rule": error.rule},
        ) from None


def _checked_claim(raw: str | None) -> str:
    if raw is None:
        return ""
    try:
        return sha256_hex_claim(raw)
    except InvalidChecksum as error:
        raise ApiError(
            str(error),
            status=422,
            code="invalid",
            details={"field": "X-Content-SHA256", "rule": error.rule},
        ) from None


def _ensure_accepting(version: ModelVersion, path: str) -> None:
    current = ModelVersion.objects.only("status").get(pk=version.pk)
    if current.status != VersionStatus.PENDING:
        raise VersionSealed(current)
    taken = current.files.filter(path_key=artifact_path_key(path)).first()
    if taken is not None:
        raise _path_taken(taken.path)


def _path_taken(existing: str) -> Conflict:
    return Conflict(
        f"The version already has a file at {existing!r} (paths are compared ignoring case).",
        code="already_exists",
        details={"path": existing},
    )


def _detect(path: str, key: str, head: bytes, size: int) -> dict[str, Any]:
    """The file's kind from its name and bytes; a detector bug never fails an upload."""
    try:
        kind = detection.detect_file(path, head, open_stream=partial(open_seekable, key), size=size)
    except Exception:
        logger.exception("Framework detection failed for %s", key)
        return dataclasses.asdict(detection.FileKind(details={"error": "detection failed"}))
    return dataclasses.asdict(kind)


def _artifact_record(
    *,
    actor: Any,
    version: ModelVersion,
    path: str,
    key: str,
    body: MeteredBody,
    claim: str,
    kind: dict[str, Any],
) -> Artifact:
    facts = {"path": path, "size": body.size, "upload_sha256": body.digest.hexdigest()}
    facts["claimed_sha256"] = claim
    with transaction.atomic():
        # The row lock orders this insert against `version_seal` (which locks the same row).
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.status != VersionStatus.PENDING:
            raise VersionSealed(locked)
        try:
            with transaction.atomic():  # a savepoint: the duplicate error leaves us usable
                artifact = Artifact.objects.create(
                    version=locked,
                    path_key=artifact_path_key(path),
                    storage_key=key,
                    kind=kind,
                    **facts,
                )
        except IntegrityError:
            raise _path_taken(path) from None
        after = {**facts, "framework": kind.get("framework", "")}
        audit_record(
            actor=actor, action="artifact.uploaded", target=artifact, changes={"after": after}
        )
    return artifact


def _audit_status(
    actor: Any, version: ModelVersion, action: str, before: str, **after: Any
) -> None:
    """The audit row of a status transition: before/after status plus the facts that matter."""
    changes = {"before": {"status": before}, "after": {"status": version.status, **after}}
    audit_record(actor=actor, action=action, target=version, changes=changes)


# --- Seal -----------------------------------------------------------------------------------


def version_seal(*, actor: Any, version: ModelVersion) -> ModelVersion:
    """Close a `pending` version to changes and queue its verification (→ `verifying`).

    409 if it is already sealed or has no files. The task is enqueued after commit; if the
    broker is down the version stays `verifying` and `sweep_unverified` enqueues it later.
    """
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.status != VersionStatus.PENDING:
            raise VersionSealed(locked)
        totals = locked.files.aggregate(count=Count("pk"), size=Sum("size"))
        if not totals["count"]:
            raise Conflict("an empty version cannot be sealed", code="conflict")
        locked.status = VersionStatus.VERIFYING
        locked.status_reason = ""
        locked.sealed_at = timezone.now()
        locked.bytes_total, locked.bytes_verified = totals["size"] or 0, 0
        locked.save(
            update_fields=["status", "status_reason", "sealed_at", "bytes_total", "bytes_verified"]
        )
        _audit_status(
            actor,
            locked,
            "version.sealed",
            VersionStatus.PENDING,
            files=totals["count"],
            bytes_total=locked.bytes_total,
        )
        transaction.on_commit(partial(enqueue_verify, locked.pk))
    return locked


def enqueue_verify(version_id: int) -> None:
    """Publish the verify task; a broker failure is logged, never raised (the sweep retries)."""
    from apps.registry.tasks import version_verify_task

    try:
        version_verify_task.delay(version_id)
    except Exception:
        logger.exception("Could not enqueue verification of version %s; the sweep will", version_id)


# --- Verify ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _FileCheck:
    """What re-reading one stored file showed."""

    artifact: Artifact
    sha256: str = ""
    size: int = 0
    problem: str = ""


class _VersionLeft(Exception):
    """The version stopped being `verifying` while we hashed: another run finished it."""


class _Progress:
    """Counts hashed bytes; every PROGRESS_EVERY_BYTES writes them in a one-row UPDATE."""

    def __init__(self, version_id: int) -> None:
        self.version_id, self.done, self._flushed = version_id, 0, 0

    def add(self, count: int) -> None:
        self.done += count
        if self.done - self._flushed >= PROGRESS_EVERY_BYTES:
            self._flushed = self.done
            still_ours = ModelVersion.objects.filter(
                pk=self.version_id, status=VersionStatus.VERIFYING
            ).update(bytes_verified=self.done)
            if not still_ours:
                raise _VersionLeft


def version_verify(*, version_id: int) -> ModelVersion | None:
    """Re-read and hash every file of a `verifying` version, then mark it `ready` or `failed`.

    Idempotent and safe to run twice or concurrently (see the module docstring: claim, hash
    outside any transaction, conditional finalize). Returns the version as it now stands, or
    None if it no longer exists. Storage errors other than a missing file raise OSError so
    the task retries.
    """
    with _hashing_lease(version_id) as claimed:
        if claimed:
            progress = _Progress(version_id)
            artifacts = list(Artifact.objects.filter(version_id=version_id).order_by("path"))
            try:
                checks = [_verify_file(artifact, progress) for artifact in artifacts]
            except _VersionLeft:
                checks = None
            if checks is not None:
                _finalize(version_id, checks, progress.done)
    return ModelVersion.objects.filter(pk=version_id).select_related("model").first()


@contextmanager
def _hashing_lease(version_id: int) -> Iterator[bool]:
    """Claim the version for this worker, or yield False if it is not ours to hash."""
    with transaction.atomic():
        row = (
            ModelVersion.objects.select_for_update(skip_locked=True)
            .filter(pk=version_id, status=VersionStatus.VERIFYING)
            .values_list("pk", flat=True)
            .first()
        )
        leased = row is not None and _advisory_lock(version_id, "take")
    try:
        yield leased
    finally:
        if leased:
            _advisory_lock(version_id, "release")


_LOCK_SQL = {
    "take": "SELECT pg_try_advisory_lock(%s, %s)",
    "release": "SELECT pg_advisory_unlock(%s, %s)",
}


def _advisory_lock(version_id: int, action: str) -> bool:
    """Take or release the session lock that leases a version (PostgreSQL; else a no-op)."""
    if connection.vendor != "postgresql":
        return True  # the embedded default: one process, eager tasks
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_SQL[action], [VERIFY_LOCK_NAMESPACE, version_id % 2**31])
        return bool(cursor.fetchone()[0])


def _verify_file(artifact: Artifact, progress: _Progress) -> _FileCheck:
    check = _hash_stored(artifact, progress.add)
    if check.problem:
        return check
    if check.size != artifact.size:
        check.problem = (
            f"size mismatch for {artifact.path}: uploaded {artifact.size} bytes, "
            f"stored {check.size}"
        )
    elif artifact.claimed_sha256 and check.sha256 != artifact.claimed_sha256:
        check.problem = (
            f"checksum mismatch for {artifact.path}: claimed {artifact.claimed_sha256}, "
            f"computed {check.sha256}"
        )
    elif check.sha256 != artifact.upload_sha256:
        check.problem = (
            f"checksum mismatch for {artifact.path}: received {artifact.upload_sha256}, "
            f"stored bytes hash to {check.sha256}"
        )
    return check


def _hash_stored(artifact: Artifact, on_bytes: Any = None) -> _FileCheck:
    """Hash the stored object; a missing (or escaping) object is a problem, not an error."""
    digest, size = hashlib.sha256(), 0
    try:
        with open_stream(artifact.storage_key) as stream:
            while chunk := stream.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
    except (FileNotFoundError, SuspiciousFileOperation):
        return _FileCheck(artifact, problem=f"missing file {artifact.path}")
    return _FileCheck(artifact, sha256=digest.hexdigest(), size=size)


def _finalize(version_id: int, checks: list[_FileCheck], hashed: int) -> None:
    problems = [check.problem for check in checks if check.problem]
    status = VersionStatus.FAILED if problems else VersionStatus.READY
    reason = _reason(problems)
    framework, details = _framework_summary([check.artifact for check in checks])
    now = timezone.now()
    with transaction.atomic():
        won = ModelVersion.objects.filter(pk=version_id, status=VersionStatus.VERIFYING).update(
            status=status,
            status_reason=reason,
            bytes_verified=hashed,
            framework=framework,
            framework_details=details,
            verified_at=now if not problems else None,
        )
        if not won:
            return  # another run finished first (or the version is gone): its events stand
        version = ModelVersion.objects.select_related("model").get(pk=version_id)
        for check in checks:
            if not check.problem:
                _artifact_verified(check, now)
        _audit_status(
            None,
            version,
            f"version.{status}",
            VersionStatus.VERIFYING,
            status_reason=reason,
            framework=framework,
        )


def _artifact_verified(check: _FileCheck, now: Any) -> None:
    Artifact.objects.filter(pk=check.artifact.pk).update(sha256=check.sha256, verified_at=now)
    check.artifact.sha256, check.artifact.verified_at = check.sha256, now
    after = {"path": check.artifact.path, "sha256": check.sha256, "size": check.size}
    audit_record(
        actor=None, action="artifact.verified", target=check.artifact, changes={"after": after}
    )


def _reason(problems: list[str], shown: int = 20) -> str:
    more = len(problems) - shown
    text = "; ".join(problems[:shown])
    return f"{text}; and {more} more" if more > 0 else text


def _framework_summary(artifacts: list[Artifact]) -> tuple[str, dict[str, Any]]:
    """The version's framework from its files' upload-time kinds (names and bytes only)."""
    kinds = {artifact.path: _file_kind(artifact.kind) for artifact in artifacts}
    try:
        summary = detection.detect_version(kinds)
    except Exception:
        logger.exception("Version-level detection failed")
        counts = Counter(kind.framework for kind in kinds.values() if kind.framework)
        return (counts.most_common(1)[0][0] if counts else ""), {}
    details = dataclasses.asdict(summary)
    details["pickle_paths"] = list(details.get("pickle_paths", ()))
    return summary.framework[:32], details


def _file_kind(stored: Any) -> detection.FileKind:
    stored = stored if isinstance(stored, dict) else {}
    return detection.FileKind(
        framework=str(stored.get("framework", "")),
        label=str(stored.get("label", "")),
        unsafe_pickle=bool(stored.get("unsafe_pickle", False)),
        details=stored.get("details") or {},
    )


# --- Scrub ------------------------------------------------------------------------


@dataclasses.dataclass
class ScrubResult:
    files: int = 0
    bytes: int = 0
    corrupted: list[str] = dataclasses.field(default_factory=list)


def scrub_artifacts(
    *, max_files: int = SCRUB_MAX_FILES, max_bytes: int = SCRUB_MAX_BYTES
) -> ScrubResult:
    """Re-hash files of `ready` versions, least recently verified first; flag corruption.

    Bounded per run (files and bytes), so a periodic task works through the whole store over
    successive runs: each file that still matches gets a fresh `verified_at`.
    """
    result = ScrubResult()
    queue = (
        Artifact.objects.filter(version__status=VersionStatus.READY)
        .select_related("version__model")
        .order_by(F("verified_at").asc(nulls_first=True), "pk")[:max_files]
    )
    for artifact in queue:
        if result.bytes >= max_bytes:
            break
        if artifact.version_id in result.corrupted:
            continue
        _scrub_one(artifact, result)
    return result


def _scrub_one(artifact: Artifact, result: ScrubResult) -> None:
    check = _hash_stored(artifact)
    result.files += 1
    result.bytes += check.size
    if check.problem:
        reason = check.problem
    elif check.size != artifact.size or check.sha256 != artifact.sha256:
        reason = corruption_reason(artifact, check.sha256, check.size)
    else:
        Artifact.objects.filter(pk=artifact.pk).update(verified_at=timezone.now())
        return
    version_flag_corrupt(artifact.version, reason)
    result.corrupted.append(artifact.version_id)


# --- Sweeps ---------------------------------------------------------------------------------


def sweep_unverified(*, older_than_minutes: int = SWEEP_AFTER_MINUTES, limit: int = 500) -> int:
    """Re-enqueue versions sealed long ago and still `verifying` (lost or never-sent tasks).

    A version a worker is still hashing is harmless to re-enqueue: the duplicate finds the
    lease taken and returns at once. Returns how many were enqueued.
    """
    cutoff = timezone.now() - timedelta(minutes=older_than_minutes)
    stuck = list(
        ModelVersion.objects.filter(status=VersionStatus.VERIFYING, sealed_at__lt=cutoff)
        .order_by("sealed_at")
        .values_list("pk", flat=True)[:limit]
    )
    for version_id in stuck:
        enqueue_verify(version_id)
    return len(stuck)


def sweep_orphan_objects(
    *,
    grace: timedelta = ORPHAN_GRACE,
    batch: int = 500,
    prefix: str = KEY_PREFIX,
    owner: type[Model] = Artifact,
) -> int:
    """Delete stored objects under `prefix` that no `owner` row's `storage_key` refers to,
    once older than `grace` (registry artifacts unless told; MLflow staging passes its own).

    They come from crashes between writing a file and committing its row, or from a caller's
    transaction that rolled back after the upload returned. The grace period keeps uploads in
    flight (written, row not yet committed) safe. Returns how many were deleted.
    """
    cutoff = timezone.now() - grace
    deleted, pending = 0, []
    for key, modified in stored_keys(prefix):
        if modified < cutoff:
            pending.append(key)
        if len(pending) >= batch:
            deleted += _delete_unreferenced(pending, owner)
            pending = []
    return deleted + _delete_unreferenced(pending, owner)


def _delete_unreferenced(keys: list[str], owner: type[Model]) -> int:
    referenced = owner._default_manager.filter(storage_key__in=keys)
    known = set(referenced.values_list("storage_key", flat=True))
    orphans = [key for key in keys if key not in known]
    for key in orphans:
        logger.warning("Deleting orphaned object %s (no %s row)", key, owner.__name__)
        delete_quietly(key)
    return len(orphans)
