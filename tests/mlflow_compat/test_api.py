"""The MLflow-compatible endpoints over raw HTTP: wire format, errors, authentication,
permissions, tags, audit. Search, stages and sources have their own modules."""

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from mlflow.protos import model_registry_pb2 as proto

from apps.accounts.models import ApiToken
from apps.approvals.models import PromotionRequest, Stage
from apps.audit.models import AuditEvent
from apps.mlflow_compat.models import ModelAlias
from apps.mlflow_compat.serializers import timestamp_ms
from apps.registry.models import ModelVersion, RegisteredModel, VersionStatus
from apps.registry.services import version_create
from tests.conftest import make_user
from tests.mlflow_compat.conftest import (
    AJAX,
    S3,
    USER_AGENT,
    MlflowHttp,
    assert_error,
    assert_proto_exact,
    basic_header,
    bearer_header,
    create_raw,
    create_version,
    mlflow_events,
    token_of,
)

# --- Wire format --------------------------------------------------------------------------------


def test_create_registered_model_wire_format_and_audit(as_owner, owner):
    response = as_owner.post(
        "/registered-models/create",
        {
            "name": "churn",
            "description": "Predicts churn.",
            "tags": [{"key": "team", "value": "growth"}],
        },
    )
    assert response.status_code == 200
    model = RegisteredModel.objects.get(name="churn")
    body = response.json()
    assert body == {
        "registered_model": {
            "name": "churn",
            "creation_timestamp": timestamp_ms(model.created_at),
            "last_updated_timestamp": timestamp_ms(model.updated_at),
            "user_id": "alice",
            "description": "Predicts churn.",
            "tags": [{"key": "team", "value": "growth"}],
        }
    }
    assert_proto_exact(body, proto.CreateRegisteredModel.Response())
    assert Stage.objects.filter(model=model).count() == 2  # default stages come with it
    [event] = mlflow_events("model.created")
    assert (event.via, event.user_agent, event.actor_id) == ("mlflow", USER_AGENT, owner.pk)


def test_create_version_from_a_source_is_ready_at_once(ml_model, as_editor, editor):
    body = create_version(
        as_editor,
        run_id="0a1b2c",
        description="First cut.",
        tags=[{"key": "framework", "value": "sklearn"}],
        run_link="https://mlflow.example.com/#/runs/0a1b2c",
        model_id="m-123",
    )
    version = ModelVersion.objects.get(model=ml_model, number=1)
    assert body == {
        "name": "fraud-detector",
        "version": "1",
        "creation_timestamp": timestamp_ms(version.created_at),
        "last_updated_timestamp": timestamp_ms(version.sealed_at),
        "user_id": "bob",
        "current_stage": "None",
        "description": "First cut.",
        "source": S3,
        "run_id": "0a1b2c",
        "status": "READY",
        "tags": [{"key": "framework", "value": "sklearn"}],
    }
    assert_proto_exact({"model_version": body}, proto.CreateModelVersion.Response())
    assert version.status == VersionStatus.READY and version.external_artifacts
    assert version.source == {"uri": S3, "run_id": "0a1b2c"}
    created, ready = mlflow_events("version.created"), mlflow_events("version.ready")
    assert len(created) == len(ready) == 1
    for event in (created[0], ready[0]):
        assert (event.via, event.user_agent, event.actor_id) == ("mlflow", USER_AGENT, editor.pk)
        assert event.model_id == ml_model.pk
    assert ready[0].changes["after"] == {"status": "ready", "external_artifacts": True}


def test_get_model_lists_latest_versions_and_aliases(ml_model, as_editor):
    create_version(as_editor)
    create_version(as_editor)
    assert (
        as_editor.post(
            "/registered-models/alias",
            {"name": "fraud-detector", "alias": "champion", "version": "1"},
        ).status_code
        == 200
    )
    body = as_editor.get("/registered-models/get", {"name": "fraud-detector"}).json()
    model = body["registered_model"]
    assert model["aliases"] == [{"alias": "champion", "version": "1"}]
    assert [v["version"] for v in model["latest_versions"]] == ["2"]
    assert_proto_exact(body, proto.GetRegisteredModel.Response())
    version = as_editor.get("/model-versions/get", {"name": "fraud-detector", "version": "1"})
    assert version.json()["model_version"]["aliases"] == ["champion"]


