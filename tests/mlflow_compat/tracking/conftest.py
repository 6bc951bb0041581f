"""Fixtures and helpers for the tracking and mlflow-artifacts endpoints over raw HTTP.

Personas: `alice` owns the runs, logged models and files; `bob` is another user with a
read-write token, who must not be able to tell alice's things from missing ones. Every test
runs on its own local storage root, so "nothing stored" is checked on disk as well as in the
database.
"""

import hashlib
import re
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from django.test import Client

from apps.accounts.models import TokenScope, User
from apps.audit.models import AuditEvent
from apps.mlflow_compat.models import StagedFile
from apps.mlflow_compat.staging import STAGING_PREFIX
from apps.mlflow_compat.tasks import import_staged_files_task
from apps.registry.tasks import version_verify_task
from tests.conftest import make_user
from tests.mlflow_compat.conftest import MlflowHttp, bearer_header, token_of

ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
MISSING_RUN = "0123456789abcdef0123456789abcdef"
MISSING_MODEL = f"m-{MISSING_RUN}"


@pytest.fixture(autouse=True)
def _own_artifact_root(artifact_root: Path) -> Path:
    """Every test here on its own storage folder (tests/conftest.py `artifact_root`)."""
    return artifact_root


@pytest.fixture
def as_alice(alice, client: Client) -> MlflowHttp:
    return MlflowHttp(client, bearer_header(token_of(alice)))


@pytest.fixture
def bob(db: Any) -> User:
    return make_user("bob")


@pytest.fixture
def as_bob(bob: User) -> MlflowHttp:
    return MlflowHttp(Client(), bearer_header(token_of(bob)))


@pytest.fixture
def alice_read_only(alice: User) -> MlflowHttp:
    return MlflowHttp(Client(), bearer_header(token_of(alice, TokenScope.READ)))


def put_file(http: MlflowHttp, path: str, data: bytes, **extra: Any):
    return http.client.put(
        f"{ARTIFACTS}/{path}",
        data,
        content_type="application/octet-stream",
        **http.headers,
        **extra,
    )


def get_artifact(http: MlflowHttp, path: str):
    return http.client.get(f"{ARTIFACTS}/{path}", **http.headers)


def list_artifacts(http: MlflowHttp, path: str):
    return http.client.get(ARTIFACTS, {"path": path}, **http.headers)


def run_queued_tasks(callbacks, capture) -> None:
    """Run what commit would publish (the import, then the verification) in this process."""
    with (
        patch.object(import_staged_files_task, "delay", import_staged_files_task),
        patch.object(version_verify_task, "delay", version_verify_task),
    ):
        while callbacks:
            with capture() as more:
                for callback in callbacks:
                    callback()
            callbacks = more


def new_run(http: MlflowHttp, experiment_id: str = "0") -> dict:
    response = http.post("/runs/create", {"experiment_id": experiment_id, "start_time": 1})
    assert response.status_code == 200, response.content
    return response.json()["run"]["info"]


def new_logged_model(http: MlflowHttp, run_id: str | None = None, **extra: Any) -> dict:
    body = {"experiment_id": "0", "name": "model", **extra}
    if run_id:
        body["source_run_id"] = run_id
    response = http.post("/logged-models", body)
    assert response.status_code == 200, response.content
    return response.json()["model"]["info"]


def log_batch(http: MlflowHttp, run_id: str, **body: Any):
    return http.post("/runs/log-batch", {"run_id": run_id, **body})


def metric(key: str, value: Any, step: int = 0, timestamp: int = 1) -> dict:
    return {"key": key, "value": value, "step": step, "timestamp": timestamp}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_files(root: Path) -> list[str]:
    """Every file under the storage root, relative to it: the "nothing left" oracle."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def staged_objects(root: Path) -> list[str]:
    return [name for name in stored_files(root) if name.startswith(f"{STAGING_PREFIX}/")]


def body_of(response: Any) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def assert_nothing_staged(root: Path) -> None:
    assert not StagedFile.objects.exists()
    assert stored_files(root) == []
    assert not AuditEvent.objects.filter(action="artifact.staged").exists()


def without(response: Any, *ids: str) -> tuple[int, dict]:
    """Status and JSON body with the ids the caller sent replaced by a placeholder."""
    text = response.content.decode()
    for value in sorted(ids, key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(value)}\b", "<id>", text)
    return response.status_code, text
