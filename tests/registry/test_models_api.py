"""The model endpoints: create, list/search, detail, edit; who may and who may not."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.audit.models import AuditEvent
from apps.registry.models import RegisteredModel
from apps.registry.services import model_archive, model_create, version_create
from tests.conftest import bearer
from tests.registry.conftest import MODELS_URL, fullwidth, patch_json, post_json, token_for

pytestmark = pytest.mark.django_db

NOT_FOUND = {"error": {"code": "not_found", "message": "Not found.", "details": {}}}
UNAUTHENTICATED = {
    "error": {"code": "not_authenticated", "message": "Authentication required.", "details": {}}
}
MODEL_URL = f"{MODELS_URL}/fraud-detector"


def audit_actions() -> list[str]:
    return list(AuditEvent.objects.order_by("id").values_list("action", flat=True))


# --- create ----------------------------------------------------------------------------------


def test_create_model(api_client, owner, owner_auth):
    body = {"name": "churn", "description": "# Churn", "tags": {"team": "growth"}}
    response = post_json(api_client, MODELS_URL, body, owner_auth)
    assert response.status_code == 201
    data = response.json()
    created_at = data.pop("created_at")
    assert data == {
        "name": "churn",
        "description": "# Churn",
        "tags": {"team": "growth"},
        "visibility": "private",
        "created_by": "alice",
        "latest_version": None,
        "stages": {"staging": None, "production": None},
    }
    assert created_at.startswith(str(RegisteredModel.objects.get().created_at.year))
    event = AuditEvent.objects.get(action="model.created")
    assert (event.actor_name, event.via) == ("alice", "api")


def test_created_model_is_owned_by_its_creator(api_client, owner_auth):
    post_json(api_client, MODELS_URL, {"name": "churn"}, owner_auth)
    response = patch_json(api_client, f"{MODELS_URL}/churn", {"visibility": "internal"}, owner_auth)
    assert response.status_code == 200
    assert response.json()["visibility"] == "internal"


@pytest.mark.parametrize("name", ["../x", "a b", "a" * 129, "-leading", "", "a/b", "é"])
def test_create_with_invalid_name_is_400(api_client, owner_auth, name):
    before = audit_actions()
    response = post_json(api_client, MODELS_URL, {"name": name}, owner_auth)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert response.json()["error"]["details"] == {"field": "name"}
    assert not RegisteredModel.objects.exists()
    assert audit_actions() == before


@pytest.mark.parametrize("name", ["Fraud-Detector", fullwidth("fraud-detector")])
def test_create_duplicate_name_is_409(api_client, ml_model, owner_auth, name):
    before = audit_actions()
    response = post_json(api_client, MODELS_URL, {"name": name}, owner_auth)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "already_exists"
    assert RegisteredModel.objects.count() == 1
    assert audit_actions() == before


@pytest.mark.parametrize(
    "extra",
    [
        {"created_by": "dave"},
        {"name_key": "x"},
        {"archived_at": None},
        {"id": 1},
        {"last_version_number": 9},
        {"owner": "dave"},
    ],
)
def test_create_with_unknown_fields_is_422(api_client, owner_auth, extra):
    response = post_json(api_client, MODELS_URL, {"name": "churn", **extra}, owner_auth)
    assert response.status_code == 422
    [field] = extra
    assert response.json()["error"]["details"]["errors"][0]["field"] == field
    assert not RegisteredModel.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "churn", "visibility": "public"}, "visibility"),
        ({"name": "churn", "tags": {"k": 1}}, "tags.k"),
        ({"name": 5}, "name"),
        ({}, "name"),
    ],
)
def test_create_with_wrong_types_is_422(api_client, owner_auth, body, field):
    response = post_json(api_client, MODELS_URL, body, owner_auth)
    assert response.status_code == 422
    assert field in response.json()["error"]["message"]
    assert not RegisteredModel.objects.exists()


def test_create_with_too_long_description_is_400(api_client, owner_auth):
    body = {"name": "churn", "description": "x" * 100_001}
    response = post_json(api_client, MODELS_URL, body, owner_auth)
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"field": "description"}


def test_create_needs_a_write_token(api_client, owner, read_token):
    response = post_json(api_client, MODELS_URL, {"name": "churn"}, bearer(read_token))
    assert response.status_code == 403
    assert not RegisteredModel.objects.exists()


# --- anonymous -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", MODELS_URL),
        ("get", MODELS_URL),
        ("get", MODEL_URL),
        ("patch", MODEL_URL),
        ("post", f"{MODEL_URL}/versions"),
        ("get", f"{MODEL_URL}/versions"),
        ("get", f"{MODEL_URL}/versions/1"),
        ("patch", f"{MODEL_URL}/versions/1"),
        ("get", f"{MODEL_URL}/lineage"),
    ],
)
def test_anonymous_is_401_everywhere(api_client, version, method, url):
    response = getattr(api_client, method)(url, {}, content_type="application/json")
    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED


# --- detail ----------------------------------------------------------------------------------


def test_get_model(api_client, ml_model, version, viewer_auth):
    response = api_client.get(MODEL_URL, **viewer_auth)
    assert response.status_code == 200
    data = response.json()
    assert data["name"] == "fraud-detector"
    assert data["latest_version"] == 1
    assert data["created_by"] == "alice"
    assert data["stages"] == {"staging": None, "production": None}


def test_outsider_gets_the_same_404_as_for_a_missing_model(api_client, ml_model, outsider_auth):
    hidden = api_client.get(MODEL_URL, **outsider_auth)
    missing = api_client.get(f"{MODELS_URL}/no-such-model", **outsider_auth)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json() == NOT_FOUND


@pytest.mark.parametrize("name", ["a%00b", "x" * 600, "..", "%2e%2e"])
def test_impossible_names_in_the_path_are_404(api_client, owner_auth, name):
    response = api_client.get(f"{MODELS_URL}/{name}", **owner_auth)
    assert response.status_code == 404


def test_internal_model_is_visible_to_any_signed_in_user(api_client, owner, outsider_auth):
    model_create(actor=owner, name="shared", visibility="internal")
    assert api_client.get(f"{MODELS_URL}/shared", **outsider_auth).status_code == 200
    listed = api_client.get(MODELS_URL, **outsider_auth).json()
    assert [item["name"] for item in listed["items"]] == ["shared"]


# --- edit ------------------------------------------------------------------------------------


def test_editor_edits_description_and_tags(api_client, ml_model, editor_auth):
    body = {"description": "Better card", "tags": {"team": "risk", "tier": "1"}}
    response = patch_json(api_client, MODEL_URL, body, editor_auth)
    assert response.status_code == 200
    assert response.json()["tags"] == {"team": "risk", "tier": "1"}
    event = AuditEvent.objects.get(action="model.updated")
    assert event.changes["after"] == body
    assert event.actor_name == "bob"


def test_patch_without_change_records_nothing(api_client, ml_model, editor_auth):
    response = patch_json(api_client, MODEL_URL, {"tags": {"team": "risk"}}, editor_auth)
    assert response.status_code == 200
    assert not AuditEvent.objects.filter(action="model.updated").exists()


def test_editor_may_not_change_visibility(api_client, ml_model, editor_auth):
    body = {"visibility": "internal", "description": "sneaky"}
    response = patch_json(api_client, MODEL_URL, body, editor_auth)
    assert response.status_code == 403
    ml_model.refresh_from_db()
    assert (ml_model.visibility, ml_model.description[:7]) == ("private", "# Fraud")
    assert not AuditEvent.objects.filter(action="model.updated").exists()


def test_editor_may_resend_the_current_visibility(api_client, ml_model, editor_auth):
    response = patch_json(api_client, MODEL_URL, {"visibility": "private"}, editor_auth)
    assert response.status_code == 200


def test_owner_changes_visibility_audited(api_client, ml_model, owner_auth):
    response = patch_json(api_client, MODEL_URL, {"visibility": "internal"}, owner_auth)
    assert response.status_code == 200
    event = AuditEvent.objects.get(action="model.updated")
    assert event.changes == {
        "before": {"visibility": "private"},
        "after": {"visibility": "internal"},
    }


def test_viewer_may_not_patch(api_client, ml_model, viewer_auth):
    response = patch_json(api_client, MODEL_URL, {"description": "x"}, viewer_auth)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_outsider_patch_is_404(api_client, ml_model, outsider_auth):
    response = patch_json(api_client, MODEL_URL, {"description": "x"}, outsider_auth)
    assert response.json() == NOT_FOUND


@pytest.mark.parametrize("field", ["name", "created_by", "archived_at", "metric_directions"])
def test_patch_with_read_only_fields_is_422(api_client, ml_model, owner_auth, field):
    response = patch_json(api_client, MODEL_URL, {field: "x"}, owner_auth)
    assert response.status_code == 422
    assert response.json()["error"]["details"]["errors"][0]["field"] == field
    assert RegisteredModel.objects.get().name == "fraud-detector"


def test_patch_with_bad_tags_is_400_and_changes_nothing(api_client, ml_model, owner_auth):
    body = {"description": "new", "tags": {"k" * 65: "v"}}
    response = patch_json(api_client, MODEL_URL, body, owner_auth)
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"field": "tags"}
    ml_model.refresh_from_db()
    assert ml_model.description.startswith("# Fraud")


# --- list and search -------------------------------------------------------------------------


@pytest.fixture
def catalog(owner, outsider):
    model_create(
        actor=owner, name="resnet50", description="Image classifier", tags={"task": "vision"}
    )
    model_create(actor=owner, name="bert-base", description="Text encoder", tags={"task": "nlp"})
    model_create(
        actor=owner, name="ResNet-tiny", description="Small", tags={"task": "vision", "size": "s"}
    )
    model_create(actor=outsider, name="daves-private", description="image stuff")
    old = model_create(actor=owner, name="retired", description="image")
    model_archive(actor=owner, model=old)


def names(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["name"] for item in response.json()["items"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["bert-base", "resnet50", "ResNet-tiny"]),
        ("?search=resnet", ["resnet50", "ResNet-tiny"]),
        ("?search=RESNET", ["resnet50", "ResNet-tiny"]),
        ("?search=encoder", ["bert-base"]),
        ("?search=image", ["resnet50"]),
        ("?tag=task:vision", ["resnet50", "ResNet-tiny"]),
        ("?tag=size", ["ResNet-tiny"]),
        ("?tag=task:nlp&search=bert", ["bert-base"]),
        ("?tag=task:none", []),
        ("?search=%00", ["bert-base", "resnet50", "ResNet-tiny"]),
        ("?tag=%00", []),
    ],
)
def test_list_search_and_tags(api_client, catalog, owner_auth, query, expected):
    # Sorted here: the order of "-" against digits depends on the database collation.
    found = names(api_client.get(MODELS_URL + query, **owner_auth))
    assert sorted(found) == sorted(expected)


def test_list_shows_only_what_the_caller_may_view(api_client, catalog, outsider_auth):
    assert names(api_client.get(MODELS_URL, **outsider_auth)) == ["daves-private"]
    assert names(api_client.get(f"{MODELS_URL}?search=image", **outsider_auth)) == ["daves-private"]


def test_list_pagination(api_client, catalog, owner_auth):
    response = api_client.get(f"{MODELS_URL}?page=2&page_size=2", **owner_auth)
    assert response.json()["count"] == 3
    assert response.json()["pages"] == 2
    assert response.json()["page"] == 2
    first = names(api_client.get(f"{MODELS_URL}?page=1&page_size=2", **owner_auth))
    assert len(names(response)) == 1
    assert sorted(first + names(response)) == ["ResNet-tiny", "bert-base", "resnet50"]
    assert names(api_client.get(f"{MODELS_URL}?page=9", **owner_auth)) == []


def test_list_reports_latest_version(api_client, ml_model, owner, owner_auth):
    version_create(actor=owner, model=ml_model)
    version_create(actor=owner, model=ml_model)
    [item] = api_client.get(MODELS_URL, **owner_auth).json()["items"]
    assert item["latest_version"] == 2


@pytest.mark.parametrize(
    "query",
    ["page_size=101", "page_size=0", "page=0", "page=-1", "page=abc", "page=9999999999999999999"],
)
def test_bad_pagination_is_422(api_client, owner_auth, query):
    response = api_client.get(f"{MODELS_URL}?{query}", **owner_auth)
    assert response.status_code == 422


def _list_queries(client, auth) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(f"{MODELS_URL}?page_size=100", **auth)
    assert response.status_code == 200
    return len(captured.captured_queries)


def test_list_query_count_does_not_grow_with_models(
    api_client, owner, django_assert_max_num_queries
):
    auth = token_for(owner)
    _list_queries(api_client, auth)  # the token's first use records last_used_at
    for index in range(5):
        model = model_create(actor=owner, name=f"m{index}", tags={"i": str(index)})
        version_create(actor=owner, model=model)
    small = _list_queries(api_client, auth)
    for index in range(5, 50):
        model = model_create(actor=owner, name=f"m{index}")
        version_create(actor=owner, model=model)
    with django_assert_max_num_queries(small):
        response = api_client.get(f"{MODELS_URL}?page_size=100", **auth)
    assert len(response.json()["items"]) == 50
    assert _list_queries(api_client, auth) == small
    assert small <= 8
