"""A training script written for MLflow, pointed at Regent: runs, logged files, registration.

The stock client (mlflow-skinny, unchanged) logs params, metrics and files to Regent as its
tracking server, then registers a version from them: the files are copied into the version
and verified, the run's metrics and params become the version's metadata.
"""

import os
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from apps.audit.models import AuditEvent
from apps.mlflow_compat.models import LoggedModel, Run, StagedFile
from apps.mlflow_compat.tasks import import_staged_files_task
from apps.registry.models import ModelVersion, VersionStatus
from apps.registry.services import model_create
from apps.registry.tasks import version_verify_task
from tests.conftest import make_user
from tests.mlflow_compat.conftest import token_of
from tests.mlflow_compat.test_client import connect, offline_mlflow  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

MLMODEL = b"flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n"
WEIGHTS = b"\x00\x01weights" * 1000


def write_model_dir(root: Path) -> Path:
    model_dir = root / "model"
    (model_dir / "data").mkdir(parents=True)
    (model_dir / "MLmodel").write_bytes(MLMODEL)
    (model_dir / "data" / "weights.bin").write_bytes(WEIGHTS)
    (model_dir / "requirements.txt").write_text("scikit-learn==1.5.0\n")
    return model_dir


@pytest.fixture
def tracking(connect, live_server, monkeypatch):  # noqa: F811
    """The module-level `mlflow` API pointed at Regent, as a training script's would be.

    Tasks run in the request thread here (no worker): the copy and the verification are done
    by the time `create_model_version` answers. tests/e2e covers the waiting with a worker.
    """
    for task in (import_staged_files_task, version_verify_task):
        monkeypatch.setattr(task, "delay", task)

    def as_user(token: str) -> None:
        connect(token=token)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", live_server.url)

    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    yield as_user
    while mlflow.active_run():
        mlflow.end_run()
    # set_experiment sets a module global and an environment variable: undo both.
    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_run_files_register_as_a_verified_version_with_metrics(tracking, alice, tmp_path):
    tracking(token_of(alice))
    model_dir = write_model_dir(tmp_path)
    with mlflow.start_run(run_name="nightly") as run:
        mlflow.log_params({"C": 1.0, "solver": "lbfgs"})
        mlflow.log_metric("accuracy", 0.91, step=0)
        mlflow.log_metric("accuracy", 0.93, step=1)
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        result = mlflow.register_model(f"runs:/{run.info.run_id}/model", "fraud")

    assert result.version == "1"
    assert result.status == "READY"
    version = ModelVersion.objects.get(model__name="fraud", number=1)
    assert version.status == VersionStatus.READY
    assert not version.external_artifacts
    assert version.metrics == {"accuracy": 0.93}
    assert version.params == {"C": "1.0", "solver": "lbfgs"}
    # The client resolves runs:/ to the run's artifact location before it calls Regent.
    artifacts = f"mlflow-artifacts:/0/{run.info.run_id}/artifacts/model"
    assert version.source == {"uri": artifacts, "run_id": run.info.run_id}
    files = {artifact.path: artifact for artifact in version.files.all()}
    assert set(files) == {"MLmodel", "data/weights.bin", "requirements.txt"}
    assert files["data/weights.bin"].size == len(WEIGHTS)
    assert all(artifact.sha256 and artifact.verified_at for artifact in files.values())
    actions = list(
        AuditEvent.objects.filter(target_id=str(version.pk), target_type="registry.modelversion")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["version.created", "version.sealed", "version.ready"]
    client = mlflow.MlflowClient()
    assert client.get_run(run.info.run_id).data.metrics == {"accuracy": 0.93}
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert [(point.step, point.value) for point in history] == [(0, 0.91), (1, 0.93)]
    listed = {item.path for item in client.list_artifacts(run.info.run_id, "model")}
    assert listed == {"model/MLmodel", "model/data", "model/requirements.txt"}


def test_logged_model_registers_through_models_uri(tracking, alice, tmp_path):
    tracking(token_of(alice))
    client = mlflow.MlflowClient()
    model_dir = write_model_dir(tmp_path)
    with mlflow.start_run() as run:
        mlflow.log_metric("auc", 0.97)
        logged = client.create_logged_model(
            experiment_id="0", name="model", source_run_id=run.info.run_id
        )
        client.log_model_artifacts(logged.model_id, str(model_dir))
        client.finalize_logged_model(logged.model_id, "READY")
    model_create(actor=alice, name="fraud")
    version = client.create_model_version(
        "fraud", f"models:/{logged.model_id}", run_id=run.info.run_id, model_id=logged.model_id
    )
    assert version.status == "READY"
    stored = ModelVersion.objects.get(model__name="fraud", number=1)
    assert stored.metrics == {"auc": 0.97}
    assert sorted(stored.files.values_list("path", flat=True)) == [
        "MLmodel",
        "data/weights.bin",
        "requirements.txt",
    ]
    assert client.get_logged_model(logged.model_id).status.to_int() > 0


def test_a_source_outside_regent_stays_external(tracking, alice):
    tracking(token_of(alice))
    model_create(actor=alice, name="fraud")
    version = mlflow.MlflowClient().create_model_version(
        "fraud", f"runs:/{'a' * 32}/model", run_id="a" * 32
    )
    assert version.status == "READY"
    assert ModelVersion.objects.get(model__name="fraud").external_artifacts


def test_another_users_run_is_invisible_and_not_registrable(tracking, alice, tmp_path):
    tracking(token_of(alice))
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(write_model_dir(tmp_path)), artifact_path="model")
    run_id = run.info.run_id

    bob = make_user("bob")
    tracking(token_of(bob))
    client = mlflow.MlflowClient()
    with pytest.raises(MlflowException) as missing:
        client.get_run(run_id)
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as listing:
        client.list_artifacts(run_id, "model")
    assert listing.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    model_create(actor=bob, name="bobs")
    version = client.create_model_version("bobs", f"runs:/{run_id}/model", run_id=run_id)
    # Bob's version only records the source: alice's files never reach it.
    stored = ModelVersion.objects.get(model__name="bobs")
    assert version.status == "READY" and stored.external_artifacts
    assert not stored.files.exists()
    assert StagedFile.objects.filter(run__run_id=run_id).count() == 3


def test_registering_an_empty_location_is_refused(tracking, alice):
    tracking(token_of(alice))
    model_create(actor=alice, name="fraud")
    with mlflow.start_run() as run:
        pass
    with pytest.raises(MlflowException) as refused:
        mlflow.MlflowClient().create_model_version(
            "fraud", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        )
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "No files were logged" in refused.value.message
    assert not ModelVersion.objects.exists()


def test_params_are_write_once(tracking, alice):
    tracking(token_of(alice))
    with mlflow.start_run():
        mlflow.log_param("lr", "0.1")
        mlflow.log_param("lr", "0.1")
        with pytest.raises(MlflowException) as refused:
            mlflow.log_param("lr", "0.2")
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert Run.objects.get().params == {"lr": "0.1"}


def test_experiments_are_private_to_their_creator(tracking, alice):
    tracking(token_of(alice))
    experiment_id = mlflow.set_experiment("fraud-training").experiment_id
    tracking(token_of(make_user("bob")))
    client = mlflow.MlflowClient()
    assert client.get_experiment_by_name("fraud-training") is None
    with pytest.raises(MlflowException) as missing:
        client.get_experiment(experiment_id)
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    # Bob may use the same name for his own experiment.
    assert mlflow.set_experiment("fraud-training").experiment_id != experiment_id
    assert not LoggedModel.objects.exists()
