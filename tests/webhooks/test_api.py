"""`/api/v1/webhooks`: who may register, see, change and delete webhooks; the secret is
shown once; the delivery log and redeliver. Every success has its "who may not" next to it.
"""

import base64
import json
from typing import Any

import pytest

from apps.accounts.models import TokenScope
from apps.audit.models import AuditEvent, DeliveryStatus, Webhook, WebhookDelivery
from apps.audit.webhook_delivery import webhook_deliver
from apps.registry.services import version_create
from tests.registry.conftest import patch_json, post_json
from tests.webhooks.conftest import URLS, make_webhook, token_for

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.urls(URLS),
    pytest.mark.usefixtures("allow_private"),
]

WEBHOOKS = "/api/v1/webhooks"
HOOK_URL = "https://hooks.example.com/regent"


def webhook_url(webhook: Webhook | int, suffix: str = "") -> str:
    pk = webhook if isinstance(webhook, int) else webhook.pk
    return f"{WEBHOOKS}/{pk}{suffix}"


def create_body(model: Any = None, **extra: Any) -> dict[str, Any]:
    body = {"url": HOOK_URL, "events": ["stage.changed", "version.ready"], **extra}
    if model is not None:
        body["model"] = model.name
    return body


@pytest.fixture
def hook(owner, ml_model) -> Webhook:
    return make_webhook(owner, HOOK_URL, ["stage.changed"], ml_model)[0]


@pytest.fixture
def global_hook(superuser) -> Webhook:
    return make_webhook(superuser, HOOK_URL, ["stage.changed"], None)[0]


# --- Create: the secret is shown once ----------------------------------------------------------


def test_owner_registers_a_webhook_and_sees_the_secret_once(client, ml_model, owner_auth):
    response = post_json(client, WEBHOOKS, create_body(ml_model, description="argo"), owner_auth)
    assert response.status_code == 201, response.content
    body = response.json()
    secret = body.pop("secret")
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24
    webhook = Webhook.objects.get()
    assert body == {
        "id": webhook.pk,
        "url": HOOK_URL,
        "model": "fraud-detector",
        "events": ["version.ready", "stage.changed"],  # the documented order
        "description": "argo",
        "active": True,
        "created_by": "alice",
        "created_at": body["created_at"],
    }
    # Never again: not in a read, not in a list, not in a change, not in the audit log.
    reads = [
        client.get(webhook_url(webhook), **owner_auth),
        client.get(WEBHOOKS, **owner_auth),
        patch_json(client, webhook_url(webhook), {"description": "x"}, owner_auth),
    ]
    for read in reads:
        assert read.status_code == 200
        assert secret not in read.content.decode()
        assert "secret" not in read.content.decode()
    created = AuditEvent.objects.get(action="webhook.created")
    assert created.model_id == ml_model.pk
    everything_audited = json.dumps(list(AuditEvent.objects.values()), default=str)
    assert secret not in everything_audited
    assert secret.removeprefix("whsec_") not in everything_audited


def test_two_webhooks_get_different_secrets(client, ml_model, owner_auth):
    first = post_json(client, WEBHOOKS, create_body(ml_model), owner_auth).json()["secret"]
    second = post_json(client, WEBHOOKS, create_body(ml_model), owner_auth).json()["secret"]
    assert first != second


def test_audit_keeps_only_the_origin_and_a_fingerprint_of_the_url(client, ml_model, owner_auth):
    url = "https://hooks.example.com/services/T000/B000/XXXXSECRETPATH?token=abc"
    post_json(client, WEBHOOKS, create_body(ml_model, url=url), owner_auth)
    event = AuditEvent.objects.get(action="webhook.created")
    dumped = json.dumps(event.changes) + event.target_label
    assert "XXXXSECRETPATH" not in dumped and "token=abc" not in dumped
    assert event.changes["after"]["url_origin"] == "https://hooks.example.com"
    assert event.target_label == f"webhook #{Webhook.objects.get().pk} to hooks.example.com"


@pytest.mark.parametrize(
    ("persona", "status"), [("outsider_auth", 404), ("viewer_auth", 403), ("editor_auth", 403)]
)
def test_only_owners_register_webhooks_on_a_model(client, ml_model, request, persona, status):
    auth = request.getfixturevalue(persona)
    response = post_json(client, WEBHOOKS, create_body(ml_model), auth)
    assert response.status_code == status
    assert not Webhook.objects.exists()
    assert not AuditEvent.objects.filter(action="webhook.created").exists()


def test_unknown_model_is_the_same_404(client, owner_auth, outsider_auth, ml_model):
    missing = post_json(client, WEBHOOKS, {**create_body(), "model": "nope"}, owner_auth)
    hidden = post_json(client, WEBHOOKS, create_body(ml_model), outsider_auth)
    assert missing.status_code == hidden.status_code == 404
    assert missing.json() == hidden.json()


