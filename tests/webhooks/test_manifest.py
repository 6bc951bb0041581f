"""`GET /api/v1/models/{name}/stages/{stage}/manifest`: what a stage holds, with verified
digests and absolute download URLs; and the documented shell recipe run for real against a
live server (curl, jq, sha256sum -c).
"""

import hashlib
import io
import os
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from apps.accounts.models import TokenScope
from apps.approvals.models import Stage
from apps.approvals.services import stage_assign
from apps.registry import artifacts as artifacts_module
from apps.registry.artifacts import artifact_upload, version_seal, version_verify
from apps.registry.models import Artifact, ModelVersion, VersionStatus
from apps.registry.services import version_create
from tests.webhooks.conftest import URLS, docs_block, token_for

pytestmark = [pytest.mark.django_db, pytest.mark.urls(URLS)]

BASE = "https://regent.example.com"
FILES = {
    "weights/model.safetensors": b"\x00weights\x01" * 1000,
    "config/my config.json": b'{"layers": 12}',
    "tokenizer/vocab-\u00fc.txt": "hello\nw\u00f6rld\n".encode(),
    "README.md": b"# Fraud detector\n",
}


def manifest_url(model: str = "fraud-detector", stage: str = "production") -> str:
    return f"/api/v1/models/{model}/stages/{stage}/manifest"