def test_versions_with_regent_files_report_their_verification(ml_model, as_viewer, owner):
    pending = version_create(actor=owner, model=ml_model)
    body = as_viewer.get("/model-versions/get", {"name": "fraud-detector", "version": 1}).json()
    assert body["model_version"]["status"] == "PENDING_REGISTRATION"
    assert "source" not in body["model_version"]
    ModelVersion.objects.filter(pk=pending.pk).update(
        status=VersionStatus.FAILED, status_reason="model.pt: checksum mismatch"
    )
    failed = as_viewer.get("/model-versions/get", {"name": "fraud-detector", "version": "1"})
    assert failed.json()["model_version"]["status"] == "FAILED_REGISTRATION"
    assert failed.json()["model_version"]["status_message"] == "model.pt: checksum mismatch"
    uri = as_viewer.get(
        "/model-versions/get-download-uri", {"name": "fraud-detector", "version": "1"}
    )
    expected = "http://testserver/api/2.0/mlflow-artifacts/artifacts/registry/fraud-detector/1"
    assert uri.json() == {"artifact_uri": expected}


def test_download_uri_of_an_external_version_is_its_source(ml_model, as_editor):
    create_version(as_editor, source="gs://models/fraud/7")
    response = as_editor.get(
        "/model-versions/get-download-uri", {"name": "fraud-detector", "version": "1"}
    )
    assert response.json() == {"artifact_uri": "gs://models/fraud/7"}


def test_update_description_of_model_and_version(ml_model, as_editor):
    create_version(as_editor)
    response = as_editor.patch(
        "/registered-models/update", {"name": "fraud-detector", "description": "New card."}
    )
    assert response.json()["registered_model"]["description"] == "New card."
    response = as_editor.patch(
        "/model-versions/update", {"name": "fraud-detector", "version": "1", "description": "v1"}
    )
    assert response.json()["model_version"]["description"] == "v1"
    assert ModelVersion.objects.get(model=ml_model).description == "v1"
    assert [e.via for e in mlflow_events("model.updated")] == ["mlflow"]
    assert [e.via for e in mlflow_events("version.updated")] == ["mlflow"]


def test_the_ajax_api_prefix_is_the_same_api(ml_model, client, owner):
    http = MlflowHttp(client, bearer_header(token_of(owner)), prefix=AJAX)
    create_version(http)
    assert http.get("/registered-models/get", {"name": "fraud-detector"}).status_code == 200
    assert mlflow_events("version.created")[0].via == "mlflow"


# --- Errors -------------------------------------------------------------------------------------


NAMED_CALLS = [
    ("GET", "/registered-models/get", {}),
    ("PATCH", "/registered-models/update", {"description": "x"}),
    ("POST", "/registered-models/rename", {"new_name": "x"}),
    ("DELETE", "/registered-models/delete", {}),
    ("POST", "/registered-models/set-tag", {"key": "k", "value": "v"}),
    ("DELETE", "/registered-models/delete-tag", {"key": "k"}),
    ("POST", "/registered-models/alias", {"alias": "champion", "version": "1"}),
    ("POST", "/registered-models/alias", {"alias": "production", "version": "1"}),
    ("GET", "/registered-models/alias", {"alias": "champion"}),
    ("DELETE", "/registered-models/alias", {"alias": "champion"}),
    ("GET", "/registered-models/get-latest-versions", {}),
    ("POST", "/registered-models/get-latest-versions", {"stages": ["Production"]}),
    ("POST", "/model-versions/create", {"source": S3}),
    ("GET", "/model-versions/get", {"version": "1"}),
    ("PATCH", "/model-versions/update", {"version": "1", "description": "x"}),
    ("DELETE", "/model-versions/delete", {"version": "1"}),
    ("POST", "/model-versions/set-tag", {"version": "1", "key": "k", "value": "v"}),
    ("DELETE", "/model-versions/delete-tag", {"version": "1", "key": "k"}),
    ("GET", "/model-versions/get-download-uri", {"version": "1"}),
    ("POST", "/model-versions/transition-stage", {"version": "1", "stage": "Production"}),
]


