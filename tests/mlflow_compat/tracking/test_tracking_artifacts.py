"""mlflow-artifacts over raw HTTP: path attacks, size limits, replacing files, registering a
version from logged files, and registered versions' files through the artifact proxy."""

import io
from typing import Any
from unittest.mock import patch

import pytest
from celery.exceptions import Retry

from apps.accounts.models import User
from apps.audit.models import AuditEvent
from apps.mlflow_compat.models import Run, StagedFile
from apps.mlflow_compat.staging import import_staged_files
from apps.mlflow_compat.tasks import MAX_RETRIES, import_staged_files_task
from apps.registry.artifacts import artifact_upload, version_seal, version_verify
from apps.registry.models import Artifact, ModelVersion, RegisteredModel, VersionStatus
from apps.registry.services import model_create, version_create
from tests.mlflow_compat.conftest import MlflowHttp, assert_error
from tests.mlflow_compat.tracking.conftest import (
    ARTIFACTS,
    assert_nothing_staged,
    body_of,
    get_artifact,
    list_artifacts,
    log_batch,
    metric,
    new_logged_model,
    new_run,
    put_file,
    run_queued_tasks,
    sha256,
    staged_objects,
    stored_files,
)

pytestmark = pytest.mark.django_db

# --- 4. Artifact path attacks -------------------------------------------------------------------

LONG_SEGMENT = "a" * 256
LONG_PATH = "/".join(["abcdefghij"] * 100)


DOTS = r".*'\.' and '\.\.' path parts are not allowed"


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("/../x", DOTS),
        ("/model/../../../../etc/passwd", DOTS),
        ("/%2e%2e/x", DOTS),  # the URL layer decodes once: `..` reaches the validator
        ("/model/%2E%2E/%2e%2e/x", DOTS),
        ("/%252e%252e/x", r".*percent-encoded.*"),  # decoded twice by a careless client
        ("/model\\..\\..\\x", r".*backslashes are not allowed.*"),
        ("/model%5cx", r".*backslashes are not allowed.*"),
        ("//etc/passwd", r".*absolute paths are not allowed.*"),
        ("/C:/x", r".*drive letters.*"),
        ("/model/a%00b", r".*control characters.*U\+0000.*"),
        ("/model//w", r".*empty path parts.*"),
        ("/./x", DOTS),
        ("/model/...", r".*may not start or end with a space or end with a dot"),
        ("/model/%EF%BC%8E%EF%BC%8E/x", r".*U\+FF0E looks like.*"),
        (f"/{LONG_SEGMENT}", r".*longer than 255 bytes"),
        (f"/{LONG_PATH}", r".*the limit is 1024"),
        ("", r"The artifact path must name a file\."),
        ("/", r"The artifact path must name a file\."),
    ],
)
def test_artifact_path_attacks_store_nothing(as_alice, artifact_root, suffix, message):
    run_id = new_run(as_alice)["run_id"]
    response = put_file(as_alice, f"0/{run_id}/artifacts{suffix}", b"payload")
    assert_error(response, 400, "INVALID_PARAMETER_VALUE", message)
    assert_nothing_staged(artifact_root)


@pytest.mark.parametrize(
    "location",
    [
        "{other}/{run}/artifacts/x",  # the run is real, the experiment is not its own
        "0/{run}/x",
        "0/{run}/artifacts-x/x",
        "0/{RUN}/artifacts/x",
        "0/models/{run}/artifacts/x",
        "../0/{run}/artifacts/x",
        "registry/fraud/1/x",
        "x",
    ],
)
def test_artifact_puts_outside_a_run_store_nothing(as_alice, artifact_root, location):
    other = as_alice.post("/experiments/create", {"name": "other"}).json()["experiment_id"]
    run_id = new_run(as_alice)["run_id"]
    path = location.format(other=other, run=run_id, RUN=run_id.upper())
    response = put_file(as_alice, path, b"payload")
    assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST", r"No such artifact location\.")
    assert_nothing_staged(artifact_root)


