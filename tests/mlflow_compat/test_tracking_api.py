"""The tracking and mlflow-artifacts endpoints over raw HTTP: shapes, refusals, boundaries.

Personas: `alice` owns the runs, logged models and files; `bob` is another user with a
read-write token, who must not be able to tell alice's things from missing ones. Every test
runs on its own local storage root, so "nothing stored" is checked on disk as well as in the
database.
"""

import hashlib
import io
import math
import re
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from apps.accounts.models import TokenScope, User
from apps.audit.models import AuditEvent
from apps.mlflow_compat.models import Experiment, LoggedModel, Run, RunMetric, StagedFile
from apps.mlflow_compat.staging import STAGING_PREFIX, import_staged_files
from apps.mlflow_compat.tasks import import_staged_files_task
from apps.registry.artifacts import artifact_upload, version_seal, version_verify
from apps.registry.models import Artifact, ModelVersion, RegisteredModel, VersionStatus
from apps.registry.services import model_create, version_create
from apps.registry.tasks import version_verify_task
from tests.conftest import make_user
from tests.mlflow_compat.conftest import MlflowHttp, assert_error, bearer_header, token_of

pytestmark = pytest.mark.django_db

ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
MISSING_RUN = "0123456789abcdef0123456789abcdef"
MISSING_MODEL = f"m-{MISSING_RUN}"


@pytest.fixture(autouse=True)
def artifact_root(settings: Any, tmp_path: Path) -> Path:
    """STORAGES["artifacts"] on a fresh local folder, so leftovers can be listed on disk."""
    root = tmp_path / "artifacts"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {
                "location": str(root),
                "file_permissions_mode": 0o600,
                "directory_permissions_mode": 0o700,
            },
        },
    }
    return root


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


# --- 1. Anonymous callers ---------------------------------------------------------------------

METHODS = ("get", "post", "put", "patch", "delete")
PARAM = re.compile(r"<(?:\w+:)?(?P<name>\w+)>")
TRACKING_PREFIXES = ("experiments/", "runs/", "metrics/", "logged-models")
SAMPLE_PARAMS = {
    "model_id": MISSING_MODEL,
    "tag_key": "k",
    "artifact_path": f"0/{MISSING_RUN}/artifacts/model/MLmodel",
}


def _walk(patterns: list, prefix: str = ""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern)


def tracking_urls() -> list[str]:
    """Every tracking and mlflow-artifacts route, from the URL resolver (both prefixes)."""
    urls = set()
    for template in _walk(get_resolver().url_patterns):
        if "^" in template:
            continue
        _, mlflow, rest = template.partition("2.0/mlflow/")
        if (mlflow and rest.startswith(TRACKING_PREFIXES)) or "mlflow-artifacts/" in template:
            urls.add("/" + PARAM.sub(lambda m: SAMPLE_PARAMS[m["name"]], template))
    return sorted(urls)


def test_the_tracking_route_list_is_complete():
    urls = tracking_urls()
    for expected in (
        "/api/2.0/mlflow/runs/create",
        "/api/2.0/mlflow/runs/log-batch",
        "/api/2.0/mlflow/metrics/get-history",
        "/api/2.0/mlflow/experiments/search",
        f"/api/2.0/mlflow/logged-models/{MISSING_MODEL}/tags/k",
        "/ajax-api/2.0/mlflow/runs/get",
        ARTIFACTS,
        f"{ARTIFACTS}/0/{MISSING_RUN}/artifacts/model/MLmodel",
        "/ajax-api/2.0/mlflow-artifacts/artifacts",
    ):
        assert expected in urls
    assert len(urls) >= 2 * 22


@pytest.mark.parametrize("credentials", ["none", "bad-token", "session"])
def test_anonymous_callers_get_401_on_every_tracking_route(alice, credentials):
    client = Client()
    headers: dict[str, str] = {}
    if credentials == "bad-token":
        headers["HTTP_AUTHORIZATION"] = bearer_header("rgt_" + "x" * 40)
    if credentials == "session":  # a browser's cookie is never enough here (no CSRF check)
        client.force_login(alice)
    failures = []
    for url in tracking_urls():
        accepted = 0
        for method in METHODS:
            if method == "get":
                response = client.get(url, {"run_id": MISSING_RUN}, **headers)
            else:
                send = getattr(client, method)
                response = send(url, "{}", content_type="application/json", **headers)
            if response.status_code == 405:  # a method the route does not take
                assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"
                continue
            accepted += 1
            body = response.json() if response["Content-Type"] == "application/json" else {}
            if response.status_code != 401 or body.get("error_code") != "UNAUTHENTICATED":
                failures.append(f"{method.upper()} {url} → {response.status_code}")
            elif "Bearer" not in response.get("WWW-Authenticate", ""):
                failures.append(f"{method.upper()} {url}: no WWW-Authenticate challenge")
        if not accepted:
            failures.append(f"{url} accepts no method")
    assert not failures, "\n".join(failures)
    assert not Run.objects.exists() and not StagedFile.objects.exists()