@pytest.mark.parametrize(("method", "path", "body"), NAMED_CALLS)
def test_hidden_models_answer_exactly_like_missing_ones(
    ml_model, as_owner, as_outsider, method, path, body
):
    create_version(as_owner)
    before = AuditEvent.objects.count()

    def call(name: str) -> Any:
        params = {"name": name, **body}
        return (
            as_outsider.get(path, params)
            if method == "GET"
            else as_outsider.send(method, path, params)
        )

    hidden, missing = call("fraud-detector"), call("no-such-model")
    assert_error(hidden, 404, "RESOURCE_DOES_NOT_EXIST", "Registered Model not found.")
    assert (hidden.status_code, hidden.content) == (missing.status_code, missing.content)
    assert AuditEvent.objects.count() == before
    assert not PromotionRequest.objects.exists() and not ModelAlias.objects.exists()


def test_duplicate_names_already_exist(ml_model, as_editor):
    for name in ("fraud-detector", "Fraud-Detector"):
        response = as_editor.post("/registered-models/create", {"name": name})
        assert_error(response, 400, "RESOURCE_ALREADY_EXISTS")


@pytest.mark.parametrize("name", ["", "a/b", "x" * 200, "has space", "nul\x00"])
def test_invalid_names_are_invalid_parameters(db, as_owner, name):
    response = as_owner.post("/registered-models/create", {"name": name})
    assert_error(response, 400, "INVALID_PARAMETER_VALUE")


def test_version_lookups(ml_model, as_viewer):
    assert_error(
        as_viewer.get("/model-versions/get", {"name": "fraud-detector", "version": "abc"}),
        400,
        "INVALID_PARAMETER_VALUE",
    )
    assert_error(
        as_viewer.get("/model-versions/get", {"name": "fraud-detector", "version": "99"}),
        404,
        "RESOURCE_DOES_NOT_EXIST",
        r"Model Version \(name=fraud-detector, version=99\) not found",
    )


def test_requests_outside_the_api_answer_in_mlflow_shape(db, as_owner):
    assert_error(as_owner.get("/experiments/list"), 404, "ENDPOINT_NOT_FOUND")
    wrong_method = as_owner.get("/registered-models/create")
    assert_error(wrong_method, 405, "ENDPOINT_NOT_FOUND")
    assert wrong_method["Allow"] == "POST"
    malformed = as_owner.client.post(
        "/api/2.0/mlflow/registered-models/create",
        "{nope",
        content_type="application/json",
        **as_owner.headers,
    )
    assert_error(malformed, 400, "INVALID_PARAMETER_VALUE")
    assert_error(as_owner.post("/registered-models/create", {}), 400, "INVALID_PARAMETER_VALUE")
    assert_error(
        as_owner.post("/registered-models/create", {"name": 3}), 400, "INVALID_PARAMETER_VALUE"
    )


def test_rename_is_refused_and_documented(ml_model, as_owner):
    response = as_owner.post(
        "/registered-models/rename", {"name": "fraud-detector", "new_name": "x"}
    )
    assert_error(response, 400, "INVALID_PARAMETER_VALUE", "Renaming is not supported: .*")
    assert RegisteredModel.objects.filter(name="fraud-detector").exists()


def test_deleting_a_model_archives_it_and_hides_it(ml_model, as_owner, as_editor):
    assert_error(
        as_editor.delete("/registered-models/delete", {"name": "fraud-detector"}),
        403,
        "PERMISSION_DENIED",
    )
    assert as_owner.delete("/registered-models/delete", {"name": "fraud-detector"}).json() == {}
    ml_model.refresh_from_db()
    assert ml_model.is_archived
    [event] = mlflow_events("model.archived")
    assert event.via == "mlflow"
    assert_error(
        as_owner.get("/registered-models/get", {"name": "fraud-detector"}),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )
    assert as_owner.get("/registered-models/search").json() == {}
    # The name stays taken: the archived model still exists in Regent.
    assert_error(
        as_owner.post("/registered-models/create", {"name": "fraud-detector"}),
        400,
        "RESOURCE_ALREADY_EXISTS",
    )


