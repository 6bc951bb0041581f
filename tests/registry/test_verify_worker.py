"""A real Celery worker verifies sealed versions (Redis broker, the test database).

The seal goes through the API and its task through the broker; the worker runs in its own
process on the same storage root. Only the queue name is redirected, to the test worker's.
"""

from pathlib import Path
from typing import Any

import pytest

from apps.audit.models import AuditEvent
from apps.registry.artifacts import sweep_unverified
from apps.registry.models import Artifact, ModelVersion, VersionStatus
from apps.registry.tasks import version_verify_task

# The worker fixtures live in tests/e2e/conftest.py; importing the fixture makes it ours here.
from tests.e2e.conftest import CeleryWorker, celery_worker_factory, wait_until  # noqa: F401
from tests.registry.test_artifacts import body_of, file_url, put_file, seal_url, sha256

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(celery_worker_factory: Any, settings: Any, tmp_path: Path) -> CeleryWorker:  # noqa: F811
    """A worker and this process sharing one local artifact root."""
    root = tmp_path / "artifacts"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root)},
        },
    }
    return celery_worker_factory(extra_env={"REGENT_ARTIFACTS": str(root)})


@pytest.fixture
def to_worker(worker: CeleryWorker, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Route `version_verify_task.delay` to the worker's queue; list what was sent."""
    sent: list[int] = []

    def delay(version_id: int) -> None:
        sent.append(version_id)
        version_verify_task.apply_async((version_id,), queue=worker.queue)

    monkeypatch.setattr(version_verify_task, "delay", delay)
    return sent


def settled(version: ModelVersion) -> ModelVersion | None:
    current = ModelVersion.objects.get(pk=version.pk)
    return (
        current if current.status not in (VersionStatus.PENDING, VersionStatus.VERIFYING) else None
    )


def events(action: str) -> int:
    return AuditEvent.objects.filter(action=action).count()


def test_seal_through_the_api_and_the_worker_makes_it_ready(
    api_client, version, editor_auth, worker, to_worker
):
    files = {"weights/model.bin": b"w" * 300_000, "config/params.json": b'{"lr": 0.1}'}
    for path, data in files.items():
        assert (
            put_file(api_client, version, path, data, editor_auth, sha256(data)).status_code == 201
        )

    response = api_client.post(seal_url(version), **editor_auth)

    assert response.status_code == 202
    assert to_worker == [version.pk]
    ready = wait_until(lambda: settled(version), timeout=60)
    assert ready.status == VersionStatus.READY, ready.status_reason
    assert ready.bytes_verified == ready.bytes_total == sum(map(len, files.values()))
    for artifact in Artifact.objects.filter(version=version):
        assert artifact.sha256 == sha256(files[artifact.path])
    assert (events("artifact.verified"), events("version.ready")) == (2, 1)
    response = api_client.get(file_url(version, "weights/model.bin"), **editor_auth)
    assert body_of(response) == files["weights/model.bin"]
    assert "version_verify_task" in worker.log()


def test_duplicate_deliveries_verify_once(api_client, version, editor_auth, worker, to_worker):
    put_file(api_client, version, "a.bin", b"a" * 1000, editor_auth)
    api_client.post(seal_url(version), **editor_auth)
    version_verify_task.apply_async((version.pk,), queue=worker.queue)
    version_verify_task.apply_async((version.pk,), queue=worker.queue)

    wait_until(lambda: settled(version), timeout=60)
    wait_until(lambda: worker.log().count("succeeded") >= 3, timeout=60)
    assert (events("artifact.verified"), events("version.ready")) == (1, 1)


def test_worker_fails_a_wrong_claim(api_client, version, editor_auth, worker, to_worker):
    put_file(api_client, version, "m.pt", b"bytes", editor_auth, sha256(b"other"))
    api_client.post(seal_url(version), **editor_auth)
    failed = wait_until(lambda: settled(version), timeout=60)
    assert failed.status == VersionStatus.FAILED
    assert failed.status_reason.startswith("checksum mismatch for m.pt: claimed")


def test_broker_down_at_seal_then_the_sweep_recovers(
    api_client, version, editor_auth, worker, monkeypatch
):
    put_file(api_client, version, "a.bin", b"a", editor_auth)

    def broker_down(version_id: int) -> None:
        raise ConnectionRefusedError("redis is down")

    monkeypatch.setattr(version_verify_task, "delay", broker_down)
    assert api_client.post(seal_url(version), **editor_auth).status_code == 202
    assert ModelVersion.objects.get(pk=version.pk).status == VersionStatus.VERIFYING

    monkeypatch.setattr(
        version_verify_task,
        "delay",
        lambda version_id: version_verify_task.apply_async((version_id,), queue=worker.queue),
    )
    assert sweep_unverified(older_than_minutes=0) == 1
    assert wait_until(lambda: settled(version), timeout=60).status == VersionStatus.READY