# --- Happy path details -----------------------------------------------------------------------


def test_experiments_are_created_found_and_listed(as_alice):
    response = as_alice.post("/experiments/create", {"name": "fraud-training"})
    assert response.status_code == 200, response.content
    experiment_id = response.json()["experiment_id"]
    found = as_alice.get("/experiments/get-by-name", {"experiment_name": "fraud-training"})
    experiment = found.json()["experiment"]
    assert experiment["experiment_id"] == experiment_id
    assert experiment["artifact_location"] == f"mlflow-artifacts:/{experiment_id}"
    listed = as_alice.get("/experiments/search").json()["experiments"]
    assert [e["name"] for e in listed] == ["Default", "fraud-training"]
    again = as_alice.post("/experiments/create", {"name": "fraud-training"})
    assert_error(again, 400, "RESOURCE_ALREADY_EXISTS")
    assert AuditEvent.objects.filter(action="experiment.created").count() == 1


def test_run_get_shows_latest_metrics_params_and_tags(as_alice):
    run_id = new_run(as_alice)["run_id"]
    response = log_batch(
        as_alice,
        run_id,
        metrics=[
            metric("auc", 0.9, step=5, timestamp=10),
            metric("auc", 0.1, step=2, timestamp=99),
        ],
        params=[{"key": "C", "value": "1.0"}],
        tags=[{"key": "team", "value": "risk"}],
    )
    assert response.status_code == 200, response.content
    assert as_alice.post("/runs/log-metric", {"run_id": run_id, **metric("loss", 0.3)}).json() == {}
    run = as_alice.get("/runs/get", {"run_id": run_id}).json()["run"]
    assert run["info"]["artifact_uri"] == f"mlflow-artifacts:/0/{run_id}/artifacts"
    assert run["info"]["user_id"] == "alice"
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"auc": 0.9, "loss": 0.3}
    assert run["data"]["params"] == [{"key": "C", "value": "1.0"}]
    assert {"key": "team", "value": "risk"} in run["data"]["tags"]
    history = as_alice.get("/metrics/get-history", {"run_id": run_id, "metric_key": "auc"})
    assert [(m["step"], m["value"]) for m in history.json()["metrics"]] == [(2, 0.1), (5, 0.9)]


def test_run_update_finishes_the_run_and_is_audited(as_alice):
    run_id = new_run(as_alice)["run_id"]
    response = as_alice.post(
        "/runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": 5}
    )
    assert response.json()["run_info"]["status"] == "FINISHED"
    assert response.json()["run_info"]["end_time"] == 5
    event = AuditEvent.objects.get(action="run.updated")
    assert event.changes == {"before": {"status": "RUNNING"}, "after": {"status": "FINISHED"}}


def test_staged_files_are_listed_and_downloaded_as_attachments(as_alice, artifact_root):
    run_id = new_run(as_alice)["run_id"]
    base = f"0/{run_id}/artifacts"
    files = {"model/MLmodel": b"flavors: {}\n", "model/data/w.bin": b"\x01" * 7, "notes.txt": b"n"}
    for path, data in files.items():
        assert put_file(as_alice, f"{base}/{path}", data).json() == {}
    assert list_artifacts(as_alice, base).json()["files"] == [
        {"path": "model", "is_dir": True},
        {"path": "notes.txt", "is_dir": False, "file_size": 1},
    ]
    assert list_artifacts(as_alice, f"{base}/model").json()["files"] == [
        {"path": "MLmodel", "is_dir": False, "file_size": 12},
        {"path": "data", "is_dir": True},
    ]
    response = get_artifact(as_alice, f"{base}/model/data/w.bin")
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment")
    assert body_of(response) == b"\x01" * 7
    staged = StagedFile.objects.get(path="model/data/w.bin")
    assert (staged.size, staged.sha256) == (7, sha256(b"\x01" * 7))
    assert re.fullmatch(rf"{STAGING_PREFIX}/[0-9a-f]{{32}}", staged.storage_key)
    assert len(staged_objects(artifact_root)) == 3
    assert AuditEvent.objects.filter(action="artifact.staged").count() == 3