# --- 5. The size limit ----------------------------------------------------------------------------


def chunked(data: bytes) -> dict[str, Any]:
    """WSGI environ of a chunked upload (no Content-Length), as gunicorn presents it."""
    return {
        "CONTENT_LENGTH": "",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": io.BytesIO(data),
        "wsgi.input_terminated": True,
    }


def test_declared_length_over_the_limit_is_413(as_alice, artifact_root, settings):
    settings.REGENT_MAX_ARTIFACT_BYTES = 10
    run_id = new_run(as_alice)["run_id"]
    response = put_file(as_alice, f"0/{run_id}/artifacts/big", b"x" * 11)
    assert_error(response, 413, "INVALID_PARAMETER_VALUE", r".*limit of 10 bytes.*")
    assert_nothing_staged(artifact_root)
    assert put_file(as_alice, f"0/{run_id}/artifacts/fits", b"x" * 10).status_code == 200


def test_a_body_over_the_limit_is_413(as_alice, artifact_root, settings):
    settings.REGENT_MAX_ARTIFACT_BYTES = 10
    run_id = new_run(as_alice)["run_id"]
    response = put_file(as_alice, f"0/{run_id}/artifacts/big", b"", **chunked(b"x" * 11))
    assert_error(response, 413, "INVALID_PARAMETER_VALUE", r".*limit of 10 bytes.*")
    assert_nothing_staged(artifact_root)
    fits = put_file(as_alice, f"0/{run_id}/artifacts/fits", b"", **chunked(b"y" * 10))
    assert fits.status_code == 200, fits.content
    assert StagedFile.objects.get().sha256 == sha256(b"y" * 10)


# --- 6. Replacing a file ------------------------------------------------------------------------


def test_uploading_the_same_path_replaces_the_file(
    as_alice, artifact_root, django_capture_on_commit_callbacks
):
    run_id = new_run(as_alice)["run_id"]
    path = f"0/{run_id}/artifacts/model/w.bin"
    with django_capture_on_commit_callbacks(execute=True):
        assert put_file(as_alice, path, b"old").status_code == 200
    old = StagedFile.objects.get()
    assert staged_objects(artifact_root) == [old.storage_key]
    with django_capture_on_commit_callbacks(execute=True):
        assert put_file(as_alice, f"0/{run_id}/artifacts/model/W.bin", b"newer").status_code == 200
    new = StagedFile.objects.get()
    assert (new.path, new.size, new.sha256) == ("model/W.bin", 5, sha256(b"newer"))
    assert new.storage_key != old.storage_key
    assert staged_objects(artifact_root) == [new.storage_key]
    assert body_of(get_artifact(as_alice, f"0/{run_id}/artifacts/model/W.bin")) == b"newer"


# --- 8. Registration ----------------------------------------------------------------------------


def test_run_upload_and_register(as_alice, alice, django_capture_on_commit_callbacks):
    info = new_run(as_alice)
    base = f"0/{info['run_id']}/artifacts"
    assert info["artifact_uri"] == f"mlflow-artifacts:/{base}"
    assert put_file(as_alice, f"{base}/model/MLmodel", b"flavors: {}\n").status_code == 200
    assert put_file(as_alice, f"{base}/model/w.bin", b"\x00" * 10).status_code == 200
    model_create(actor=alice, name="fraud")
    with django_capture_on_commit_callbacks() as queued:
        response = as_alice.post(
            "/model-versions/create",
            {"name": "fraud", "source": f"runs:/{info['run_id']}/model"},
        )
    assert response.status_code == 200, response.content
    assert response.json()["model_version"]["status"] == "PENDING_REGISTRATION"
    run_queued_tasks(queued, django_capture_on_commit_callbacks)
    version = ModelVersion.objects.get()
    assert version.status == VersionStatus.READY, version.status_reason
    assert sorted(version.files.values_list("path", flat=True)) == ["MLmodel", "w.bin"]
    assert StagedFile.objects.count() == 2
    assert Run.objects.get().owner == alice


