"""Rotating a webhook's signing secret: shown once, audited without secrets, and for a day
every delivery carries a second signature by the replaced secret, so receivers switch over
without rejecting one."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from apps.accounts.models import TokenScope
from apps.audit.models import AuditEvent, Webhook, WebhookDelivery
from apps.audit.webhook_delivery import webhook_deliver
from apps.audit.webhook_services import SECRET_OVERLAP, webhook_secret_rotate
from apps.registry.services import version_create
from tests.registry.conftest import post_json
from tests.webhooks.conftest import URLS, make_webhook, token_for

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.urls(URLS),
    pytest.mark.usefixtures("allow_private"),
]


def rotate_url(webhook: Webhook) -> str:
    return f"/api/v1/webhooks/{webhook.pk}/rotate-secret"


def deliver_one(owner, ml_model, receiver) -> dict[str, str]:
    """Create a version (one delivery), send it, and return the headers the receiver got."""
    version_create(actor=owner, model=ml_model)
    delivery = WebhookDelivery.objects.order_by("-pk").first()
    webhook_deliver(delivery.pk)
    return receiver.requests[-1]


def test_rotation_returns_a_new_secret_once_and_audits_no_secret(
    client, owner, ml_model, owner_auth
):
    webhook, old = make_webhook(owner, "https://hooks.example.com/regent", model=ml_model)
    response = post_json(client, rotate_url(webhook), {}, owner_auth)
    assert response.status_code == 200, response.content
    body = response.json()
    new = body["secret"]
    assert new.startswith("whsec_") and new != old
    assert body["id"] == webhook.pk and body["model"] == ml_model.name
    webhook.refresh_from_db()
    assert (webhook.secret, webhook.previous_secret) == (new, old)
    assert abs(webhook.previous_secret_until - (timezone.now() + SECRET_OVERLAP)) < timedelta(
        minutes=1
    )
    shown = client.get(f"/api/v1/webhooks/{webhook.pk}", **owner_auth).json()
    assert "secret" not in shown and new not in str(shown) and old not in str(shown)
    event = AuditEvent.objects.get(action="webhook.secret_rotated")
    assert event.actor_id == owner.pk and event.model_id == ml_model.pk
    assert old not in str(event.changes) and new not in str(event.changes)


def test_during_the_overlap_both_secrets_verify_then_only_the_new(
    owner, ml_model, receiver, verify_webhook
):
    webhook, old = make_webhook(owner, receiver.url, ["version.created"], ml_model)
    _, new = webhook_secret_rotate(actor=owner, webhook=webhook)

    during = deliver_one(owner, ml_model, receiver)
    assert len(during.headers["webhook-signature"].split()) == 2
    assert verify_webhook(new, during.headers, during.body)
    assert verify_webhook(old, during.headers, during.body)

    with time_machine.travel(timezone.now() + SECRET_OVERLAP + timedelta(minutes=1)):
        after = deliver_one(owner, ml_model, receiver)
        assert len(after.headers["webhook-signature"].split()) == 1
        # The receiver's clock moves with the delivery's: verify at the same moment.
        assert verify_webhook(new, after.headers, after.body)
        assert not verify_webhook(old, after.headers, after.body)


def test_rotating_again_drops_the_oldest_secret_at_once(owner, ml_model, receiver, verify_webhook):
    webhook, first = make_webhook(owner, receiver.url, ["version.created"], ml_model)
    _, second = webhook_secret_rotate(actor=owner, webhook=webhook)
    _, third = webhook_secret_rotate(actor=owner, webhook=webhook)
    received = deliver_one(owner, ml_model, receiver)
    assert verify_webhook(third, received.headers, received.body)
    assert verify_webhook(second, received.headers, received.body)
    assert not verify_webhook(first, received.headers, received.body)


def test_only_owners_may_rotate_and_others_change_nothing(
    client, owner, ml_model, viewer_auth, editor_auth, outsider_auth
):
    webhook, secret = make_webhook(owner, "https://hooks.example.com/regent", model=ml_model)
    read_only = token_for(owner, TokenScope.READ)
    assert post_json(client, rotate_url(webhook), {}, viewer_auth).status_code == 403
    assert post_json(client, rotate_url(webhook), {}, editor_auth).status_code == 403
    assert post_json(client, rotate_url(webhook), {}, read_only).status_code == 403
    hidden = post_json(client, rotate_url(webhook), {}, outsider_auth)
    missing = post_json(client, "/api/v1/webhooks/999999/rotate-secret", {}, outsider_auth)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.content == missing.content
    assert client.post(rotate_url(webhook)).status_code == 401
    webhook.refresh_from_db()
    assert (webhook.secret, webhook.previous_secret) == (secret, "")
    assert not AuditEvent.objects.filter(action="webhook.secret_rotated").exists()