# --- 2. A read-only token ---------------------------------------------------------------------


def test_a_read_only_token_reads_but_changes_nothing(as_alice, alice_read_only, artifact_root):
    run_id = new_run(as_alice)["run_id"]
    base = f"0/{run_id}/artifacts"
    assert put_file(as_alice, f"{base}/a.txt", b"a").status_code == 200
    before = stored_files(artifact_root)

    refusals = [
        alice_read_only.post("/runs/create", {"experiment_id": "0"}),
        log_batch(alice_read_only, run_id, metrics=[metric("auc", 0.5)]),
        alice_read_only.post("/experiments/create", {"name": "x"}),
        alice_read_only.post("/logged-models", {"experiment_id": "0", "name": "m"}),
        put_file(alice_read_only, f"{base}/b.txt", b"b"),
        put_file(alice_read_only, f"{base}/a.txt", b"replaced"),
    ]
    for response in refusals:
        assert_error(response, 403, "PERMISSION_DENIED", r"This token is read-only.*")
    assert Run.objects.count() == 1
    assert not RunMetric.objects.exists() and not LoggedModel.objects.exists()
    assert list(StagedFile.objects.values_list("path", flat=True)) == ["a.txt"]
    assert stored_files(artifact_root) == before

    assert alice_read_only.get("/runs/get", {"run_id": run_id}).status_code == 200
    history = alice_read_only.get("/metrics/get-history", {"run_id": run_id, "metric_key": "x"})
    assert history.json() == {"metrics": []}
    assert list_artifacts(alice_read_only, base).json()["files"][0]["path"] == "a.txt"
    assert body_of(get_artifact(alice_read_only, f"{base}/a.txt")) == b"a"
    assert alice_read_only.post("/runs/search", {"experiment_ids": ["0"]}).status_code == 200


# --- 3. Another user ----------------------------------------------------------------------------


@pytest.fixture
def alices_things(as_alice: MlflowHttp) -> dict[str, str]:
    """Alice's private experiment, a run in it with a metric and a file, a logged model."""
    experiment_id = as_alice.post("/experiments/create", {"name": "fraud"}).json()["experiment_id"]
    run_id = new_run(as_alice, experiment_id)["run_id"]
    assert log_batch(as_alice, run_id, metrics=[metric("auc", 0.9)]).status_code == 200
    assert put_file(as_alice, f"{experiment_id}/{run_id}/artifacts/m/w", b"w").status_code == 200
    model_id = new_logged_model(as_alice, run_id, experiment_id=experiment_id)["model_id"]
    path = f"{experiment_id}/models/{model_id}/artifacts/MLmodel"
    assert put_file(as_alice, path, b"x").status_code == 200
    return {"experiment": experiment_id, "run": run_id, "model": model_id}