def register(http: MlflowHttp, capture, name: str, source: str) -> tuple[dict, list]:
    """Create a version from `source`, returning the answer and the callbacks commit queues."""
    with capture() as queued:
        response = http.post("/model-versions/create", {"name": name, "source": source})
    assert response.status_code == 200, response.content
    return response.json()["model_version"], queued


def assert_ready_with_staged_files(version: ModelVersion, expected: dict[str, StagedFile]) -> None:
    version.refresh_from_db()
    assert version.status == VersionStatus.READY, version.status_reason
    copied = {a.path: a.sha256 for a in version.files.all()}
    assert copied == {path: staged.sha256 for path, staged in expected.items()}


def test_registering_a_logged_model_by_models_uri(
    as_alice, alice, django_capture_on_commit_callbacks
):
    run_id = new_run(as_alice)["run_id"]
    log_batch(as_alice, run_id, metrics=[metric("auc", 0.9)], params=[{"key": "C", "value": "1"}])
    params = [{"key": "C", "value": "2"}, {"key": "solver", "value": "lbfgs"}]
    model_id = new_logged_model(as_alice, run_id, params=params)["model_id"]
    base = f"0/models/{model_id}/artifacts"
    assert put_file(as_alice, f"{base}/MLmodel", b"flavors: {}\n").status_code == 200
    assert put_file(as_alice, f"{base}/data/w.bin", b"\x02" * 9).status_code == 200
    model_create(actor=alice, name="fraud")
    body, queued = register(
        as_alice, django_capture_on_commit_callbacks, "fraud", f"models:/{model_id}"
    )
    assert body["status"] == "PENDING_REGISTRATION"
    assert body["status_message"] == "Copying 2 files from the MLflow run."
    assert body["run_id"] == run_id
    run_queued_tasks(queued, django_capture_on_commit_callbacks)
    version = ModelVersion.objects.get()
    staged = {s.path: s for s in StagedFile.objects.all()}
    assert_ready_with_staged_files(version, staged)
    assert version.metrics == {"auc": 0.9}
    assert version.params == {"C": "2", "solver": "lbfgs"}  # the logged model's win
    event = AuditEvent.objects.get(action="version.created")
    assert event.changes["after"]["metrics"] == {"auc": 0.9}


def test_registering_by_mlflow_artifacts_uri_takes_the_folder(
    as_alice, alice, django_capture_on_commit_callbacks
):
    run_id = new_run(as_alice)["run_id"]
    base = f"0/{run_id}/artifacts"
    for path, data in {"model/MLmodel": b"m", "model/sub/w": b"ww", "other.txt": b"o"}.items():
        assert put_file(as_alice, f"{base}/{path}", data).status_code == 200
    model_create(actor=alice, name="fraud")
    body, queued = register(
        as_alice, django_capture_on_commit_callbacks, "fraud", f"mlflow-artifacts:/{base}/model"
    )
    assert body["status_message"] == "Copying 2 files from the MLflow run."
    run_queued_tasks(queued, django_capture_on_commit_callbacks)
    staged = StagedFile.objects.filter(path__startswith="model/")
    expected = {s.path.removeprefix("model/"): s for s in staged}
    assert_ready_with_staged_files(ModelVersion.objects.get(), expected)