@pytest.fixture(autouse=True)
def _local_storage(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Artifacts on a fresh local folder; verification is run by the test, not enqueued."""
    root = tmp_path / "artifacts"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root)},
        },
    }
    settings.REGENT_BASE_URL = BASE
    monkeypatch.setattr(artifacts_module, "enqueue_verify", lambda version_id: None)
    return root


def verified_version(owner: Any, model: Any, files: dict[str, bytes]) -> ModelVersion:
    """A version with `files`, uploaded, sealed and verified as the worker would."""
    version = version_create(actor=owner, model=model)
    for path, data in files.items():
        artifact_upload(
            actor=owner,
            version=version,
            path=path,
            stream=io.BytesIO(data),
            content_length=len(data),
        )
    version_seal(actor=owner, version=version)
    version = version_verify(version_id=version.pk)
    assert version.status == VersionStatus.READY, version.status_reason
    return version


def put_in_stage(version: ModelVersion, owner: Any, stage: str = "production") -> Stage:
    with transaction.atomic():
        return stage_assign(
            stage=Stage.objects.get(model=version.model, name=stage), version=version, actor=owner
        )


@pytest.fixture
def production(owner, ml_model) -> ModelVersion:
    version = verified_version(owner, ml_model, FILES)
    put_in_stage(version, owner)
    return version


# --- The manifest ------------------------------------------------------------------------------


def test_manifest_lists_verified_files_with_absolute_urls(
    client, production, owner_auth, django_assert_max_num_queries
):
    with django_assert_max_num_queries(12):
        response = client.get(manifest_url(), **owner_auth)
    assert response.status_code == 200, response.content
    body = response.json()
    stage = Stage.objects.get(model=production.model, name="production")
    assert {key: body[key] for key in ("model", "stage", "version", "status")} == {
        "model": "fraud-detector",
        "stage": "production",
        "version": production.number,
        "status": "ready",
    }
    since = datetime.fromisoformat(body["since"].replace("Z", "+00:00"))
    assert abs(since - stage.since) < timedelta(milliseconds=1)  # JSON keeps milliseconds
    assert [entry["path"] for entry in body["files"]] == sorted(FILES)
    for entry in body["files"]:
        data = FILES[entry["path"]]
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        prefix = f"{BASE}/api/v1/models/fraud-detector/versions/{production.number}/files/"
        assert entry["url"].startswith(prefix)
        # The URL serves exactly the bytes whose digest the manifest states.
        download = client.get(entry["url"].removeprefix(BASE), **owner_auth)
        assert download.status_code == 200
        served = b"".join(download.streaming_content)
        assert hashlib.sha256(served).hexdigest() == entry["sha256"]


def test_paths_are_percent_encoded_in_urls(client, production, owner_auth):
    files = client.get(manifest_url(), **owner_auth).json()["files"]
    urls = {entry["path"]: entry["url"] for entry in files}
    assert urls["config/my config.json"].endswith("/files/config/my%20config.json")
    assert urls["tokenizer/vocab-\u00fc.txt"].endswith("/files/tokenizer/vocab-%C3%BC.txt")


def test_manifest_follows_the_stage(client, owner, ml_model, production, owner_auth):
    newer = verified_version(owner, ml_model, {"model.onnx": b"onnx bytes"})
    put_in_stage(newer, owner)
    body = client.get(manifest_url(), **owner_auth).json()
    assert body["version"] == newer.number
    assert [entry["path"] for entry in body["files"]] == ["model.onnx"]


def test_viewers_and_read_only_tokens_may_read_it(client, production, viewer, owner):
    assert client.get(manifest_url(), **token_for(viewer)).status_code == 200
    read_only = token_for(owner, TokenScope.READ)
    assert client.get(manifest_url(), **read_only).status_code == 200


def test_outsiders_get_the_same_404_as_for_a_missing_model(client, production, outsider_auth):
    hidden = client.get(manifest_url(), **outsider_auth)
    missing = client.get(manifest_url(model="no-such-model"), **outsider_auth)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()


def test_anonymous_is_401(client, production):
    assert client.get(manifest_url()).status_code == 401


def test_empty_stage_is_404(client, production, owner_auth):
    response = client.get(manifest_url(stage="staging"), **owner_auth)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "staging holds no version."


@pytest.mark.parametrize("stage", ["canary", "Production", "a" * 40, "prod%00"])
def test_unknown_or_impossible_stage_is_404(client, production, owner_auth, stage):
    assert client.get(manifest_url(stage=stage), **owner_auth).status_code == 404


@pytest.mark.parametrize("status", [VersionStatus.FAILED, VersionStatus.VERIFYING])
def test_holder_not_ready_is_409(client, production, owner_auth, status):
    ModelVersion.objects.filter(pk=production.pk).update(
        status=status, status_reason="stored file changed after verification"
    )
    response = client.get(manifest_url(), **owner_auth)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "conflict"
    assert error["details"]["status"] == status


def test_external_artifacts_are_409(client, production, owner_auth):
    ModelVersion.objects.filter(pk=production.pk).update(external_artifacts=True)
    response = client.get(manifest_url(), **owner_auth)
    assert response.status_code == 409
    assert response.json()["error"]["details"]["external_artifacts"] is True


# --- The documented shell recipe, for real -----------------------------------------------------


def run_fetch_script(base_url: str, token: str, dest: Path, **env: str) -> Any:
    script = docs_block("#!/bin/sh", "sh")
    environment = {
        "PATH": os.environ["PATH"],
        "REGENT_URL": base_url,
        "REGENT_TOKEN": token,
        "MODEL": "fraud-detector",
        "STAGE": "production",
        "DEST": str(dest),
        **env,
    }
    return subprocess.run(
        ["sh", "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def live_production(live_server, settings, owner, ml_model) -> tuple[ModelVersion, str]:
    settings.REGENT_BASE_URL = live_server.url
    version = verified_version(owner, ml_model, FILES)
    put_in_stage(version, owner)
    return version, token_for(owner)["HTTP_AUTHORIZATION"].removeprefix("Bearer ")


@pytest.mark.django_db(transaction=True)
def test_shell_recipe_downloads_and_verifies_with_sha256sum(live_server, live_production, tmp_path):
    version, token = live_production
    dest = tmp_path / "model"
    result = run_fetch_script(live_server.url, token, dest, EXPECT_VERSION=str(version.number))
    assert result.returncode == 0, result.stderr + result.stdout
    for path, data in FILES.items():
        assert (dest / path).read_bytes() == data  # folders kept
    sums = (dest / ".regent" / "SHA256SUMS").read_text().splitlines()
    assert sorted(sums) == sorted(
        f"{hashlib.sha256(data).hexdigest()}  {path}" for path, data in FILES.items()
    )
    assert f"v{version.number} downloaded and verified" in result.stdout
    # sha256sum -c itself agrees, run again over what was written.
    check = subprocess.run(
        ["sha256sum", "-c", ".regent/SHA256SUMS"], cwd=dest, capture_output=True, check=False
    )
    assert check.returncode == 0


@pytest.mark.django_db(transaction=True)
def test_shell_recipe_refuses_another_version(live_server, live_production, tmp_path):
    version, token = live_production
    result = run_fetch_script(
        live_server.url, token, tmp_path / "model", EXPECT_VERSION=str(version.number + 1)
    )
    assert result.returncode != 0
    assert f"holds v{version.number}, not v{version.number + 1}" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_shell_recipe_fails_on_bytes_changed_in_storage(
    live_server, live_production, tmp_path, _local_storage
):
    version, token = live_production
    artifact = Artifact.objects.get(version=version, path="README.md")
    stored = _local_storage / artifact.storage_key
    stored.write_bytes(b"# Fraud detector\r")  # same size, other bytes
    result = run_fetch_script(live_server.url, token, tmp_path / "model")
    assert result.returncode != 0
    assert "verified" not in result.stdout
    # The server refused to complete the download: it re-hashes while serving (AR-12).
    assert "curl: (" in result.stderr, result.stderr
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED


@pytest.mark.django_db(transaction=True)
def test_shell_recipe_fails_on_an_empty_stage(live_server, live_production, tmp_path):
    _, token = live_production
    result = run_fetch_script(live_server.url, token, tmp_path / "model", STAGE="staging")
    assert result.returncode != 0
    assert "404" in result.stderr