def test_another_user_reads_alices_things_as_missing_ones(as_bob, alices_things):
    experiment, run, model = (
        alices_things["experiment"],
        alices_things["run"],
        alices_things["model"],
    )
    missing_experiment = str(int(experiment) + 1000)

    def both(call, hidden: dict[str, str], absent: dict[str, str]) -> None:
        seen = call(**hidden)
        unseen = call(**absent)
        assert_error(seen, 404, "RESOURCE_DOES_NOT_EXIST")
        hidden_ids, absent_ids = list(hidden.values()), list(absent.values())
        assert without(seen, *hidden_ids) == without(unseen, *absent_ids)

    def run_get(run_id: str):
        return as_bob.get("/runs/get", {"run_id": run_id})

    def history(run_id: str):
        return as_bob.get("/metrics/get-history", {"run_id": run_id, "metric_key": "auc"})

    def model_get(model_id: str):
        return as_bob.get(f"/logged-models/{model_id}")

    def experiment_get(experiment_id: str):
        return as_bob.get("/experiments/get", {"experiment_id": experiment_id})

    def file_get(experiment_id: str, run_id: str):
        return get_artifact(as_bob, f"{experiment_id}/{run_id}/artifacts/m/w")

    def files_list(experiment_id: str, run_id: str):
        return list_artifacts(as_bob, f"{experiment_id}/{run_id}/artifacts")

    def file_put(experiment_id: str, run_id: str):
        return put_file(as_bob, f"{experiment_id}/{run_id}/artifacts/m/w", b"evil")

    def model_file_put(experiment_id: str, model_id: str):
        return put_file(as_bob, f"{experiment_id}/models/{model_id}/artifacts/MLmodel", b"e")

    def model_file_get(experiment_id: str, model_id: str):
        return get_artifact(as_bob, f"{experiment_id}/models/{model_id}/artifacts/MLmodel")

    both(run_get, {"run_id": run}, {"run_id": MISSING_RUN})
    both(history, {"run_id": run}, {"run_id": MISSING_RUN})
    both(model_get, {"model_id": model}, {"model_id": MISSING_MODEL})
    both(experiment_get, {"experiment_id": experiment}, {"experiment_id": missing_experiment})
    both(
        file_get,
        {"experiment_id": experiment, "run_id": run},
        {"experiment_id": "0", "run_id": MISSING_RUN},
    )
    both(
        files_list,
        {"experiment_id": experiment, "run_id": run},
        {"experiment_id": "0", "run_id": MISSING_RUN},
    )
    both(
        file_put,
        {"experiment_id": experiment, "run_id": run},
        {"experiment_id": "0", "run_id": MISSING_RUN},
    )
    both(
        model_file_put,
        {"experiment_id": experiment, "model_id": model},
        {"experiment_id": "0", "model_id": MISSING_MODEL},
    )
    both(
        model_file_get,
        {"experiment_id": experiment, "model_id": model},
        {"experiment_id": "0", "model_id": MISSING_MODEL},
    )
    by_name = as_bob.get("/experiments/get-by-name", {"experiment_name": "fraud"})
    assert_error(by_name, 404, "RESOURCE_DOES_NOT_EXIST")
    assert [e["name"] for e in as_bob.get("/experiments/search").json()["experiments"]] == [
        "Default"
    ]
    assert as_bob.post("/runs/search", {}).json() == {"runs": []}
    assert StagedFile.objects.count() == 2  # bob's PUTs above stored nothing


def test_another_user_cannot_write_to_alices_things(as_bob, alices_things, artifact_root):
    experiment, run, model = (
        alices_things["experiment"],
        alices_things["run"],
        alices_things["model"],
    )
    before = stored_files(artifact_root)
    responses = {
        "log-batch": log_batch(
            as_bob, run, metrics=[metric("auc", 0.1)], params=[{"key": "a", "value": "b"}]
        ),
        "update": as_bob.post("/runs/update", {"run_id": run, "status": "KILLED"}),
        "set-tag": as_bob.post("/runs/set-tag", {"run_id": run, "key": "k", "value": "v"}),
        "run in her experiment": as_bob.post("/runs/create", {"experiment_id": experiment}),
        "model in her experiment": as_bob.post(
            "/logged-models", {"experiment_id": experiment, "name": "m"}
        ),
        "model of her run": as_bob.post(
            "/logged-models", {"experiment_id": "0", "name": "m", "source_run_id": run}
        ),
        "finalize": as_bob.patch(f"/logged-models/{model}", {"status": "LOGGED_MODEL_READY"}),
        "model tags": as_bob.patch(f"/logged-models/{model}/tags", {"tags": [{"key": "k"}]}),
        "put run file": put_file(as_bob, f"{experiment}/{run}/artifacts/m/w", b"evil"),
        "put new run file": put_file(as_bob, f"{experiment}/{run}/artifacts/new", b"evil"),
        "put model file": put_file(as_bob, f"{experiment}/models/{model}/artifacts/MLmodel", b"e"),
    }
    for what, response in responses.items():
        assert response.status_code == 404, (what, response.content)
        assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", what
    assert Run.objects.count() == 1 and LoggedModel.objects.count() == 1
    run_row = Run.objects.get()
    assert (run_row.status, run_row.params, run_row.tags.get("k")) == ("RUNNING", {}, None)
    assert list(RunMetric.objects.values_list("value", flat=True)) == [0.9]
    assert LoggedModel.objects.get().status == "LOGGED_MODEL_PENDING"
    assert sorted(StagedFile.objects.values_list("path", "size")) == [("MLmodel", 1), ("m/w", 1)]
    assert stored_files(artifact_root) == before