def test_registering_runs_uri_falls_back_to_the_runs_logged_model(
    as_alice, alice, django_capture_on_commit_callbacks
):
    run_id = new_run(as_alice)["run_id"]
    log_batch(
        as_alice,
        run_id,
        metrics=[
            metric("auc", 0.7, step=1, timestamp=1),
            metric("auc", 0.95, step=9, timestamp=2),
            metric("auc", 0.5, step=3, timestamp=999),  # later, at a lower step: not latest
            metric("loss", 0.4, step=0, timestamp=1),
            metric("loss", 0.2, step=0, timestamp=5),
        ],
        params=[{"key": "lr", "value": "0.01"}],
    )
    model_id = new_logged_model(as_alice, run_id)["model_id"]
    assert put_file(as_alice, f"0/{run_id}/artifacts/other/x", b"x").status_code == 200
    assert put_file(as_alice, f"0/models/{model_id}/artifacts/MLmodel", b"m").status_code == 200
    model_create(actor=alice, name="fraud")
    body, queued = register(
        as_alice, django_capture_on_commit_callbacks, "fraud", f"runs:/{run_id}/model"
    )
    assert body["status_message"] == "Copying 1 file from the MLflow run."
    pending = as_alice.get("/model-versions/get", {"name": "fraud", "version": "1"})
    assert (
        pending.json()["model_version"]["status_message"] == "Copying 1 file from the MLflow run."
    )
    run_queued_tasks(queued, django_capture_on_commit_callbacks)
    version = ModelVersion.objects.get()
    assert_ready_with_staged_files(version, {"MLmodel": StagedFile.objects.get(path="MLmodel")})
    assert version.metrics == {"auc": 0.95, "loss": 0.2}
    assert version.params == {"lr": "0.01"}
    ready = as_alice.get("/model-versions/get", {"name": "fraud", "version": "1"})
    assert ready.json()["model_version"]["status"] == "READY"


def test_registering_an_empty_location_is_refused(as_alice, alice):
    run_id = new_run(as_alice)["run_id"]
    model_create(actor=alice, name="fraud")
    response = as_alice.post(
        "/model-versions/create", {"name": "fraud", "source": f"runs:/{run_id}/model"}
    )
    assert_error(response, 400, "INVALID_PARAMETER_VALUE", r"No files were logged at .*")
    assert not ModelVersion.objects.exists()


def test_a_staged_object_gone_before_the_copy_fails_the_version(
    as_alice, alice, artifact_root, django_capture_on_commit_callbacks
):
    run_id = new_run(as_alice)["run_id"]
    assert put_file(as_alice, f"0/{run_id}/artifacts/model/MLmodel", b"m").status_code == 200
    assert put_file(as_alice, f"0/{run_id}/artifacts/model/w.bin", b"w").status_code == 200
    model_create(actor=alice, name="fraud")
    register(as_alice, django_capture_on_commit_callbacks, "fraud", f"runs:/{run_id}/model")
    gone = StagedFile.objects.get(path="model/w.bin")
    (artifact_root / gone.storage_key).unlink()
    version = ModelVersion.objects.get()
    file_ids = list(StagedFile.objects.values_list("pk", flat=True))
    import_staged_files(version_id=version.pk, actor=alice, file_ids=file_ids, prefix="model")
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert "model/w.bin" in version.status_reason
    assert AuditEvent.objects.filter(action="version.failed").count() == 1
    answer = as_alice.get("/model-versions/get", {"name": "fraud", "version": "1"})
    assert answer.json()["model_version"]["status"] == "FAILED_REGISTRATION"
    assert "model/w.bin" in answer.json()["model_version"]["status_message"]


def test_storage_that_keeps_failing_fails_the_version_once_retries_run_out(
    as_alice, alice, django_capture_on_commit_callbacks
):
    run_id = new_run(as_alice)["run_id"]
    assert put_file(as_alice, f"0/{run_id}/artifacts/model/MLmodel", b"m").status_code == 200
    model_create(actor=alice, name="fraud")
    register(as_alice, django_capture_on_commit_callbacks, "fraud", f"runs:/{run_id}/model")
    version = ModelVersion.objects.get()
    file_ids = list(StagedFile.objects.values_list("pk", flat=True))
    broken = patch(
        "apps.mlflow_compat.tasks.import_staged_files", side_effect=OSError("bucket unreachable")
    )
    args = (version.pk, alice.pk, file_ids, "model")
    with broken, pytest.raises(Retry):  # not the last attempt: retried, still pending
        import_staged_files_task.apply(args, retries=0, throw=True)
    assert ModelVersion.objects.get().status == VersionStatus.PENDING
    with broken:
        import_staged_files_task.apply(args, retries=MAX_RETRIES, throw=True)
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert "bucket unreachable" in version.status_reason


