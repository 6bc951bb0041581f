"""Artifacts on S3 (django-storages against moto's S3 server on loopback).

The same services as on local files (SECURITY AR-02): id-derived keys under the configured
prefix, nothing left behind by a refused or broken upload (multipart uploads included), no
overwrite of an existing key, corruption of the object found by the scrub and by downloads.
"""

import io
import re
import socket
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from django.core.files.storage import storages
from moto.server import ThreadedMotoServer

from apps.registry.artifacts import (
    UploadIncomplete,
    artifact_upload,
    scrub_artifacts,
    sweep_orphan_objects,
    version_verify,
)
from apps.registry.downloads import ArtifactCorrupted
from apps.registry.models import Artifact, VersionStatus
from apps.registry.storage import (
    StorageKeyTaken,
    artifact_storage,
    new_storage_key,
    object_exists,
    save_stream,
)
from registry_site import settings as settings_module
from tests.registry.test_artifacts import (
    FIXTURES,
    BreaksAfter,
    MiB,
    body_of,
    events,
    file_url,
    put_file,
    random_bytes,
    seal_url,
    sha256,
)

pytestmark = pytest.mark.django_db

PREFIX = "regent-artifacts"
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port for this module."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION, **CREDENTIALS)


@pytest.fixture
def bucket(s3: Any, moto_endpoint: str, settings: Any) -> Iterator[str]:
    """A fresh bucket per test, configured as STORAGES["artifacts"] the way settings.py does."""
    name = f"regent-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": name,
                "location": PREFIX,
                "file_overwrite": False,
                "default_acl": None,
                "querystring_expire": 300,
                "endpoint_url": moto_endpoint,
                "region_name": REGION,
            },
        },
    }
    storages._storages = {}  # belt and braces: the setting_changed receiver resets it too
    yield name
    storages._storages = {}


def object_keys(s3: Any, bucket: str) -> list[str]:
    answer = s3.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in answer.get("Contents", []))


def multipart_uploads(s3: Any, bucket: str) -> list[dict]:
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def object_of(version: Any, path: str) -> str:
    return f"{PREFIX}/{Artifact.objects.get(version=version, path=path).storage_key}"


# --- End to end -----------------------------------------------------------------------------


def test_upload_seal_verify_download_on_s3(api_client, version, editor_auth, s3, bucket):
    big = random_bytes(9 * MiB + 7)  # above boto3's multipart threshold (8 MiB)
    small = (FIXTURES / "onnx" / "model.onnx").read_bytes()
    assert put_file(api_client, version, "weights/big.bin", big, editor_auth).status_code == 201
    response = put_file(api_client, version, "onnx/model.onnx", small, editor_auth, sha256(small))
    assert response.status_code == 201
    assert multipart_uploads(s3, bucket) == []

    assert api_client.post(seal_url(version), **editor_auth).status_code == 202
    verified = version_verify(version_id=version.pk)

    assert verified.status == VersionStatus.READY, verified.status_reason
    assert verified.framework == "onnx"
    assert verified.bytes_verified == len(big) + len(small)
    by_path = {artifact.path: artifact for artifact in Artifact.objects.filter(version=version)}
    assert by_path["weights/big.bin"].sha256 == sha256(big)
    assert by_path["onnx/model.onnx"].sha256 == sha256(small)
    keys = object_keys(s3, bucket)
    assert keys == sorted(f"{PREFIX}/{artifact.storage_key}" for artifact in by_path.values())
    pattern = re.compile(
        rf"{PREFIX}/models/{version.model_id}/versions/{version.pk}/[0-9a-f]{{32}}"
    )
    assert all(pattern.fullmatch(key) for key in keys)
    assert not any("big" in key or "onnx" in key for key in keys)

    response = api_client.get(file_url(version, "weights/big.bin"), **editor_auth)
    assert response.status_code == 200
    assert response["X-Content-SHA256"] == sha256(big)
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"].startswith('attachment; filename="big.bin"')
    assert body_of(response) == big
    assert body_of(api_client.get(file_url(version, "onnx/model.onnx"), **editor_auth)) == small


def test_detection_reads_the_zip_directory_with_ranged_gets(
    api_client, version, editor_auth, bucket
):
    model = (FIXTURES / "pytorch" / "model.pt").read_bytes()
    put_file(api_client, version, "model.pt", model, editor_auth)
    assert Artifact.objects.get().kind["framework"] == "pytorch"


# --- Never overwrite ------------------------------------------------------------------------


def test_settings_never_overwrite_on_s3(monkeypatch, bucket):
    monkeypatch.setenv("REGENT_ARTIFACTS", "s3://some-bucket/some/prefix")
    configured = settings_module._artifact_storage()
    assert configured["BACKEND"] == "storages.backends.s3.S3Storage"
    assert configured["OPTIONS"]["file_overwrite"] is False
    assert artifact_storage().file_overwrite is False