def test_versions_are_never_deleted(ml_model, as_owner):
    create_version(as_owner)
    response = as_owner.delete("/model-versions/delete", {"name": "fraud-detector", "version": "1"})
    assert_error(
        response, 403, "PERMISSION_DENIED", "Regent keeps every version; archive the model instead."
    )
    assert ModelVersion.objects.filter(model=ml_model).count() == 1


# --- Authentication -----------------------------------------------------------------------------


def test_no_bad_or_revoked_credentials_are_one_401(ml_model, client, owner):
    token = token_of(owner)
    ApiToken.objects.filter(user=owner).update(revoked_at=timezone.now())
    bodies = []
    for authorization in (
        None,
        "Bearer rgt_000000000000_nope",
        f"Bearer {token}",
        basic_header("alice", "wrong-password"),
        "Basic !!!",
        "Digest x",
    ):
        response = MlflowHttp(client, authorization).get(
            "/registered-models/get", {"name": "fraud-detector"}
        )
        bodies.append(assert_error(response, 401, "UNAUTHENTICATED"))
        assert response["WWW-Authenticate"].startswith('Bearer realm="regent"')
    assert all(body == bodies[0] for body in bodies)


def test_a_browser_session_is_not_enough(ml_model, client, owner):
    client.force_login(owner)
    response = client.get("/api/2.0/mlflow/registered-models/get", {"name": "fraud-detector"})
    assert_error(response, 401, "UNAUTHENTICATED")


def test_basic_auth_with_the_users_password(ml_model, client):
    http = MlflowHttp(client, basic_header("bob"))
    create_version(http)
    assert ModelVersion.objects.get().created_by.username == "bob"


def test_basic_auth_lockout_answers_in_mlflow_shape(ml_model, client, settings):
    """Not the lockout page's 429, which the stock client would retry for minutes."""
    settings.AXES_FAILURE_LIMIT = 2
    wrong = MlflowHttp(client, basic_header("bob", "wrong-password"))
    params = {"name": "fraud-detector"}
    assert_error(wrong.get("/registered-models/get", params), 401, "UNAUTHENTICATED")
    locked = "Too many failed sign-ins.*"
    assert_error(wrong.get("/registered-models/get", params), 403, "PERMISSION_DENIED", locked)
    right = MlflowHttp(client, basic_header("bob"))
    assert_error(right.get("/registered-models/get", params), 403, "PERMISSION_DENIED", locked)
    assert (
        MlflowHttp(client, basic_header("carol")).get("/registered-models/get", params).status_code
        == 200
    )


def test_inactive_users_tokens_stop_working(ml_model, client, editor):
    http = MlflowHttp(client, bearer_header(token_of(editor)))
    editor.is_active = False
    editor.save(update_fields=["is_active"])
    assert_error(
        http.get("/registered-models/get", {"name": "fraud-detector"}), 401, "UNAUTHENTICATED"
    )


def test_read_only_tokens_read_but_never_write(ml_model, as_read_only, as_owner):
    create_version(as_owner)
    assert as_read_only.get("/registered-models/get", {"name": "fraud-detector"}).status_code == 200
    latest = as_read_only.post("/registered-models/get-latest-versions", {"name": "fraud-detector"})
    assert latest.status_code == 200
    for method, path, body in (
        ("POST", "/registered-models/create", {"name": "other"}),
        ("POST", "/model-versions/create", {"name": "fraud-detector", "source": S3}),
        (
            "POST",
            "/registered-models/set-tag",
            {"name": "fraud-detector", "key": "k", "value": "v"},
        ),
        ("PATCH", "/registered-models/update", {"name": "fraud-detector", "description": "x"}),
        ("DELETE", "/registered-models/delete", {"name": "fraud-detector"}),
        (
            "POST",
            "/registered-models/alias",
            {"name": "fraud-detector", "alias": "a", "version": "1"},
        ),
    ):
        response = as_read_only.send(method, path, body)
        assert_error(response, 403, "PERMISSION_DENIED", "This token is read-only.*")
    assert ModelVersion.objects.count() == 1 and not ModelAlias.objects.exists()