# --- 9. Registered versions through the artifact proxy ------------------------------------------


@pytest.fixture
def ready_version(alice: User) -> ModelVersion:
    """Alice's `fraud` version 1, uploaded, sealed and verified through the registry services."""
    model = model_create(actor=alice, name="fraud")
    version = version_create(actor=alice, model=model)
    for path, data in {"MLmodel": b"flavors: {}\n", "weights/model.bin": b"\x07" * 20}.items():
        artifact_upload(actor=alice, version=version, path=path, stream=io.BytesIO(data))
    version_seal(actor=alice, version=version)
    version_verify(version_id=version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY, version.status_reason
    return version


def test_download_uri_points_at_the_artifact_proxy(as_alice, ready_version):
    response = as_alice.get("/model-versions/get-download-uri", {"name": "fraud", "version": "1"})
    assert response.json() == {"artifact_uri": f"http://testserver{ARTIFACTS}/registry/fraud/1"}


def test_registry_files_are_listed_and_downloaded(as_alice, ready_version):
    assert list_artifacts(as_alice, "registry/fraud/1").json()["files"] == [
        {"path": "MLmodel", "is_dir": False, "file_size": 12},
        {"path": "weights", "is_dir": True},
    ]
    assert list_artifacts(as_alice, "registry/fraud/1/weights").json()["files"] == [
        {"path": "model.bin", "is_dir": False, "file_size": 20}
    ]
    response = get_artifact(as_alice, "registry/fraud/1/weights/model.bin")
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment")
    assert body_of(response) == b"\x07" * 20
    assert response["X-Content-SHA256"] == sha256(b"\x07" * 20)


def test_an_outsider_sees_registry_files_as_missing(as_bob, ready_version):
    for suffix in ("", "/MLmodel", "/weights"):
        hidden = get_artifact(as_bob, f"registry/fraud/1{suffix}")
        absent = get_artifact(as_bob, f"registry/no-such/1{suffix}")
        assert_error(hidden, 404, "RESOURCE_DOES_NOT_EXIST")
        assert (hidden.status_code, hidden.content) == (absent.status_code, absent.content)
        hidden = list_artifacts(as_bob, f"registry/fraud/1{suffix}")
        absent = list_artifacts(as_bob, f"registry/no-such/1{suffix}")
        assert_error(hidden, 404, "RESOURCE_DOES_NOT_EXIST")
        assert (hidden.status_code, hidden.content) == (absent.status_code, absent.content)


def test_an_unverified_version_is_not_served(as_alice, alice):
    model = model_create(actor=alice, name="fraud")
    version = version_create(actor=alice, model=model)
    artifact_upload(actor=alice, version=version, path="MLmodel", stream=io.BytesIO(b"m"))
    response = get_artifact(as_alice, "registry/fraud/1/MLmodel")
    assert_error(response, 409, "RESOURCE_CONFLICT", r"The version is not verified yet\.")
    version_seal(actor=alice, version=version)
    response = get_artifact(as_alice, "registry/fraud/1/MLmodel")
    assert_error(response, 409, "RESOURCE_CONFLICT", r"The version is not verified yet\.")


def test_nothing_can_be_put_into_the_registry(as_alice, ready_version, artifact_root):
    before = stored_files(artifact_root)
    for path in ("registry/fraud/1/evil", "registry/fraud/1/MLmodel", "registry/fraud/2/x"):
        response = put_file(as_alice, path, b"evil")
        assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST")
    assert stored_files(artifact_root) == before
    assert not StagedFile.objects.exists()
    assert Artifact.objects.count() == 2
    assert body_of(get_artifact(as_alice, "registry/fraud/1/MLmodel")) == b"flavors: {}\n"
    assert RegisteredModel.objects.get().versions.count() == 1