def test_another_users_run_as_a_source_copies_nothing(as_bob, bob, alices_things):
    model_create(actor=bob, name="bobs")
    source = f"runs:/{alices_things['run']}/m"
    response = as_bob.post("/model-versions/create", {"name": "bobs", "source": source})
    assert response.status_code == 200, response.content
    version = ModelVersion.objects.get()
    assert version.external_artifacts and not version.files.exists()
    assert version.metrics == {}


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


# --- 7. log-batch -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"metrics": [metric("auc", 0.5), metric("loss", "abc")]}, r"Invalid value for metric.*"),
        ({"metrics": [metric("auc", 0.5), metric("loss", True)]}, r"Invalid value for metric.*"),
        ({"metrics": [metric("auc", 0.5), metric("bad key!", 1.0)]}, r"Invalid metric name.*"),
        ({"metrics": [metric("auc", 0.5), metric("", 1.0)]}, r"Invalid metric name.*"),
        (
            {"metrics": [metric("auc", 0.5), metric("loss", 1.0, step="x")]},
            r"Invalid value.*step.*",
        ),
        (
            {"metrics": [metric("auc", 0.5)], "params": [{"key": "C", "value": "2.0"}]},
            r"Changing param values is not allowed.*",
        ),
        (
            {"metrics": [metric("auc", 0.5)], "params": [{"key": "bad key!", "value": "1"}]},
            r"Invalid param name.*",
        ),
        (
            {"metrics": [metric("auc", 0.5)], "tags": [{"key": "bad\nkey", "value": "1"}]},
            r"Invalid tag name.*",
        ),
    ],
)
def test_a_bad_batch_stores_nothing_of_itself(as_alice, batch, message):
    run_id = new_run(as_alice)["run_id"]
    first = log_batch(as_alice, run_id, params=[{"key": "C", "value": "1.0"}])
    assert first.status_code == 200
    before = Run.objects.get()
    response = log_batch(as_alice, run_id, **batch)
    assert_error(response, 400, "INVALID_PARAMETER_VALUE", message)
    after = Run.objects.get()
    assert not RunMetric.objects.exists()
    assert (after.params, after.tags) == ({"C": "1.0"}, before.tags)


def test_a_nan_metric_is_kept_but_not_copied_into_a_version(
    as_alice, alice, django_capture_on_commit_callbacks
):
    run_id = new_run(as_alice)["run_id"]
    response = log_batch(
        as_alice,
        run_id,
        metrics=[metric("loss", "NaN"), metric("auc", 0.8), metric("x", "Infinity")],
    )
    assert response.status_code == 200, response.content
    assert math.isnan(RunMetric.objects.get(key="loss").value)
    assert put_file(as_alice, f"0/{run_id}/artifacts/model/w", b"w").status_code == 200
    model_create(actor=alice, name="fraud")
    with django_capture_on_commit_callbacks():
        response = as_alice.post(
            "/model-versions/create", {"name": "fraud", "source": f"runs:/{run_id}/model"}
        )
    assert response.status_code == 200, response.content
    assert ModelVersion.objects.get().metrics == {"auc": 0.8}


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


# --- Query budgets ------------------------------------------------------------------------------


def test_run_get_queries_do_not_grow_with_metrics(as_alice, django_assert_max_num_queries):
    run_id = new_run(as_alice)["run_id"]
    metrics = [metric(f"m{i}", float(i), step=s) for i in range(40) for s in range(3)]
    params = [{"key": f"p{i}", "value": str(i)} for i in range(40)]
    assert log_batch(as_alice, run_id, metrics=metrics, params=params).status_code == 200
    with django_assert_max_num_queries(4):  # token, run, its owner, latest metrics
        response = as_alice.get("/runs/get", {"run_id": run_id})
    assert len(response.json()["run"]["data"]["metrics"]) == 40


def test_listing_many_run_files_is_bounded(as_alice, django_assert_max_num_queries):
    run_id = new_run(as_alice)["run_id"]
    for i in range(30):
        assert put_file(as_alice, f"0/{run_id}/artifacts/model/f{i:02}", b"x").status_code == 200
    with django_assert_max_num_queries(3):  # token, run, files
        response = list_artifacts(as_alice, f"0/{run_id}/artifacts/model")
    assert len(response.json()["files"]) == 30


def test_experiment_rows_are_private(as_alice, as_bob):
    as_alice.post("/experiments/create", {"name": "shared-name"})
    response = as_bob.post("/experiments/create", {"name": "shared-name"})
    assert response.status_code == 200, response.content
    assert Experiment.objects.filter(name="shared-name").count() == 2