def test_an_existing_key_is_never_overwritten(version, s3, bucket):
    key = new_storage_key(version)
    save_stream(key, io.BytesIO(b"first"))
    with pytest.raises(StorageKeyTaken):
        save_stream(key, io.BytesIO(b"second"))
    body = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")["Body"].read()
    assert body == b"first"
    assert object_keys(s3, bucket) == [f"{PREFIX}/{key}"]


def test_same_name_in_two_versions_gets_two_objects(ml_model, version, editor, s3, bucket):
    from apps.registry.services import version_create

    other = version_create(actor=editor, model=ml_model)
    for target, data in ((version, b"one"), (other, b"two")):
        artifact_upload(actor=editor, version=target, path="model.pt", stream=io.BytesIO(data))
    first, second = Artifact.objects.order_by("pk")
    assert first.storage_key != second.storage_key
    assert s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{first.storage_key}")["Body"].read() == (
        b"one"
    )
    assert s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{second.storage_key}")["Body"].read() == (
        b"two"
    )


# --- Refused and broken uploads leave nothing -----------------------------------------------


def test_oversize_upload_leaves_no_object_or_multipart(version, editor, s3, bucket, settings):
    settings.REGENT_MAX_ARTIFACT_BYTES = 12 * MiB
    stream = io.BytesIO(random_bytes(20 * MiB))
    with pytest.raises(Exception) as raised:
        artifact_upload(actor=editor, version=version, path="big.bin", stream=stream)
    assert getattr(raised.value, "code", None) == "too_large"
    assert object_keys(s3, bucket) == []
    assert multipart_uploads(s3, bucket) == []
    assert not Artifact.objects.exists()


def test_connection_reset_mid_multipart_leaves_nothing(version, editor, s3, bucket):
    with pytest.raises(UploadIncomplete):
        artifact_upload(
            actor=editor,
            version=version,
            path="w.bin",
            stream=BreaksAfter(10 * MiB),
            content_length=30 * MiB,
        )
    assert object_keys(s3, bucket) == []
    assert multipart_uploads(s3, bucket) == []


@pytest.mark.parametrize("raw", ["..%2Fx", "%252e%252e%252fx", "a%5C..%5Cx", "%2Fetc%2Fpasswd"])
def test_traversal_spellings_are_refused_on_s3_too(
    api_client, version, editor_auth, s3, bucket, raw
):
    response = put_file(api_client, version, raw, b"evil", editor_auth)
    assert response.status_code == 422
    assert object_keys(s3, bucket) == []


# --- Corruption of the stored object -------------------------------------------------------


def test_scrub_detects_an_object_changed_in_the_bucket(
    api_client, version, editor_auth, s3, bucket
):
    put_file(api_client, version, "a.bin", b"original", editor_auth)
    api_client.post(seal_url(version), **editor_auth)
    assert version_verify(version_id=version.pk).status == VersionStatus.READY
    s3.put_object(Bucket=bucket, Key=object_of(version, "a.bin"), Body=b"tampered")

    result = scrub_artifacts()

    assert result.corrupted == [version.pk]
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert "checksum mismatch for a.bin" in version.status_reason
    assert events("version.corrupted") == 1
    assert api_client.get(file_url(version, "a.bin"), **editor_auth).status_code == 409


def test_download_of_a_tampered_object_aborts(api_client, version, editor_auth, s3, bucket):
    data = random_bytes(3 * MiB)
    put_file(api_client, version, "w.bin", data, editor_auth)
    api_client.post(seal_url(version), **editor_auth)
    version_verify(version_id=version.pk)
    s3.put_object(Bucket=bucket, Key=object_of(version, "w.bin"), Body=data[:-1] + b"!")

    response = api_client.get(file_url(version, "w.bin"), **editor_auth)
    received = bytearray()
    with pytest.raises(ArtifactCorrupted):
        for chunk in response.streaming_content:
            received += chunk
    assert len(received) < len(data)
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED


def test_verify_reports_a_missing_object(api_client, version, editor_auth, s3, bucket):
    put_file(api_client, version, "gone.bin", b"gone", editor_auth)
    api_client.post(seal_url(version), **editor_auth)
    s3.delete_object(Bucket=bucket, Key=object_of(version, "gone.bin"))
    failed = version_verify(version_id=version.pk)
    assert failed.status == VersionStatus.FAILED
    assert failed.status_reason == "missing file gone.bin"


def test_orphan_sweep_on_s3(api_client, version, editor_auth, s3, bucket):
    put_file(api_client, version, "kept.bin", b"kept", editor_auth)
    orphan = new_storage_key(version)
    save_stream(orphan, io.BytesIO(b"orphan"))

    assert sweep_orphan_objects(grace=timedelta(hours=1)) == 0  # too young to judge
    assert sweep_orphan_objects(grace=timedelta(seconds=-60)) == 1

    assert not object_exists(orphan)
    assert object_keys(s3, bucket) == [object_of(version, "kept.bin")]


def test_fixture_storage_is_s3(bucket):
    assert type(artifact_storage()).__name__ == "S3Storage"
    assert artifact_storage().location == PREFIX
