"""Tracking endpoints over raw HTTP: who may call them, what they keep, what they refuse."""

import math
import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from apps.audit.models import AuditEvent
from apps.mlflow_compat.models import Experiment, LoggedModel, Run, RunMetric, StagedFile
from apps.mlflow_compat.staging import STAGING_PREFIX
from apps.registry.models import ModelVersion
from apps.registry.services import model_create
from tests.mlflow_compat.conftest import MlflowHttp, assert_error, bearer_header
from tests.mlflow_compat.tracking.conftest import (
    ARTIFACTS,
    MISSING_MODEL,
    MISSING_RUN,
    body_of,
    get_artifact,
    list_artifacts,
    log_batch,
    metric,
    new_logged_model,
    new_run,
    put_file,
    sha256,
    staged_objects,
    stored_files,
    without,
)

pytestmark = pytest.mark.django_db

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
        # MLflow's path rule: a key must not resolve to another name as a file path.
        (
            {"metrics": [metric("auc", 0.5), metric("../x", 1.0)]},
            r"Invalid metric name: '\.\./x'\. Names may be treated as files.*",
        ),
        (
            {"metrics": [metric("auc", 0.5)], "params": [{"key": "/etc/C", "value": "1"}]},
            r"Invalid param name: '/etc/C'\. .* would resolve to '/etc/C'\.",
        ),
        (
            {"metrics": [metric("auc", 0.5)], "tags": [{"key": "a//b", "value": "1"}]},
            r"Invalid tag name: 'a//b'\. .* would resolve to 'a/b'\.",
        ),
        ({"metrics": [metric("auc", 0.5)], "params": [{"key": ".", "value": "1"}]}, r"Invalid.*"),
        ({"metrics": [metric("auc", 0.5)], "params": [{"key": "a/", "value": "1"}]}, r"Invalid.*"),
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