def test_endpoints_need_no_csrf_token(ml_model, owner):
    client = Client(enforce_csrf_checks=True)
    http = MlflowHttp(client, bearer_header(token_of(owner)))
    create_version(http)


# --- Permissions --------------------------------------------------------------------------------


def test_viewers_read_but_may_not_change(ml_model, as_viewer, as_editor):
    create_version(as_editor)
    assert (
        as_viewer.get("/model-versions/get", {"name": "fraud-detector", "version": "1"}).status_code
        == 200
    )
    for method, path, body in (
        ("POST", "/model-versions/create", {"name": "fraud-detector", "source": S3}),
        (
            "POST",
            "/registered-models/set-tag",
            {"name": "fraud-detector", "key": "k", "value": "v"},
        ),
        (
            "POST",
            "/model-versions/set-tag",
            {"name": "fraud-detector", "version": "1", "key": "k", "value": "v"},
        ),
        (
            "POST",
            "/registered-models/alias",
            {"name": "fraud-detector", "alias": "x", "version": "1"},
        ),
        (
            "POST",
            "/model-versions/transition-stage",
            {"name": "fraud-detector", "version": "1", "stage": "Staging"},
        ),
    ):
        assert_error(as_viewer.send(method, path, body), 403, "PERMISSION_DENIED")
    assert ModelVersion.objects.count() == 1 and not PromotionRequest.objects.exists()


def test_outsiders_see_nothing_in_searches(ml_model, as_outsider, as_editor):
    create_version(as_editor)
    assert as_outsider.get("/registered-models/search").json() == {}
    assert as_outsider.get("/model-versions/search").json() == {}
    assert_error(
        as_outsider.get(
            "/model-versions/get-download-uri", {"name": "fraud-detector", "version": "1"}
        ),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )


# --- Tags ---------------------------------------------------------------------------------------


def test_set_and_delete_tags_are_audited_changes(ml_model, as_editor):
    create_version(as_editor)
    calls = [
        (
            "POST",
            "/registered-models/set-tag",
            {"name": "fraud-detector", "key": "team", "value": "risk"},
        ),
        (
            "POST",
            "/model-versions/set-tag",
            {"name": "fraud-detector", "version": "1", "key": "q", "value": "a"},
        ),
    ]
    for method, path, body in calls:
        assert as_editor.send(method, path, body).json() == {}
    ml_model.refresh_from_db()
    assert ml_model.tags == {"team": "risk"}
    assert ModelVersion.objects.get().tags == {"q": "a"}
    [event] = mlflow_events("model.updated")
    assert event.changes == {"before": {"tags": {}}, "after": {"tags": {"team": "risk"}}}
    as_editor.delete("/registered-models/delete-tag", {"name": "fraud-detector", "key": "team"})
    as_editor.delete(
        "/model-versions/delete-tag", {"name": "fraud-detector", "version": "1", "key": "q"}
    )
    as_editor.delete(
        "/model-versions/delete-tag", {"name": "fraud-detector", "version": "1", "key": "gone"}
    )
    ml_model.refresh_from_db()
    assert ml_model.tags == {} and ModelVersion.objects.get().tags == {}
    assert len(mlflow_events("version.updated")) == 2  # the missing key recorded nothing


def test_prompt_tags_and_bad_tags_are_refused(ml_model, as_editor):
    prompt = [{"key": "mlflow.prompt.is_prompt", "value": "true"}]
    assert_error(
        as_editor.post("/registered-models/create", {"name": "p", "tags": prompt}),
        400,
        "INVALID_PARAMETER_VALUE",
    )
    assert_error(create_raw(as_editor, tags=prompt), 400, "INVALID_PARAMETER_VALUE")
    too_long = {"name": "fraud-detector", "key": "k" * 65, "value": "v"}
    assert_error(
        as_editor.post("/registered-models/set-tag", too_long), 400, "INVALID_PARAMETER_VALUE"
    )
    assert not ModelVersion.objects.exists()