def test_global_webhooks_are_for_superusers(client, owner_auth, superuser_auth):
    refused = post_json(client, WEBHOOKS, create_body(), owner_auth)
    assert refused.status_code == 403
    created = post_json(client, WEBHOOKS, create_body(), superuser_auth)
    assert created.status_code == 201
    assert created.json()["model"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"url": HOOK_URL, "events": []},
        {"url": HOOK_URL, "events": ["model.created"]},
        {"url": HOOK_URL, "events": "stage.changed"},
        {"url": HOOK_URL},
        {"events": ["stage.changed"]},
        {"url": HOOK_URL, "events": ["stage.changed"], "secret": "whsec_mine"},
        {"url": HOOK_URL, "events": ["stage.changed"], "active": False, "created_by": 1},
        {"url": HOOK_URL, "events": ["stage.changed"], "description": "x" * 1001},
    ],
)
def test_bad_bodies_are_422(client, superuser_auth, body):
    response = post_json(client, WEBHOOKS, body, superuser_auth)
    assert response.status_code == 422, response.content
    assert not Webhook.objects.exists()


def test_description_with_nul_is_400(client, ml_model, owner_auth):
    response = post_json(client, WEBHOOKS, create_body(ml_model, description="a\x00b"), owner_auth)
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"field": "description"}


def test_read_only_token_cannot_register(client, owner, ml_model):
    response = post_json(client, WEBHOOKS, create_body(ml_model), token_for(owner, TokenScope.READ))
    assert response.status_code == 403


def test_anonymous_is_401(client):
    assert client.get(WEBHOOKS).status_code == 401


# --- Read: lists and details -------------------------------------------------------------------


def test_lists_show_only_webhooks_on_models_you_own(
    client,
    owner,
    owner_auth,
    viewer_auth,
    outsider_auth,
    superuser_auth,
    ml_model,
    other_model,
    global_hook,
    django_assert_max_num_queries,
):
    for model in (ml_model, ml_model, other_model):
        make_webhook(owner, HOOK_URL, ["stage.changed"], model)

    def ids(auth: dict, query: str = "") -> list:
        response = client.get(WEBHOOKS + query, **auth)
        assert response.status_code == 200
        return [(item["model"]) for item in response.json()["items"]]

    with django_assert_max_num_queries(8):
        assert sorted(ids(owner_auth)) == ["churn-predictor", "fraud-detector", "fraud-detector"]
    assert ids(owner_auth, "?model=churn-predictor") == ["churn-predictor"]
    assert ids(viewer_auth) == []
    assert ids(outsider_auth) == []
    assert sorted(map(str, ids(superuser_auth))) == [
        "None",
        "churn-predictor",
        "fraud-detector",
        "fraud-detector",
    ]
    page = client.get(WEBHOOKS + "?page_size=2", **owner_auth).json()
    assert (page["count"], page["pages"], len(page["items"])) == (3, 2, 2)


def test_filtering_by_a_model_you_do_not_own(client, ml_model, viewer_auth, outsider_auth):
    assert client.get(WEBHOOKS + "?model=fraud-detector", **viewer_auth).status_code == 403
    assert client.get(WEBHOOKS + "?model=fraud-detector", **outsider_auth).status_code == 404
    assert client.get(WEBHOOKS + "?model=a%00b", **outsider_auth).status_code == 404


@pytest.mark.parametrize(
    ("persona", "status"),
    [("owner_auth", 200), ("superuser_auth", 200), ("viewer_auth", 403), ("outsider_auth", 404)],
)
def test_who_may_read_change_and_delete_a_webhook(client, hook, request, persona, status):
    auth = request.getfixturevalue(persona)
    assert client.get(webhook_url(hook), **auth).status_code == status
    assert client.get(webhook_url(hook, "/deliveries"), **auth).status_code == status
    patched = patch_json(client, webhook_url(hook), {"description": "changed"}, auth)
    assert patched.status_code == status
    deleted = client.delete(webhook_url(hook), **auth)
    assert deleted.status_code == (204 if status == 200 else status)
    assert Webhook.objects.exists() is (status != 200)


def test_global_webhooks_are_invisible_to_everyone_else(client, global_hook, owner_auth):
    assert client.get(webhook_url(global_hook), **owner_auth).status_code == 404
    assert client.delete(webhook_url(global_hook), **owner_auth).status_code == 404


@pytest.mark.parametrize("pk", [0, 999999, 2**63, 10**30])
def test_missing_and_absurd_ids_are_404(client, owner_auth, pk):
    assert client.get(webhook_url(pk), **owner_auth).status_code == 404


# --- Change and delete -------------------------------------------------------------------------


