"""The version endpoints: create, list, detail, edit after sealing; who may and who may not."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.audit.models import AuditEvent
from apps.registry.models import Artifact, ModelVersion, RegisteredModel, VersionStatus
from apps.registry.services import model_archive, model_create, version_create
from tests.registry.conftest import MODELS_URL, patch_json, post_json, token_for

pytestmark = pytest.mark.django_db

VERSIONS_URL = f"{MODELS_URL}/fraud-detector/versions"
NOT_FOUND = {"error": {"code": "not_found", "message": "Not found.", "details": {}}}

JUNE = "s3://datasets/fraud/2024-06.parquet"
FULL_BODY = {
    "description": "Retrained on June data",
    "metrics": {"auc": 0.93, "support": 1200},
    "params": {"lr": 0.001, "optimizer": "adam", "amp": True, "seed": None},
    "tags": {"stage": "candidate"},
    "training_data": [
        {"uri": JUNE, "sha256": "c" * 64, "description": "June"},
        {"uri": "file:///etc/passwd"},
    ],
    "dependencies": {"framework": "torch==2.3", "requirements": ["numpy>=1.26"]},
    "source": {"uri": "git+https://example.com/repo", "run_id": "run-7", "commit": "deadbeef"},
}


def version_count() -> int:
    return ModelVersion.objects.count()


def created_events() -> int:
    return AuditEvent.objects.filter(action="version.created").count()


# --- create ----------------------------------------------------------------------------------


def test_editor_creates_a_version(api_client, ml_model, editor_auth):
    response = post_json(api_client, VERSIONS_URL, FULL_BODY, editor_auth)
    assert response.status_code == 201, response.content
    data = response.json()
    assert data.pop("created_at")
    assert data == {
        "version": 1,
        "status": "pending",
        "status_reason": "",
        "framework": None,
        "files": [],
        "stages": [],
        "created_by": "bob",
        "description": "Retrained on June data",
        "metrics": {"auc": 0.93, "support": 1200},
        "params": {"lr": 0.001, "optimizer": "adam", "amp": True, "seed": None},
        "tags": {"stage": "candidate"},
        "training_data": [
            {
                "uri": "s3://datasets/fraud/2024-06.parquet",
                "sha256": "c" * 64,
                "description": "June",
            },
            {"uri": "file:///etc/passwd", "sha256": None, "description": ""},
        ],
        "dependencies": {"framework": "torch==2.3", "requirements": ["numpy>=1.26"]},
        "source": {"uri": "git+https://example.com/repo", "run_id": "run-7", "commit": "deadbeef"},
        "parents": [],
    }
    event = AuditEvent.objects.get(action="version.created")
    assert (event.actor_name, event.via, event.target_label) == ("bob", "api", "fraud-detector/1")


def test_versions_are_numbered_in_order(api_client, ml_model, owner_auth):
    numbers = [post_json(api_client, VERSIONS_URL, {}, owner_auth).json()["version"] for _ in "abc"]
    assert numbers == [1, 2, 3]


def test_viewer_may_not_create_a_version(api_client, ml_model, viewer_auth):
    response = post_json(api_client, VERSIONS_URL, {}, viewer_auth)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert version_count() == 0


def test_outsider_create_is_the_404_of_a_missing_model(api_client, ml_model, outsider_auth):
    hidden = post_json(api_client, VERSIONS_URL, {}, outsider_auth)
    missing = post_json(api_client, f"{MODELS_URL}/nope/versions", {}, outsider_auth)
    assert hidden.json() == missing.json() == NOT_FOUND
    assert version_count() == 0


def test_archived_model_refuses_versions(api_client, ml_model, owner, owner_auth):
    model_archive(actor=owner, model=ml_model)
    response = post_json(api_client, VERSIONS_URL, {}, owner_auth)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert version_count() == 0
    assert RegisteredModel.objects.get().last_version_number == 0


@pytest.mark.parametrize(
    ("raw_metrics", "field"),
    [
        ('{"auc": NaN}', "metrics.auc"),
        ('{"auc": Infinity}', "metrics.auc"),
        ('{"auc": -Infinity}', "metrics.auc"),
        ('{"auc": "0.9"}', "metrics.auc"),
        ('{"auc": true}', "metrics.auc"),
        ('{"auc": null}', "metrics.auc"),
        ('{"auc": 1e999}', "metrics.auc"),
        ('{"auc": [0.9]}', "metrics.auc"),
    ],
)
def test_bad_metrics_are_400_naming_the_metric(
    api_client, ml_model, owner_auth, raw_metrics, field
):
    body = '{"description": "x", "metrics": ' + raw_metrics + "}"
    response = post_json(api_client, VERSIONS_URL, body, owner_auth)
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"field": field}
    assert version_count() == 0
    assert created_events() == 0
    assert RegisteredModel.objects.get().last_version_number == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"training_data": [{"uri": "s3://d", "sha256": "F" * 64}]}, "training_data.0.sha256"),
        ({"training_data": [{"uri": "s3://d", "sha256": "f" * 65}]}, "training_data.0.sha256"),
        ({"training_data": [{"uri": ""}]}, "training_data.0.uri"),
        ({"training_data": [{"uri": "s3://d"}] * 101}, "training_data"),
        ({"params": {"p": {"nested": 1}}}, "params.p"),
        ({"tags": {"t": "v" * 257}}, "tags.t"),
        ({"description": "\x00"}, "description"),
        ({"parents": ["not a ref"]}, "parents.0"),
        ({"parents": [f"fraud-detector/{n}" for n in range(1, 22)]}, "parents"),
    ],
)
def test_bad_metadata_is_400_and_writes_nothing(api_client, ml_model, owner_auth, body, field):
    response = post_json(api_client, VERSIONS_URL, body, owner_auth)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"] == {"field": field}
    assert version_count() == 0
    assert created_events() == 0


@pytest.mark.parametrize(
    "extra",
    [
        {"status": "ready"},
        {"number": 7},
        {"version": 7},
        {"sha256": "a" * 64},
        {"created_by": "dave"},
        {"model_id": 1},
        {"model": "other"},
        {"framework": "onnx"},
        {"approved": True},
    ],
)
def test_mass_assignment_on_create_is_422(api_client, ml_model, owner_auth, extra):
    response = post_json(api_client, VERSIONS_URL, {"description": "x", **extra}, owner_auth)
    assert response.status_code == 422
    [field] = extra
    assert response.json()["error"]["details"]["errors"][0]["field"] == field
    assert version_count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"training_data": [{"uri": "s3://d", "opened": True}]}, "training_data.0.opened"),
        ({"source": {"location": "/etc"}}, "source.location"),
        ({"metrics": "auc=0.9"}, "metrics"),
        ({"parents": "fraud-detector/1"}, "parents"),
    ],
)
def test_wrong_shapes_are_422(api_client, ml_model, owner_auth, body, field):
    response = post_json(api_client, VERSIONS_URL, body, owner_auth)
    assert response.status_code == 422
    assert response.json()["error"]["details"]["errors"][0]["field"] == field
    assert version_count() == 0


def test_parent_missing_and_parent_invisible_answer_alike(api_client, ml_model, owner, outsider):
    version_create(actor=owner, model=ml_model)  # fraud-detector/1, private to alice
    model_create(actor=outsider, name="daves-model")
    auth = token_for(outsider)
    url = f"{MODELS_URL}/daves-model/versions"
    hidden = post_json(api_client, url, {"parents": ["fraud-detector/1"]}, auth)
    missing = post_json(api_client, url, {"parents": ["fraud-detector/9"]}, auth)
    assert hidden.status_code == missing.status_code == 400
    assert hidden.json()["error"]["message"] == "parent fraud-detector/1 does not exist"
    assert missing.json()["error"]["message"] == "parent fraud-detector/9 does not exist"
    assert hidden.json()["error"]["details"] == missing.json()["error"]["details"]
    assert version_count() == 1


def test_visible_parent_is_linked(api_client, ml_model, owner, owner_auth):
    version_create(actor=owner, model=ml_model)
    response = post_json(api_client, VERSIONS_URL, {"parents": ["fraud-detector/1"]}, owner_auth)
    assert response.status_code == 201
    assert response.json()["parents"] == ["fraud-detector/1"]


# --- list and detail -------------------------------------------------------------------------


def test_list_is_newest_first_and_paginated(api_client, ml_model, owner, viewer_auth):
    for _ in range(3):
        version_create(actor=owner, model=ml_model)
    page = api_client.get(f"{VERSIONS_URL}?page_size=2", **viewer_auth).json()
    assert [item["version"] for item in page["items"]] == [3, 2]
    assert (page["count"], page["page"], page["pages"]) == (3, 1, 2)
    page = api_client.get(f"{VERSIONS_URL}?page=2&page_size=2", **viewer_auth).json()
    assert [item["version"] for item in page["items"]] == [1]


def test_outsider_cannot_list_versions(api_client, version, outsider_auth):
    assert api_client.get(VERSIONS_URL, **outsider_auth).json() == NOT_FOUND


def _add_file(version: ModelVersion, path: str) -> None:
    Artifact.objects.create(
        version=version,
        path=path,
        path_key=path.casefold(),
        size=10,
        upload_sha256="d" * 64,
        sha256="d" * 64,
        storage_key=f"k/{version.pk}/{path}",
    )


def test_detail_shows_files_and_only_visible_parents(api_client, version, owner, viewer_auth):
    secret = model_create(actor=owner, name="secret-base")
    secret_version = version_create(actor=owner, model=secret)
    child = version_create(
        actor=owner, model=version.model, parents=["fraud-detector/1", "secret-base/1"]
    )
    assert set(child.parents.all()) == {version, secret_version}
    _add_file(child, "model.safetensors")
    response = api_client.get(f"{VERSIONS_URL}/2", **viewer_auth)
    assert response.status_code == 200
    data = response.json()
    assert data["parents"] == ["fraud-detector/1"]  # carol may not see secret-base
    [file] = data["files"]
    assert {key: file[key] for key in ("path", "size", "sha256")} == {
        "path": "model.safetensors",
        "size": 10,
        "sha256": "d" * 64,
    }


@pytest.mark.parametrize("number", ["0", "2", "9999999999999999999999", "-1", "abc", "1e3", "0x1"])
def test_missing_or_malformed_version_is_404(api_client, version, owner_auth, number):
    response = api_client.get(f"{VERSIONS_URL}/{number}", **owner_auth)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_outsider_gets_404_for_a_version(api_client, version, outsider_auth):
    hidden = api_client.get(f"{VERSIONS_URL}/1", **outsider_auth)
    missing = api_client.get(f"{MODELS_URL}/nope/versions/1", **outsider_auth)
    assert hidden.json() == missing.json() == NOT_FOUND


def _versions_queries(client, auth) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(f"{VERSIONS_URL}?page_size=100", **auth)
    assert response.status_code == 200
    return len(captured.captured_queries)


def test_version_list_query_count_does_not_grow(
    api_client, ml_model, owner, django_assert_max_num_queries
):
    auth = token_for(owner)
    _versions_queries(api_client, auth)  # the token's first use records last_used_at
    base = version_create(actor=owner, model=ml_model)
    for _ in range(4):
        _add_file(version_create(actor=owner, model=ml_model, parents=["fraud-detector/1"]), "m")
    small = _versions_queries(api_client, auth)
    for _ in range(45):
        child = version_create(actor=owner, model=ml_model, parents=[str(base)])
        _add_file(child, "m")
    with django_assert_max_num_queries(small):
        response = api_client.get(f"{VERSIONS_URL}?page_size=100", **auth)
    assert len(response.json()["items"]) == 50
    assert _versions_queries(api_client, auth) == small


# --- edit ------------------------------------------------------------------------------------


@pytest.fixture
def sealed(version):
    ModelVersion.objects.filter(pk=version.pk).update(status=VersionStatus.READY)
    version.refresh_from_db()
    return version


def test_sealed_version_description_and_tags_are_editable(api_client, sealed, editor_auth):
    body = {"description": "Known issue: drifts in Q4", "tags": {"stage": "retired"}}
    response = patch_json(api_client, f"{VERSIONS_URL}/1", body, editor_auth)
    assert response.status_code == 200
    assert response.json()["description"] == body["description"]
    assert response.json()["status"] == "ready"
    event = AuditEvent.objects.get(action="version.updated")
    assert event.changes == {
        "before": {"description": "First cut", "tags": {"stage": "candidate"}},
        "after": body,
    }
    assert (event.actor_name, event.via) == ("bob", "api")


@pytest.mark.parametrize(
    "field",
    ["status", "number", "metrics", "params", "training_data", "parents", "sha256", "created_by"],
)
def test_sealed_version_other_fields_are_422(api_client, sealed, owner_auth, field):
    response = patch_json(api_client, f"{VERSIONS_URL}/1", {field: "x"}, owner_auth)
    assert response.status_code == 422
    assert response.json()["error"]["details"]["errors"][0]["field"] == field
    sealed.refresh_from_db()
    assert (sealed.status, sealed.number, sealed.metrics["auc"]) == ("ready", 1, 0.91)
    assert not AuditEvent.objects.filter(action="version.updated").exists()


def test_viewer_may_not_patch_a_version(api_client, version, viewer_auth):
    response = patch_json(api_client, f"{VERSIONS_URL}/1", {"description": "x"}, viewer_auth)
    assert response.status_code == 403
    version.refresh_from_db()
    assert version.description == "First cut"


def test_outsider_patch_of_a_version_is_404(api_client, version, outsider_auth):
    response = patch_json(api_client, f"{VERSIONS_URL}/1", {"description": "x"}, outsider_auth)
    assert response.json() == NOT_FOUND


def test_patch_with_invalid_tags_is_400(api_client, version, owner_auth):
    body = json.dumps({"description": "ok", "tags": {"": "empty key"}})
    response = patch_json(api_client, f"{VERSIONS_URL}/1", body, owner_auth)
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"field": "tags"}
    version.refresh_from_db()
    assert version.description == "First cut"
