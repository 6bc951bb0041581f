"""Artifacts on local storage: upload → seal → verify → download, and every way it must fail.

Personas and `version` (pending, created by the editor) come from tests/registry/conftest.py.
Tasks are never eager here: tests call `version_verify` directly, as the worker would.
"""

import hashlib
import io
import os
import re
import stat
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.db import connection, connections
from django.utils import timezone

from apps.accounts.models import TokenScope
from apps.accounts.services import token_create
from apps.audit.models import AuditEvent
from apps.registry import artifacts as artifacts_module
from apps.registry import tasks
from apps.registry.artifacts import (
    VERIFY_LOCK_NAMESPACE,
    artifact_upload,
    scrub_artifacts,
    sweep_orphan_objects,
    sweep_unverified,
    version_seal,
    version_verify,
)
from apps.registry.downloads import ArtifactCorrupted
from apps.registry.models import Artifact, ModelVersion, VersionStatus
from apps.registry.services import version_create
from apps.registry.storage import new_storage_key
from tests.conftest import bearer

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"
KEY_PATTERN = re.compile(r"models/\d+/versions/\d+/[0-9a-f]{32}")
MiB = 1024 * 1024


# --- Helpers (imported by test_s3.py and test_verify_worker.py) ------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_url(version: ModelVersion, path: str) -> str:
    return f"/api/v1/models/{version.model.name}/versions/{version.number}/files/{path}"


def seal_url(version: ModelVersion) -> str:
    return f"/api/v1/models/{version.model.name}/versions/{version.number}/seal"


def put_file(
    client: Any, version: ModelVersion, path: str, data: bytes, auth: dict, claim: str = ""
) -> Any:
    extra = {"HTTP_X_CONTENT_SHA256": claim} if claim else {}
    return client.put(
        file_url(version, path), data, content_type="application/octet-stream", **auth, **extra
    )


def body_of(response: Any) -> bytes:
    return b"".join(response.streaming_content)


def listing(root: Path) -> list[str]:
    """Everything under `root` (files, folders, links): the before/after oracle."""
    if not root.exists():
        return []
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def stored_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


def events(action: str) -> int:
    return AuditEvent.objects.filter(action=action).count()


