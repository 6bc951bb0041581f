"""Serving verified files: lookup, the verifying byte stream, corruption flags, the response.

Shared by the REST API and the HTML pages, so both serve bytes the same way: only from
`ready` versions, only as an inert attachment (SECURITY principle 5, AR-09), and re-hashed on
the way out so a file changed on disk or in the bucket after verification is never delivered
whole (principle 6, AR-12).
"""

import hashlib
import logging
from collections.abc import Iterator
from typing import IO

from django.core.exceptions import SuspiciousFileOperation
from django.db import transaction
from django.http import Http404, HttpResponse, StreamingHttpResponse

from apps.audit.services import audit_record
from apps.registry.models import Artifact, ModelVersion, VersionStatus
from apps.registry.paths import (
    InvalidArtifactPath,
    content_disposition_attachment,
    normalize_artifact_path,
)
from apps.registry.storage import CHUNK_SIZE, open_stream
from registry_site.api_errors import Conflict

logger = logging.getLogger(__name__)

# Bytes a browser must never render or run, whatever their name or content claim to be.
DOWNLOAD_HEADERS = {
    "Content-Type": "application/octet-stream",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "Cache-Control": "private, no-cache",
}


class ArtifactUnavailable(Conflict):
    """The file cannot be served: the version is not `ready`, or its bytes are gone (409)."""


class ArtifactCorrupted(Exception):
    """Raised mid-stream when served bytes do not hash to the verified digest."""


def artifact_lookup(version: ModelVersion, raw_path: str) -> Artifact:
    """The file of `version` at `raw_path` (canonicalised first); Http404 if invalid or absent.

    An invalid path is a 404 that never reaches storage: it cannot name a stored file.
    """
    try:
        path = normalize_artifact_path(raw_path)
    except InvalidArtifactPath:
        raise Http404("Not found.") from None
    artifact = version.files.filter(path=path).first()
    if artifact is None:
        raise Http404("Not found.")
    artifact.version = version
    return artifact


def artifact_download_response(artifact: Artifact, *, head: bool = False) -> HttpResponse:
    """The response that serves one file as an attachment; ArtifactUnavailable (409) if not ready.

    With `head`, the same headers and no body (the object is not opened).
    """
    _ensure_ready(artifact.version)
    headers = {
        **DOWNLOAD_HEADERS,
        "Content-Disposition": content_disposition_attachment(artifact.path),
        "X-Content-SHA256": artifact.sha256,
        "ETag": f'"{artifact.sha256}"',
        "Content-Length": str(artifact.size),
    }
    if head:
        return HttpResponse(headers=headers)
    return StreamingHttpResponse(artifact_open_verified(artifact), headers=headers)


def _ensure_ready(version: ModelVersion) -> None:
    if version.status == VersionStatus.READY:
        return
    if version.status == VersionStatus.FAILED:
        raise ArtifactUnavailable(
            f"The version failed verification: {version.status_reason}",
            details={"status": version.status, "status_reason": version.status_reason},
        )
    raise ArtifactUnavailable(
        "The version is not verified yet.", details={"status": version.status}
    )


def artifact_open_verified(artifact: Artifact) -> Iterator[bytes]:
    """Open a verified file; return an iterator of its chunks that re-checks the digest.

    The last chunk is held back until the whole file has hashed to `artifact.sha256`; on a
    mismatch the version is flagged and ArtifactCorrupted is raised instead, so the server
    aborts the response and the client sees a body shorter than its Content-Length — never
    a complete-looking corrupt file. (A file that fits in one chunk is found out before any
    header is sent: the client then gets an error status.) A missing object is found before
    any header is sent
    (the version is flagged, then ArtifactUnavailable).
    """
    if not artifact.sha256:
        raise ArtifactUnavailable("This file has not been verified yet.")
    try:
        stream = open_stream(artifact.storage_key)
    except (FileNotFoundError, SuspiciousFileOperation):
        reason = f"missing file {artifact.path}"
        version_flag_corrupt(artifact.version, reason)
        raise ArtifactUnavailable(f"The version failed verification: {reason}") from None
    return _verified_chunks(artifact, stream)


def _verified_chunks(artifact: Artifact, stream: IO[bytes]) -> Iterator[bytes]:
    digest, size, held = hashlib.sha256(), 0, b""
    with stream:
        while chunk := stream.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
            if size > artifact.size:
                break
            if held:
                yield held
            held = chunk
    computed = digest.hexdigest()
    if size != artifact.size or computed != artifact.sha256:
        reason = corruption_reason(artifact, computed, size)
        version_flag_corrupt(artifact.version, reason)
        raise ArtifactCorrupted(reason)
    if held:
        yield held


def corruption_reason(artifact: Artifact, computed: str, size: int) -> str:
    """The status reason of a version whose stored file changed after verification."""
    prefix = "stored file changed after verification"
    if size > artifact.size:
        return f"{prefix}: {artifact.path} is larger than its verified {artifact.size} bytes"
    if size < artifact.size:
        return f"{prefix}: {artifact.path} is {size} bytes, verified as {artifact.size}"
    return (
        f"{prefix}: checksum mismatch for {artifact.path}: "
        f"expected {artifact.sha256}, computed {computed}"
    )


def version_flag_corrupt(version: ModelVersion, reason: str) -> bool:
    """Mark a `ready` version `failed` because its stored bytes changed; audit it once.

    Runs in its own transaction (it is called while a download streams, or by the scrub).
    Returns False if the version was not `ready` any more (already flagged, for instance).
    """
    with transaction.atomic():
        flagged = ModelVersion.objects.filter(pk=version.pk, status=VersionStatus.READY).update(
            status=VersionStatus.FAILED, status_reason=reason
        )
        if flagged:
            version.status, version.status_reason = VersionStatus.FAILED, reason
            changes = {
                "before": {"status": VersionStatus.READY},
                "after": {"status": VersionStatus.FAILED, "status_reason": reason},
            }
            audit_record(actor=None, action="version.corrupted", target=version, changes=changes)
    if flagged:
        logger.error("Version %s flagged as corrupt: %s", version.pk, reason)
    return bool(flagged)