def test_owner_changes_a_webhook_and_the_change_is_audited(client, hook, owner_auth):
    response = patch_json(
        client,
        webhook_url(hook),
        {
            "url": "https://other.example.com/x",
            "events": ["stage.rolled_back", "stage.changed"],
            "active": False,
        },
        owner_auth,
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["url"] == "https://other.example.com/x"
    assert body["events"] == ["stage.changed", "stage.rolled_back"]
    assert body["active"] is False
    event = AuditEvent.objects.get(action="webhook.updated")
    assert event.changes["before"]["active"] is True
    assert event.changes["after"]["url_origin"] == "https://other.example.com"
    assert set(event.changes["after"]) == {"url_origin", "url_sha256", "events", "active"}


def test_an_empty_or_unchanged_patch_writes_nothing(client, hook, owner_auth):
    assert patch_json(client, webhook_url(hook), {}, owner_auth).status_code == 200
    same = {"description": hook.description, "events": hook.events}
    assert patch_json(client, webhook_url(hook), same, owner_auth).status_code == 200
    assert not AuditEvent.objects.filter(action="webhook.updated").exists()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"url": "https://127.0.0.1/"}, 400),
        ({"url": "http://hooks.example.com/"}, 400),
        ({"events": []}, 422),
        ({"model": "churn-predictor"}, 422),
        ({"secret": "whsec_x"}, 422),
        ({"active": "yes"}, 422),
    ],
)
def test_bad_patches_change_nothing(client, hook, owner_auth, settings, body, status):
    settings.REGENT_WEBHOOK_ALLOW_PRIVATE = False  # production rules for this one
    response = patch_json(client, webhook_url(hook), body, owner_auth)
    assert response.status_code == status
    hook.refresh_from_db()
    assert (hook.url, hook.events, hook.active) == (HOOK_URL, ["stage.changed"], True)


def test_delete_removes_the_log_and_is_audited(client, owner, hook, owner_auth):
    WebhookDelivery.objects.create(
        webhook=hook, event_id="1", event_type="stage.changed", payload={}
    )
    assert client.delete(webhook_url(hook), **owner_auth).status_code == 204
    assert not Webhook.objects.exists() and not WebhookDelivery.objects.exists()
    event = AuditEvent.objects.get(action="webhook.deleted")
    assert event.target_id == str(hook.pk)
    assert client.get(webhook_url(hook), **owner_auth).status_code == 404


# --- The delivery log and redeliver ------------------------------------------------------------


@pytest.fixture
def delivered(owner, ml_model, receiver) -> WebhookDelivery:
    """A webhook on the local receiver and one delivery made to it (a failure: 500)."""
    receiver.status = 500
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    delivery = WebhookDelivery.objects.get()
    webhook_deliver(delivery.pk)
    delivery.refresh_from_db()
    return delivery


def test_the_delivery_log(client, delivered, owner_auth):
    response = client.get(webhook_url(delivered.webhook_id, "/deliveries"), **owner_auth)
    assert response.status_code == 200
    (item,) = response.json()["items"]
    assert item["id"] == delivered.pk
    assert item["event_type"] == "version.created"
    assert item["status"] == "pending"
    assert (item["attempts"], item["response_code"]) == (1, 500)
    assert item["duration_ms"] is not None
    assert item["last_error"] == "HTTP 500"
    assert item["next_attempt_at"] is not None
    assert item["payload"]["data"]["model"] == "fraud-detector"
    log = webhook_url(delivered.webhook_id, "/deliveries")
    assert client.get(log + "?status=failed", **owner_auth).json()["count"] == 0
    bad = client.get(log + "?status=lost", **owner_auth)
    assert bad.status_code == 422


def test_redeliver(client, delivered, owner_auth, receiver, django_capture_on_commit_callbacks):
    receiver.status = 200
    url = webhook_url(delivered.webhook_id, f"/deliveries/{delivered.pk}/redeliver")
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(url, **owner_auth)
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "pending"
    assert len(callbacks) == 1  # the send is enqueued after commit
    webhook_deliver(delivered.pk)
    delivered.refresh_from_db()
    assert delivered.status == DeliveryStatus.SUCCEEDED
    assert receiver.hits == 2
    assert AuditEvent.objects.filter(action="webhook.redelivered").count() == 1


def test_redeliver_while_sending_is_409(client, delivered, owner_auth):
    WebhookDelivery.objects.filter(pk=delivered.pk).update(status=DeliveryStatus.DELIVERING)
    url = webhook_url(delivered.webhook_id, f"/deliveries/{delivered.pk}/redeliver")
    assert client.post(url, **owner_auth).status_code == 409


def test_redeliver_refused_to_others_and_across_webhooks(
    client, owner, ml_model, delivered, viewer_auth, outsider_auth, owner_auth
):
    url = webhook_url(delivered.webhook_id, f"/deliveries/{delivered.pk}/redeliver")
    assert client.post(url, **viewer_auth).status_code == 403
    assert client.post(url, **outsider_auth).status_code == 404
    other, _ = make_webhook(owner, HOOK_URL, ["stage.changed"], ml_model)
    across = webhook_url(other, f"/deliveries/{delivered.pk}/redeliver")
    assert client.post(across, **owner_auth).status_code == 404
    assert not AuditEvent.objects.filter(action="webhook.redelivered").exists()


def test_openapi_document_describes_the_new_routes(client):
    schema = client.get("/api/v1/openapi.json").json()
    for path in (
        "/api/v1/webhooks",
        "/api/v1/webhooks/{webhook_id}",
        "/api/v1/webhooks/{webhook_id}/deliveries",
        "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
        "/api/v1/webhooks/{webhook_id}/rotate-secret",
        "/api/v1/models/{name}/stages/{stage}/manifest",
    ):
        assert path in schema["paths"], path