def make_ready(client: Any, version: ModelVersion, files: dict[str, bytes], auth: dict) -> None:
    """Upload `files`, seal through the API, verify as the worker would."""
    for path, data in files.items():
        assert put_file(client, version, path, data, auth).status_code == 201
    assert client.post(seal_url(version), **auth).status_code == 202
    version_verify(version_id=version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY, version.status_reason


def random_bytes(size: int, seed: int = 7) -> bytes:
    return hashlib.shake_256(f"seed-{seed}".encode()).digest(size)


@pytest.fixture(autouse=True)
def _local_storage(artifact_root: Path, settings: Any) -> None:
    """Every test here runs on its own local storage root (and hashes passwords cheaply)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- The happy path -------------------------------------------------------------------------


def test_upload_seal_verify_download_round_trip(
    api_client, version, editor, editor_auth, artifact_root, django_capture_on_commit_callbacks
):
    weights = (FIXTURES / "safetensors" / "model.safetensors").read_bytes()
    big = random_bytes(3 * MiB + 123)  # larger than the 1 MiB JSON limit and one chunk
    response = put_file(
        api_client, version, "weights/model.safetensors", weights, editor_auth, sha256(weights)
    )
    assert response.status_code == 201
    assert response.json() == {"path": "weights/model.safetensors", "size": len(weights)}
    assert (
        put_file(api_client, version, "extra/blobs/data.bin", big, editor_auth).status_code == 201
    )

    files = {artifact.path: artifact for artifact in Artifact.objects.filter(version=version)}
    assert set(files) == {"weights/model.safetensors", "extra/blobs/data.bin"}
    assert files["weights/model.safetensors"].upload_sha256 == sha256(weights)
    assert files["weights/model.safetensors"].claimed_sha256 == sha256(weights)
    assert files["weights/model.safetensors"].kind["framework"] == "safetensors"
    assert files["extra/blobs/data.bin"].upload_sha256 == sha256(big)
    assert files["extra/blobs/data.bin"].sha256 == ""  # only the worker sets it
    for artifact in files.values():
        assert KEY_PATTERN.fullmatch(artifact.storage_key)
        assert artifact.storage_key.startswith(f"models/{version.model_id}/versions/{version.pk}/")
    assert len(stored_files(artifact_root)) == 2

    with django_capture_on_commit_callbacks() as callbacks:
        response = api_client.post(seal_url(version), **editor_auth)
    assert response.status_code == 202
    assert response.json()["status"] == "verifying"
    assert len(callbacks) == 1  # the verify task, queued after commit

    verified = version_verify(version_id=version.pk)
    assert verified.status == VersionStatus.READY
    assert verified.status_reason == ""
    assert verified.framework == "safetensors"
    assert verified.verified_at is not None
    assert verified.bytes_total == verified.bytes_verified == len(weights) + len(big)
    for artifact in Artifact.objects.filter(version=version):
        assert artifact.sha256 == artifact.upload_sha256
        assert artifact.verified_at is not None
    assert [events(a) for a in ("artifact.uploaded", "version.sealed")] == [2, 1]
    assert [events(a) for a in ("artifact.verified", "version.ready")] == [2, 1]

    response = api_client.get(file_url(version, "extra/blobs/data.bin"), **editor_auth)
    assert response.status_code == 200
    assert body_of(response) == big
    assert response["Content-Length"] == str(len(big))
    assert response["X-Content-SHA256"] == sha256(big)
    assert response["ETag"] == f'"{sha256(big)}"'
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"].startswith('attachment; filename="data.bin"')
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "sandbox; default-src 'none'"
    response = api_client.get(file_url(version, "weights/model.safetensors"), **editor_auth)
    assert body_of(response) == weights


def test_head_gives_the_headers_without_the_body(api_client, version, editor_auth):
    make_ready(api_client, version, {"model.onnx": b"onnx bytes"}, editor_auth)
    response = api_client.head(file_url(version, "model.onnx"), **editor_auth)
    assert response.status_code == 200
    assert response.content == b""
    assert response["Content-Length"] == "10"
    assert response["X-Content-SHA256"] == sha256(b"onnx bytes")


def test_seal_answers_with_the_version_schema(api_client, version, editor_auth):
    put_file(api_client, version, "a.bin", b"abc", editor_auth)
    body = api_client.post(seal_url(version), **editor_auth).json()
    assert body["version"] == version.number
    assert body["status"] == "verifying"
    assert body["files"] == [{"path": "a.bin", "size": 3, "sha256": None, "verified_at": None}]


def test_stored_files_and_folders_are_private(api_client, version, editor_auth, artifact_root):
    put_file(api_client, version, "a/b/c.bin", b"secret", editor_auth)
    (stored,) = stored_files(artifact_root)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    for folder in [path for path in artifact_root.rglob("*") if path.is_dir()]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert "c.bin" not in str(stored)  # the user's path never names the object


def test_framework_detection_reads_zip_directory_through_storage(api_client, version, editor_auth):
    model = (FIXTURES / "pytorch" / "model.pt").read_bytes()
    put_file(api_client, version, "model.pt", model, editor_auth)
    artifact = Artifact.objects.get(version=version)
    assert artifact.kind["framework"] == "pytorch"
    assert artifact.kind["unsafe_pickle"] is True


# --- Checksums and claims -------------------------------------------------------------------


def test_wrong_claim_fails_the_version_naming_path_and_both_digests(
    api_client, version, editor_auth
):
    data, wrong = b"real weights", sha256(b"other weights")
    put_file(api_client, version, "weights/model.pt", data, editor_auth, claim=wrong)
    api_client.post(seal_url(version), **editor_auth)

    failed = version_verify(version_id=version.pk)

    assert failed.status == VersionStatus.FAILED
    assert failed.status_reason == (
        f"checksum mismatch for weights/model.pt: claimed {wrong}, computed {sha256(data)}"
    )
    assert events("version.failed") == 1
    assert events("version.ready") == events("artifact.verified") == 0
    response = api_client.get(file_url(version, "weights/model.pt"), **editor_auth)
    assert response.status_code == 409
    assert "checksum mismatch" in response.json()["error"]["message"]
    assert Artifact.objects.get().storage_key  # bytes kept for forensics


@pytest.mark.parametrize(
    "claim",
    ["a" * 63, "A" * 64, "sha256:" + "a" * 64, "../" + "a" * 61, "g" * 64, "a" * 65],
)
def test_malformed_claim_is_422_and_nothing_is_stored(
    api_client, version, editor_auth, artifact_root, claim
):
    response = put_file(api_client, version, "m.bin", b"bytes", editor_auth, claim=claim)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid"
    assert response.json()["error"]["details"]["field"] == "X-Content-SHA256"
    assert stored_files(artifact_root) == []
    assert not Artifact.objects.exists()


# --- State rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [VersionStatus.VERIFYING, VersionStatus.FAILED])
def test_upload_to_a_sealed_version_is_409(api_client, version, editor_auth, artifact_root, status):
    ModelVersion.objects.filter(pk=version.pk).update(status=status)
    response = put_file(api_client, version, "late.bin", b"late", editor_auth)
    assert response.status_code == 409
    assert response.json()["error"]["message"] == "version is sealed"
    assert stored_files(artifact_root) == []


def test_files_of_a_version_cannot_be_deleted_or_patched(
    api_client, version, editor_auth, artifact_root
):
    make_ready(api_client, version, {"a.bin": b"a"}, editor_auth)
    before = listing(artifact_root)
    for method in (api_client.delete, api_client.patch, api_client.post):
        assert method(file_url(version, "a.bin"), **editor_auth).status_code == 405
    assert listing(artifact_root) == before
    assert Artifact.objects.count() == 1


def test_upload_after_ready_is_409(api_client, version, editor_auth):
    make_ready(api_client, version, {"a.bin": b"a"}, editor_auth)
    assert put_file(api_client, version, "b.bin", b"b", editor_auth).status_code == 409
    assert put_file(api_client, version, "a.bin", b"x", editor_auth).status_code == 409


def test_empty_version_cannot_be_sealed(api_client, version, editor_auth):
    response = api_client.post(seal_url(version), **editor_auth)
    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": "conflict",
        "message": "an empty version cannot be sealed",
        "details": {},
    }
    version.refresh_from_db()
    assert version.status == VersionStatus.PENDING
    assert events("version.sealed") == 0


def test_sealing_twice_is_409(api_client, version, editor_auth):
    put_file(api_client, version, "a.bin", b"a", editor_auth)
    assert api_client.post(seal_url(version), **editor_auth).status_code == 202
    response = api_client.post(seal_url(version), **editor_auth)
    assert response.status_code == 409
    assert response.json()["error"]["message"] == "version is sealed"
    assert events("version.sealed") == 1


@pytest.mark.parametrize("status", [VersionStatus.PENDING, VersionStatus.VERIFYING])
def test_download_before_ready_is_409(api_client, version, editor_auth, status):
    put_file(api_client, version, "a.bin", b"a", editor_auth)
    ModelVersion.objects.filter(pk=version.pk).update(status=status)
    response = api_client.get(file_url(version, "a.bin"), **editor_auth)
    assert response.status_code == 409
    assert response.json()["error"]["message"] == "The version is not verified yet."


def test_unknown_file_and_impossible_numbers_are_404(api_client, version, editor_auth):
    make_ready(api_client, version, {"a.bin": b"a"}, editor_auth)
    assert api_client.get(file_url(version, "b.bin"), **editor_auth).status_code == 404
    assert api_client.get(file_url(version, "A.BIN"), **editor_auth).status_code == 404
    huge = f"/api/v1/models/{version.model.name}/versions/99999999999999999999/files/a.bin"
    assert api_client.get(huge, **editor_auth).status_code == 404
    assert api_client.put(huge, b"x", content_type="x/y", **editor_auth).status_code == 404


# --- Sizes and broken uploads ---------------------------------------------------------------


def test_declared_oversize_is_413_before_reading(
    api_client, version, editor_auth, artifact_root, settings
):
    settings.REGENT_MAX_ARTIFACT_BYTES = 1000
    response = put_file(api_client, version, "big.bin", b"x" * 1001, editor_auth)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert listing(artifact_root) == []
    assert not Artifact.objects.exists()
    assert put_file(api_client, version, "ok.bin", b"x" * 1000, editor_auth).status_code == 201


def chunked(data: bytes, terminated: bool = True) -> dict[str, Any]:
    """WSGI environ of a chunked upload (no Content-Length), as gunicorn presents it."""
    return {
        "CONTENT_LENGTH": "",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": io.BytesIO(data),
        "wsgi.input_terminated": terminated,
    }


def test_chunked_upload_over_the_limit_is_413_and_leaves_nothing(
    api_client, version, editor_auth, artifact_root, settings
):
    settings.REGENT_MAX_ARTIFACT_BYTES = 3 * MiB
    big = random_bytes(3 * MiB + 1)
    response = api_client.put(
        file_url(version, "big.bin"), content_type="x/y", **editor_auth, **chunked(big)
    )
    assert response.status_code == 413
    assert stored_files(artifact_root) == []
    assert not Artifact.objects.exists()

    fits = random_bytes(2 * MiB + 5)
    response = api_client.put(
        file_url(version, "fits.bin"), content_type="x/y", **editor_auth, **chunked(fits)
    )
    assert response.status_code == 201
    assert Artifact.objects.get().upload_sha256 == sha256(fits)


def test_chunked_upload_without_a_terminated_input_is_refused(api_client, version, editor_auth):
    response = api_client.put(
        file_url(version, "x.bin"), content_type="x/y", **editor_auth, **chunked(b"x", False)
    )
    assert response.status_code == 411
    assert not Artifact.objects.exists()


def test_body_shorter_than_content_length_is_400_and_leaves_nothing(
    api_client, version, editor_auth, artifact_root
):
    extra = {"CONTENT_LENGTH": str(5 * MiB), "wsgi.input": io.BytesIO(random_bytes(2 * MiB))}
    response = api_client.put(
        file_url(version, "cut.bin"), content_type="x/y", **editor_auth, **extra
    )
    assert response.status_code == 400
    assert "ended after" in response.json()["error"]["message"]
    assert stored_files(artifact_root) == []
    assert not Artifact.objects.exists()


class BreaksAfter:
    """A client body that delivers `good` bytes, then the connection resets."""

    def __init__(self, good: int, error: BaseException | None = None) -> None:
        self.left = good
        self.error = error or ConnectionResetError("peer went away")

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise self.error
        size = min(size, self.left)
        self.left -= size
        return b"z" * size

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


@pytest.mark.parametrize("error", [ConnectionResetError("reset"), KeyboardInterrupt()])
def test_aborted_upload_leaves_nothing(version, editor, artifact_root, error):
    stream = BreaksAfter(3 * MiB, error)
    with pytest.raises((artifacts_module.UploadIncomplete, KeyboardInterrupt)):
        artifact_upload(
            actor=editor, version=version, path="w.bin", stream=stream, content_length=8 * MiB
        )
    assert stored_files(artifact_root) == []
    assert not Artifact.objects.exists()
    assert events("artifact.uploaded") == 0


def test_aborted_upload_through_the_api_is_400(api_client, version, editor_auth, artifact_root):
    extra = {"CONTENT_LENGTH": str(4 * MiB), "wsgi.input": BreaksAfter(2 * MiB)}
    response = api_client.put(
        file_url(version, "w.bin"), content_type="x/y", **editor_auth, **extra
    )
    assert response.status_code == 400
    assert stored_files(artifact_root) == []


# --- Paths ----------------------------------------------------------------------------------


def test_duplicate_and_case_colliding_paths_are_409(
    api_client, version, editor_auth, artifact_root
):
    assert put_file(api_client, version, "weights/model.pt", b"1", editor_auth).status_code == 201
    for same in ["weights/model.pt", "Weights/MODEL.pt", "WEIGHTS/model.PT"]:
        response = put_file(api_client, version, same, b"2", editor_auth)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "already_exists"
    assert Artifact.objects.count() == 1
    assert len(stored_files(artifact_root)) == 1


def test_nfc_and_nfd_spellings_are_one_path(api_client, version, editor_auth):
    assert put_file(api_client, version, "caf%C3%A9.bin", b"1", editor_auth).status_code == 201
    assert put_file(api_client, version, "cafe%CC%81.bin", b"2", editor_auth).status_code == 409
    assert Artifact.objects.get().path == "café.bin"


def test_racing_duplicate_hits_the_constraint_and_leaves_no_file(
    version, editor, artifact_root, monkeypatch
):
    monkeypatch.setattr(artifacts_module, "_ensure_accepting", lambda version, path: None)
    artifact_upload(actor=editor, version=version, path="a.bin", stream=io.BytesIO(b"1"))
    with pytest.raises(artifacts_module.Conflict) as raised:
        artifact_upload(actor=editor, version=version, path="A.bin", stream=io.BytesIO(b"2"))
    assert raised.value.code == "already_exists"
    assert len(stored_files(artifact_root)) == 1
    assert events("artifact.uploaded") == 1


def test_seal_landing_during_the_upload_wins(version, editor, artifact_root, monkeypatch):
    monkeypatch.setattr(artifacts_module, "_ensure_accepting", lambda version, path: None)
    ModelVersion.objects.filter(pk=version.pk).update(status=VersionStatus.VERIFYING)
    with pytest.raises(artifacts_module.VersionSealed):
        artifact_upload(actor=editor, version=version, path="a.bin", stream=io.BytesIO(b"1"))
    assert stored_files(artifact_root) == []


TRAVERSALS = [
    "..%2Fescape.txt",
    "%2e%2e%2fescape.txt",
    "%2E%2E/escape.txt",
    "%252e%252e%252fescape.txt",
    "a/..%2F..%2F..%2Fescape.txt",
    "a/./../../escape.txt",
    "..%5C..%5Cescape.txt",
    "a%5C..%5C..%5Cescape.txt",
    "%2Fetc%2Fpasswd",
    "C:%2Fwin.ini",
    "%5C%5Cserver%5Cshare",
    "a%3B/../b",
    "a%23/../b",
    "a%3F/../b",
    "a%00.pt",
    "..%EF%BC%8Fescape.txt",
    "a%E2%80%AEtxt.exe",
    "..",
    "a//b",
    "x" * 1025,
]


@pytest.mark.parametrize("raw", TRAVERSALS)
def test_traversal_spellings_are_refused_and_touch_nothing(
    api_client, version, editor_auth, artifact_root, tmp_path, raw
):
    put_file(api_client, version, "keep.bin", b"keep", editor_auth)
    before_root, before_tmp = listing(artifact_root), listing(tmp_path)

    response = put_file(api_client, version, raw, b"evil", editor_auth)

    assert response.status_code == 422, response.content
    assert response.json()["error"]["details"]["field"] == "path"
    assert listing(artifact_root) == before_root
    assert listing(tmp_path) == before_tmp
    assert Artifact.objects.count() == 1


@pytest.mark.parametrize("raw", TRAVERSALS)
def test_traversal_spellings_on_download_are_404(
    api_client, version, editor_auth, raw, monkeypatch
):
    make_ready(api_client, version, {"keep.bin": b"keep"}, editor_auth)
    monkeypatch.setattr(
        "apps.registry.downloads.open_stream", lambda key: pytest.fail("storage touched")
    )
    assert api_client.get(file_url(version, raw), **editor_auth).status_code == 404


# --- Serving is inert -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["evil.html", "image.svg", "notes.txt", "config.json"])
def test_active_content_is_served_as_an_inert_attachment(api_client, version, editor_auth, name):
    data = (FIXTURES / "not_a_model" / name).read_bytes()
    make_ready(api_client, version, {f"docs/{name}": data}, editor_auth)
    response = api_client.get(file_url(version, f"docs/{name}"), **editor_auth)
    assert body_of(response) == data
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"] == (
        f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"
    )
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "sandbox; default-src 'none'"


def test_header_breaking_names_cannot_split_headers(api_client, version, editor_auth):
    make_ready(api_client, version, {"x/na%C3%AFve 'q'.bin": b"1"}, editor_auth)
    response = api_client.get(file_url(version, "x/na%C3%AFve 'q'.bin"), **editor_auth)
    disposition = response["Content-Disposition"]
    assert "\r" not in disposition and "\n" not in disposition
    assert disposition.startswith("attachment; filename=\"na_ve 'q'.bin\"")


# --- Corruption after verification ----------------------------------------------------------


def stored_path(root: Path, version: ModelVersion, path: str) -> Path:
    return root / Artifact.objects.get(version=version, path=path).storage_key


def flip_byte(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0xFF
    file.write_bytes(bytes(data))


def test_corrupted_file_aborts_the_download_and_fails_the_version(
    api_client, version, editor_auth, artifact_root
):
    data = random_bytes(2 * MiB + 500)
    make_ready(api_client, version, {"w.bin": data}, editor_auth)
    flip_byte(stored_path(artifact_root, version, "w.bin"), 2 * MiB + 10)

    response = api_client.get(file_url(version, "w.bin"), **editor_auth)
    assert response.status_code == 200  # headers were sent before the bytes were read
    received = bytearray()
    with pytest.raises(ArtifactCorrupted):
        for chunk in response.streaming_content:
            received += chunk
    assert len(received) < len(data)  # the client sees a truncated body, never a whole one
    assert bytes(received) == data[: len(received)]

    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert version.status_reason.startswith("stored file changed after verification")
    assert "w.bin" in version.status_reason
    assert events("version.corrupted") == 1
    again = api_client.get(file_url(version, "w.bin"), **editor_auth)
    assert again.status_code == 409


def test_small_corrupted_file_sends_no_byte(api_client, version, editor_auth, artifact_root):
    make_ready(api_client, version, {"s.bin": b"small"}, editor_auth)
    stored_path(artifact_root, version, "s.bin").write_bytes(b"SMALL")
    response = api_client.get(file_url(version, "s.bin"), **editor_auth)
    chunks = []
    with pytest.raises(ArtifactCorrupted):
        chunks.extend(response.streaming_content)
    assert chunks == []


def test_appended_bytes_are_corruption_too(api_client, version, editor_auth, artifact_root):
    make_ready(api_client, version, {"s.bin": b"small"}, editor_auth)
    stored_path(artifact_root, version, "s.bin").write_bytes(b"small plus more")
    response = api_client.get(file_url(version, "s.bin"), **editor_auth)
    with pytest.raises(ArtifactCorrupted):
        body_of(response)
    version.refresh_from_db()
    assert "larger than its verified 5 bytes" in version.status_reason


def test_missing_file_is_refused_before_headers(api_client, version, editor_auth, artifact_root):
    make_ready(api_client, version, {"gone.bin": b"gone"}, editor_auth)
    stored_path(artifact_root, version, "gone.bin").unlink()
    response = api_client.get(file_url(version, "gone.bin"), **editor_auth)
    assert response.status_code == 409
    assert "missing file gone.bin" in response.json()["error"]["message"]
    assert events("version.corrupted") == 1


def test_scrub_finds_corruption_before_anyone_downloads(
    api_client, version, editor_auth, artifact_root
):
    make_ready(api_client, version, {"a.bin": b"aaaa", "b.bin": b"bbbb"}, editor_auth)
    flip_byte(stored_path(artifact_root, version, "b.bin"), 0)

    result = scrub_artifacts()

    assert result.corrupted == [version.pk]
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert version.status_reason == (
        "stored file changed after verification: checksum mismatch for b.bin: "
        f"expected {sha256(b'bbbb')}, computed {sha256(bytes([ord('b') ^ 0xFF]) + b'bbb')}"
    )
    assert events("version.corrupted") == 1
    response = api_client.get(file_url(version, "a.bin"), **editor_auth)
    assert response.status_code == 409
    assert scrub_artifacts().files == 0  # failed versions are not scrubbed again


def test_scrub_of_intact_files_refreshes_verified_at_quietly(api_client, version, editor_auth):
    make_ready(api_client, version, {"a.bin": b"aaaa"}, editor_auth)
    old = timezone.now() - timedelta(days=3)
    Artifact.objects.update(verified_at=old)
    before = AuditEvent.objects.count()

    result = scrub_artifacts(max_files=10)

    assert (result.files, result.bytes, result.corrupted) == (1, 4, [])
    assert Artifact.objects.get().verified_at > old
    assert AuditEvent.objects.count() == before


def test_scrub_takes_the_least_recently_verified_first(api_client, version, editor_auth):
    make_ready(api_client, version, {"a.bin": b"a", "b.bin": b"b"}, editor_auth)
    Artifact.objects.filter(path="b.bin").update(verified_at=timezone.now() - timedelta(days=9))
    scrub_artifacts(max_files=1)
    refreshed = dict(Artifact.objects.values_list("path", "verified_at"))
    assert refreshed["b.bin"] > refreshed["a.bin"]


def test_symlink_planted_in_the_root_is_not_followed(
    api_client, version, editor_auth, artifact_root, tmp_path
):
    make_ready(api_client, version, {"a.bin": b"aaaa"}, editor_auth)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"aaaa")  # even identical bytes are not served through a link
    stored = stored_path(artifact_root, version, "a.bin")
    stored.unlink()
    stored.symlink_to(outside)

    response = api_client.get(file_url(version, "a.bin"), **editor_auth)

    assert response.status_code == 409
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED


def test_upload_refuses_a_symlinked_folder_in_the_root(version, editor, artifact_root, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (artifact_root / "models").mkdir(parents=True)
    (artifact_root / "models" / str(version.model_id)).symlink_to(outside)
    with pytest.raises(SuspiciousFileOperation):
        artifact_upload(actor=editor, version=version, path="a.bin", stream=io.BytesIO(b"1"))
    assert listing(outside) == []
    assert not Artifact.objects.exists()


# --- Verification: idempotence, leases, progress, missing files -----------------------------


def test_verify_twice_records_one_set_of_events(api_client, version, editor_auth):
    make_ready(api_client, version, {"a.bin": b"a", "b/c.bin": b"c"}, editor_auth)
    before = AuditEvent.objects.count()
    again = version_verify(version_id=version.pk)
    assert again.status == VersionStatus.READY
    assert AuditEvent.objects.count() == before
    assert events("artifact.verified") == 2
    assert events("version.ready") == 1


def test_verify_of_a_missing_version_is_a_quiet_no_op():
    assert version_verify(version_id=987654) is None
    tasks.version_verify_task(987654)


def test_missing_file_fails_verification(api_client, version, editor_auth, artifact_root):
    put_file(api_client, version, "weights/model.pt", b"w", editor_auth)
    api_client.post(seal_url(version), **editor_auth)
    stored_path(artifact_root, version, "weights/model.pt").unlink()
    failed = version_verify(version_id=version.pk)
    assert failed.status == VersionStatus.FAILED
    assert failed.status_reason == "missing file weights/model.pt"


def test_bytes_changed_between_upload_and_verify_fail(
    api_client, version, editor_auth, artifact_root
):
    put_file(api_client, version, "a.bin", b"abcd", editor_auth)
    api_client.post(seal_url(version), **editor_auth)
    stored_path(artifact_root, version, "a.bin").write_bytes(b"abcD")
    failed = version_verify(version_id=version.pk)
    assert failed.status_reason == (
        f"checksum mismatch for a.bin: received {sha256(b'abcd')}, "
        f"stored bytes hash to {sha256(b'abcD')}"
    )


def _wait_for_backend_exit(pid: int, timeout: float = 10.0) -> None:
    """The server ends a closed session asynchronously; its locks go when its backend does.

    The test runs inside a transaction, and PostgreSQL keeps the first view of
    pg_stat_activity for the rest of a transaction: each poll clears it to see a fresh one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
            if cursor.fetchone() is None:
                return
        time.sleep(0.02)
    raise AssertionError(f"backend {pid} still running after {timeout} s")


def test_verify_skips_a_version_another_worker_is_hashing(api_client, version, editor_auth):
    put_file(api_client, version, "a.bin", b"a", editor_auth)
    api_client.post(seal_url(version), **editor_auth)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:  # another worker's session holds the lease
            cursor.execute(
                "SELECT pg_advisory_lock(%s, %s)", [VERIFY_LOCK_NAMESPACE, version.pk % 2**31]
            )
        assert version_verify(version_id=version.pk).status == VersionStatus.VERIFYING
        assert events("artifact.verified") == 0
    finally:
        other_pid = other.connection.info.backend_pid
        other.close()  # the lease dies with the session, as with a killed worker
    _wait_for_backend_exit(other_pid)
    assert version_verify(version_id=version.pk).status == VersionStatus.READY


def test_progress_is_written_while_hashing(api_client, version, editor_auth, monkeypatch):
    data = random_bytes(10_000)
    put_file(api_client, version, "a.bin", data, editor_auth)
    api_client.post(seal_url(version), **editor_auth)
    monkeypatch.setattr(artifacts_module, "CHUNK_SIZE", 1000)
    monkeypatch.setattr(artifacts_module, "PROGRESS_EVERY_BYTES", 3000)
    seen: list[int] = []
    original = artifacts_module._Progress.add

    def recording_add(self: Any, count: int) -> None:
        original(self, count)
        seen.append(ModelVersion.objects.get(pk=version.pk).bytes_verified)

    monkeypatch.setattr(artifacts_module._Progress, "add", recording_add)
    version_verify(version_id=version.pk)
    assert sorted(set(seen)) == [0, 3000, 6000, 9000]
    assert ModelVersion.objects.get(pk=version.pk).bytes_verified == 10_000


# --- Seal enqueues after commit; sweeps -----------------------------------------------------


def test_seal_enqueues_after_commit_and_survives_a_dead_broker(
    api_client, version, editor, monkeypatch, django_capture_on_commit_callbacks
):
    artifact_upload(actor=editor, version=version, path="a.bin", stream=io.BytesIO(b"a"))
    sent: list[int] = []
    monkeypatch.setattr(tasks.version_verify_task, "delay", sent.append)
    with django_capture_on_commit_callbacks(execute=True):
        version_seal(actor=editor, version=version)
    assert sent == [version.pk]

    def broker_down(version_id: int) -> None:
        raise ConnectionRefusedError("redis is down")

    monkeypatch.setattr(tasks.version_verify_task, "delay", broker_down)
    artifacts_module.enqueue_verify(version.pk)  # logged, not raised: the sweep retries


def test_sweep_re_enqueues_versions_stuck_in_verifying(api_client, version, editor, monkeypatch):
    artifact_upload(actor=editor, version=version, path="a.bin", stream=io.BytesIO(b"a"))
    version_seal(actor=editor, version=version)
    sent: list[int] = []
    monkeypatch.setattr(tasks.version_verify_task, "delay", sent.append)

    assert sweep_unverified(older_than_minutes=10) == 0
    ModelVersion.objects.filter(pk=version.pk).update(
        sealed_at=timezone.now() - timedelta(minutes=11)
    )
    assert sweep_unverified(older_than_minutes=10) == 1
    assert sent == [version.pk]
    tasks.sweep_unverified_task()
    assert sent == [version.pk, version.pk]


def test_orphan_sweep_deletes_only_old_unreferenced_objects(
    api_client, version, editor_auth, artifact_root
):
    put_file(api_client, version, "kept.bin", b"kept", editor_auth)
    old = (timezone.now() - timedelta(days=2)).timestamp()
    for file in stored_files(artifact_root):
        os.utime(file, (old, old))
    orphan_old = artifact_root / new_storage_key(version)
    orphan_new = artifact_root / new_storage_key(version)
    for orphan in (orphan_old, orphan_new):
        orphan.write_bytes(b"orphan")
    os.utime(orphan_old, (old, old))

    assert sweep_orphan_objects(grace=timedelta(hours=24)) == 1

    assert not orphan_old.exists()
    assert orphan_new.exists()
    assert stored_path(artifact_root, version, "kept.bin").exists()


# --- Failed transactions leave nothing (WF-12) ----------------------------------------------


def test_failure_after_the_file_was_written_leaves_no_file_row_or_event(
    version, editor, artifact_root, monkeypatch
):
    def audit_fails(**kwargs: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(artifacts_module, "audit_record", audit_fails)
    with pytest.raises(RuntimeError):
        artifact_upload(actor=editor, version=version, path="a.bin", stream=io.BytesIO(b"a" * 10))
    assert stored_files(artifact_root) == []
    assert not Artifact.objects.exists()
    assert events("artifact.uploaded") == 0


@pytest.mark.django_db(transaction=True)
def test_rolled_back_seal_queues_nothing(version, editor, monkeypatch):
    artifact_upload(actor=editor, version=version, path="a.bin", stream=io.BytesIO(b"a"))
    sent: list[int] = []
    monkeypatch.setattr(tasks.version_verify_task, "delay", sent.append)
    monkeypatch.setattr(
        artifacts_module, "_audit_status", lambda *a, **k: (_ for _ in ()).throw(RuntimeError)
    )
    with pytest.raises(RuntimeError):
        version_seal(actor=editor, version=version)
    assert sent == []
    assert ModelVersion.objects.get(pk=version.pk).status == VersionStatus.PENDING


# --- Who may ----------------------------------------------------------------------------------


def test_viewer_downloads_but_cannot_upload_or_seal(
    api_client, version, editor_auth, viewer_auth, artifact_root
):
    make_ready(api_client, version, {"a.bin": b"a"}, editor_auth)
    assert api_client.get(file_url(version, "a.bin"), **viewer_auth).status_code == 200
    before = listing(artifact_root)
    ModelVersion.objects.filter(pk=version.pk).update(status=VersionStatus.PENDING)
    response = put_file(api_client, version, "b.bin", b"b", viewer_auth)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert api_client.post(seal_url(version), **viewer_auth).status_code == 403
    assert listing(artifact_root) == before


def test_outsider_gets_404_everywhere(api_client, version, editor_auth, outsider_auth):
    make_ready(api_client, version, {"a.bin": b"a"}, editor_auth)
    assert api_client.get(file_url(version, "a.bin"), **outsider_auth).status_code == 404
    assert api_client.head(file_url(version, "a.bin"), **outsider_auth).status_code == 404
    assert put_file(api_client, version, "b.bin", b"b", outsider_auth).status_code == 404
    assert api_client.post(seal_url(version), **outsider_auth).status_code == 404


def test_internal_model_downloads_for_any_signed_in_user(
    api_client, version, editor_auth, outsider_auth
):
    make_ready(api_client, version, {"a.bin": b"a"}, editor_auth)
    version.model.visibility = "internal"
    version.model.save(update_fields=["visibility"])
    assert api_client.get(file_url(version, "a.bin"), **outsider_auth).status_code == 200
    assert put_file(api_client, version, "b.bin", b"b", outsider_auth).status_code == 403


def test_read_only_token_cannot_upload_or_seal(api_client, version, editor, artifact_root):
    _, plaintext = token_create(user=editor, name="ro", scope=TokenScope.READ)
    assert put_file(api_client, version, "a.bin", b"a", bearer(plaintext)).status_code == 403
    assert api_client.post(seal_url(version), **bearer(plaintext)).status_code == 403
    assert stored_files(artifact_root) == []


def test_anonymous_is_401(api_client, version):
    assert put_file(api_client, version, "a.bin", b"a", {}).status_code == 401
    assert api_client.get(file_url(version, "a.bin")).status_code == 401


def test_session_upload_needs_csrf(version, editor, artifact_root):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(editor)
    assert put_file(browser, version, "a.bin", b"a", {}).status_code == 403
    assert stored_files(artifact_root) == []


def test_same_name_in_two_versions_gets_two_keys(ml_model, version, editor, artifact_root):
    other = version_create(actor=editor, model=ml_model)
    for target, data in ((version, b"one"), (other, b"two")):
        artifact_upload(actor=editor, version=target, path="model.pt", stream=io.BytesIO(data))
    first, second = Artifact.objects.order_by("pk")
    assert first.storage_key != second.storage_key
    assert (artifact_root / first.storage_key).read_bytes() == b"one"
    assert (artifact_root / second.storage_key).read_bytes() == b"two"
    assert len({new_storage_key(version) for _ in range(1000)}) == 1000
