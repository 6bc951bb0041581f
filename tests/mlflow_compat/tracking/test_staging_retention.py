"""Retention of the files MLflow runs log: expired after REGENT_MLFLOW_STAGING_DAYS (audited,
objects deleted after commit), registered versions keep their own copies, staging objects
without a row are swept after the orphan grace."""

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.mlflow_compat import tasks
from apps.mlflow_compat.models import StagedFile
from apps.mlflow_compat.staging import STAGING_PREFIX, staged_files_expire
from apps.registry.models import ModelVersion, VersionStatus
from apps.registry.services import model_create
from tests.mlflow_compat.tracking.conftest import (
    get_artifact,
    new_run,
    put_file,
    run_queued_tasks,
    staged_objects,
    stored_files,
)

pytestmark = pytest.mark.django_db


def age(days: int, *paths: str) -> None:
    """Make the staged files at `paths` (their run-relative paths) `days` old."""
    moment = timezone.now() - timedelta(days=days)
    StagedFile.objects.filter(path__in=paths).update(created_at=moment)


def logged_run(http, *files: tuple[str, bytes]) -> str:
    run_id = new_run(http)["run_id"]
    for path, data in files:
        assert put_file(http, f"0/{run_id}/artifacts/{path}", data).status_code == 200
    return run_id


def test_files_past_retention_go_with_one_audit_event(
    as_alice, artifact_root, settings, django_capture_on_commit_callbacks
):
    settings.REGENT_MLFLOW_STAGING_DAYS = 30
    run_id = logged_run(as_alice, ("model/old.bin", b"o" * 7), ("model/new.bin", b"n" * 5))
    age(31, "model/old.bin")
    old_key = StagedFile.objects.get(path="model/old.bin").storage_key

    with django_capture_on_commit_callbacks(execute=True):
        assert staged_files_expire() == 1

    assert list(StagedFile.objects.values_list("path", flat=True)) == ["model/new.bin"]
    assert old_key not in staged_objects(artifact_root)
    assert len(staged_objects(artifact_root)) == 1
    event = AuditEvent.objects.get(action="artifact.staging_expired")
    assert event.actor_id is None and event.actor_name == "system"
    assert event.changes["files"] == 1 and event.changes["bytes"] == 7
    assert event.changes["older_than_days"] == 30
    run_pk = StagedFile.objects.get().run_id
    assert event.changes["runs"] == [run_pk] and event.changes["logged_models"] == []
    assert get_artifact(as_alice, f"0/{run_id}/artifacts/model/old.bin").status_code == 404
    assert get_artifact(as_alice, f"0/{run_id}/artifacts/model/new.bin").status_code == 200


def test_nothing_to_expire_records_nothing(as_alice, settings):
    settings.REGENT_MLFLOW_STAGING_DAYS = 30
    logged_run(as_alice, ("model/w.bin", b"w"))
    assert staged_files_expire() == 0
    assert StagedFile.objects.count() == 1
    assert not AuditEvent.objects.filter(action="artifact.staging_expired").exists()


def test_zero_days_keeps_files_forever(as_alice, settings):
    settings.REGENT_MLFLOW_STAGING_DAYS = 0
    logged_run(as_alice, ("model/w.bin", b"w"))
    age(10_000, "model/w.bin")
    assert staged_files_expire() == 0
    assert StagedFile.objects.count() == 1


def test_a_registered_version_keeps_its_own_copies(
    as_alice, alice, artifact_root, settings, django_capture_on_commit_callbacks
):
    settings.REGENT_MLFLOW_STAGING_DAYS = 30
    run_id = logged_run(as_alice, ("model/MLmodel", b"flavors: {}\n"), ("model/w.bin", b"\x01" * 9))
    model_create(actor=alice, name="fraud")
    with django_capture_on_commit_callbacks() as queued:
        response = as_alice.post(
            "/model-versions/create", {"name": "fraud", "source": f"runs:/{run_id}/model"}
        )
    assert response.status_code == 200, response.content
    run_queued_tasks(queued, django_capture_on_commit_callbacks)
    age(31, "model/MLmodel", "model/w.bin")

    with django_capture_on_commit_callbacks(execute=True):
        assert staged_files_expire() == 2

    assert staged_objects(artifact_root) == []
    version = ModelVersion.objects.get()
    assert version.status == VersionStatus.READY
    kept = [name for name in stored_files(artifact_root) if name.startswith("models/")]
    assert len(kept) == version.files.count() == 2
    download = as_alice.client.get(
        "/api/2.0/mlflow-artifacts/artifacts/registry/fraud/1/w.bin", **as_alice.headers
    )
    assert download.status_code == 200


def write_object(root: Path, name: str, days_old: float) -> Path:
    path = root / STAGING_PREFIX / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    moment = time.time() - days_old * 86400
    os.utime(path, (moment, moment))
    return path


def test_staging_objects_without_a_row_are_swept_after_the_grace(as_alice, artifact_root):
    logged_run(as_alice, ("model/w.bin", b"w"))
    referenced = artifact_root / StagedFile.objects.get().storage_key
    os.utime(referenced, (time.time() - 3 * 86400,) * 2)  # old, but its row is there
    crashed = write_object(artifact_root, "0" * 32, days_old=2)
    in_flight = write_object(artifact_root, "1" * 32, days_old=0)

    staged_files_expire()

    assert referenced.exists() and in_flight.exists()
    assert not crashed.exists()


def test_the_sweep_runs_hourly_from_beat():
    entry = settings.CELERY_BEAT_SCHEDULE["expire-mlflow-staging"]
    assert entry["task"] == tasks.staging_expire_task.name
    assert entry["schedule"] == 3600