HOSTILE_CALLS = [
    ("POST", "/registered-models/create", {"name": {"$ne": 1}}),
    ("POST", "/registered-models/create", {"name": "ok", "tags": "team=risk"}),
    ("POST", "/registered-models/create", {"name": "ok", "tags": [{"value": "no key"}]}),
    ("POST", "/registered-models/create", {"name": "ok", "description": "\x00"}),
    (
        "POST",
        "/registered-models/create",
        {"name": "ok", "tags": [{"key": "k", "value": "\ud800"}]},
    ),
    ("GET", "/registered-models/get", {"name": "fraud\x00detector"}),
    ("GET", "/registered-models/get", {"name": "x" * 5000}),
    ("POST", "/registered-models/set-tag", {"name": ["fraud-detector"], "key": "k"}),
    (
        "POST",
        "/registered-models/set-tag",
        {"name": "fraud-detector", "key": "k\x00", "value": "v"},
    ),
    ("DELETE", "/registered-models/delete-tag", {"name": "fraud-detector", "key": 7}),
    ("GET", "/registered-models/alias", {"name": "fraud-detector", "alias": "x\x00"}),
    ("DELETE", "/registered-models/alias", {"name": "fraud-detector", "alias": "x\x00"}),
    ("POST", "/registered-models/alias", {"name": "fraud-detector", "alias": "a", "version": {}}),
    (
        "POST",
        "/registered-models/get-latest-versions",
        {"name": "fraud-detector", "stages": {"a": 1}},
    ),
    ("POST", "/model-versions/create", {"name": "fraud-detector", "source": ["s3://b/k"]}),
    ("POST", "/model-versions/create", {"name": "fraud-detector", "source": S3, "run_id": "\x00"}),
    ("POST", "/model-versions/create", {"name": "fraud-detector", "source": "s3://b/\x00"}),
    ("GET", "/model-versions/get", {"name": "fraud-detector", "version": "99999999999999999999"}),
    ("GET", "/model-versions/get", {"name": "fraud-detector", "version": "-1"}),
    ("GET", "/model-versions/get", {"name": "fraud-detector", "version": "\u0661"}),
    ("GET", "/model-versions/search", {"filter": "version_number = 99999999999999999999"}),
    ("GET", "/model-versions/search", {"filter": "name = '\x00'"}),
    ("GET", "/model-versions/search", {"max_results": "1e3"}),
    ("GET", "/registered-models/search", {"page_token": "eyJvZmZzZXQiOiAtMX0="}),
    ("GET", "/registered-models/search", {"page_token": "\x00"}),
    (
        "POST",
        "/model-versions/transition-stage",
        {"name": "fraud-detector", "version": "1", "stage": 3},
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), HOSTILE_CALLS)
def test_hostile_input_is_a_clean_client_error(ml_model, as_owner, method, path, body):
    create_version(as_owner)
    send = as_owner.get if method == "GET" else lambda *args: as_owner.send(method, *args)
    response = send(path, body)
    assert response.status_code < 500, response.content
    if response.status_code >= 400:
        assert set(response.json()) == {"error_code", "message"}


def test_a_superuser_reads_models_and_versions(ml_model, client):
    """A superuser's query ignores the user id, so it is never prepared: it runs as a plain
    queryset (registry_site.prepared) and answers like anyone's."""
    root = make_user("root-mlflow")
    root.is_superuser = True
    root.save(update_fields=["is_superuser"])
    version_create(actor=root, model=ml_model, source={"uri": "s3://bucket/run/model"})
    as_root = MlflowHttp(client, bearer_header(token_of(root)))
    for _ in range(2):  # the second call takes the remembered "plain" path
        got = as_root.get("/registered-models/get", {"name": "fraud-detector"})
        assert got.status_code == 200, got.content
        got = as_root.get("/model-versions/get", {"name": "fraud-detector", "version": "1"})
        assert got.status_code == 200, got.content
        assert got.json()["model_version"]["version"] == "1"
