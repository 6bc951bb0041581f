"""Webhook endpoints: who may see them, and every change to them (audited).

Owners of a model (the `manage` permission) manage its webhooks; global webhooks (no model:
every model's events) belong to superusers. As everywhere, a webhook on a model the caller
cannot view is a 404, one on a model they view but do not manage a 403.

The signing secret is created here and returned once, to the creator; audit events record
the URL only as its origin and a SHA-256 fingerprint (webhook URLs often carry a token of
their own in the path or query, and the audit log is readable by every viewer of the model).
"""

import base64
import hashlib
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from apps.audit.models import WEBHOOK_EVENTS, DeliveryStatus, Webhook, WebhookDelivery
from apps.audit.services import audit_record
from apps.audit.webhook_delivery import enqueue_delivery
from apps.audit.webhook_guard import allow_private, parse_webhook_url
from apps.registry import access
from apps.registry.models import RegisteredModel
from apps.registry.validation import check_text, invalid
from registry_site.api_errors import Conflict

MAX_DESCRIPTION = 1000
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24
# How long the secret a rotation replaces keeps signing deliveries (as a second signature).
SECRET_OVERLAP = timedelta(hours=24)
MAX_ID = 2**63 - 1


# --- Who may see which webhooks ----------------------------------------------------------------


def _is_superuser(user: Any) -> bool:
    return bool(getattr(user, "is_superuser", False) and user.is_active)


def webhooks_managed_by(user: Any) -> QuerySet[Webhook]:
    """Webhooks on the models `user` manages; every webhook (global ones too) for superusers."""
    webhooks = Webhook.objects.select_related("model", "created_by")
    if _is_superuser(user):
        return webhooks
    return webhooks.filter(model__in=access.models_managed_by(user))


def access_webhook(user: Any, webhook_id: int) -> Webhook:
    """The webhook if `user` may manage it; 404 if its model is hidden (or it is global and
    `user` is no superuser), 403 if the model is visible but not managed."""
    found = Webhook.objects.select_related("model", "created_by").filter(pk=webhook_id)
    # An id beyond bigint is simply not found (never a database error).
    webhook = found.first() if 1 <= webhook_id <= MAX_ID else None
    if webhook is None or (webhook.model is None and not _is_superuser(user)):
        raise Http404("Not found.")
    if webhook.model is not None:
        if not access.models_visible_to(user).filter(pk=webhook.model_id).exists():
            raise Http404("Not found.")
        if not access.can(user, "manage", webhook.model):
            raise PermissionDenied("Only owners of the model manage its webhooks.")
    return webhook


def _ensure_may_manage(actor: Any, model: RegisteredModel | None) -> None:
    if model is None and not _is_superuser(actor):
        raise PermissionDenied("Only superusers manage global webhooks (give a model).")
    if model is not None and not access.can(actor, "manage", model):
        raise PermissionDenied("Only owners of the model manage its webhooks.")


# --- Validation --------------------------------------------------------------------------------


def clean_url(url: Any) -> str:
    """The canonical URL to store, or a 400 naming `url` (webhook_guard has the rules)."""
    return parse_webhook_url(url, allow_private=allow_private()).url


def clean_events(events: Any) -> list[str]:
    """Known event names, each once, in the documented order; at least one."""
    if not isinstance(events, list | tuple) or not events:
        raise invalid("events", "events: subscribe to at least one event.")
    unknown = sorted({str(name) for name in events} - set(WEBHOOK_EVENTS))
    if unknown:
        raise invalid(
            "events", f"events: unknown {', '.join(unknown)}; one of {', '.join(WEBHOOK_EVENTS)}."
        )
    return [name for name in WEBHOOK_EVENTS if name in events]


def new_secret() -> str:
    """`whsec_` + base64 of 24 random bytes (the Standard Webhooks form)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def url_for_audit(url: str) -> dict[str, str]:
    """What the audit log keeps of a URL: its origin and a fingerprint of the whole."""
    parts = urlsplit(url)
    return {
        "url_origin": f"{parts.scheme}://{parts.netloc}",
        "url_sha256": hashlib.sha256(url.encode()).hexdigest(),
    }


def _audited_state(webhook: Webhook) -> dict[str, Any]:
    return {
        **url_for_audit(webhook.url),
        "model": webhook.model.name if webhook.model else None,
        "events": list(webhook.events),
        "description": webhook.description,
        "active": webhook.active,
    }


# --- Changes -----------------------------------------------------------------------------------


def _locked(webhook: Webhook) -> Webhook:
    locked = Webhook.objects.select_for_update(of=("self",)).select_related("model")
    return locked.get(pk=webhook.pk)


@transaction.atomic
def webhook_create(
    *,
    actor: Any,
    url: str,
    events: list[str],
    model: RegisteredModel | None = None,
    description: str = "",
) -> tuple[Webhook, str]:
    """Register an endpoint; returns it with its signing secret, which is never shown again."""
    _ensure_may_manage(actor, model)
    secret = new_secret()
    webhook = Webhook.objects.create(
        model=model,
        url=clean_url(url),
        events=clean_events(events),
        description=check_text(description, "description", max_chars=MAX_DESCRIPTION),
        secret=secret,
        created_by=actor,
    )
    audit_record(
        actor=actor,
        action="webhook.created",
        target=webhook,
        changes={"after": _audited_state(webhook)},
    )
    return webhook, secret


@transaction.atomic
def webhook_update(*, actor: Any, webhook: Webhook, **values: Any) -> Webhook:
    """Change any of url, events, description, active; audited with before and after."""
    webhook = _locked(webhook)
    _ensure_may_manage(actor, webhook.model)
    before = _audited_state(webhook)
    cleaners = {
        "url": clean_url,
        "events": clean_events,
        "description": lambda text: check_text(text, "description", max_chars=MAX_DESCRIPTION),
        "active": bool,
    }
    for name, value in values.items():
        if value is not None:
            setattr(webhook, name, cleaners[name](value))
    after = _audited_state(webhook)
    if after != before:
        webhook.save(update_fields=[name for name in cleaners if name in values])
        changed = [name for name in after if after[name] != before[name]]
        audit_record(
            actor=actor,
            action="webhook.updated",
            target=webhook,
            changes={
                "before": {name: before[name] for name in changed},
                "after": {name: after[name] for name in changed},
            },
        )
    return webhook


@transaction.atomic
def webhook_secret_rotate(*, actor: Any, webhook: Webhook) -> tuple[Webhook, str]:
    """A new signing secret, returned once. For SECRET_OVERLAP every delivery is signed with
    both the new and the replaced secret, so a receiver can switch to the new one without
    rejecting a delivery; rotating again within that time drops the older secret at once.
    The audit event names when the old secret stops signing, never a secret."""
    webhook = _locked(webhook)
    _ensure_may_manage(actor, webhook.model)
    secret = new_secret()
    webhook.previous_secret, webhook.secret = webhook.secret, secret
    webhook.previous_secret_until = timezone.now() + SECRET_OVERLAP
    webhook.save(update_fields=["secret", "previous_secret", "previous_secret_until"])
    audit_record(
        actor=actor,
        action="webhook.secret_rotated",
        target=webhook,
        changes={"previous_secret_signs_until": webhook.previous_secret_until.isoformat()},
    )
    return webhook, secret


@transaction.atomic
def webhook_delete(*, actor: Any, webhook: Webhook) -> None:
    """Remove an endpoint and its delivery log (queued deliveries are dropped)."""
    webhook = _locked(webhook)
    _ensure_may_manage(actor, webhook.model)
    audit_record(
        actor=actor,
        action="webhook.deleted",
        target=webhook,
        changes={"before": _audited_state(webhook)},
    )
    webhook.delete()


@transaction.atomic
def webhook_redeliver(*, actor: Any, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again now, as a fresh series of attempts (same id, body and event).

    409 while it is being sent. The task is enqueued after commit.
    """
    delivery = (
        WebhookDelivery.objects.select_for_update(of=("self",))
        .select_related("webhook__model")
        .get(pk=delivery.pk)
    )
    _ensure_may_manage(actor, delivery.webhook.model)
    if delivery.status == DeliveryStatus.DELIVERING:
        raise Conflict("This delivery is being sent right now.", details={"status": "delivering"})
    before = delivery.status
    delivery.status = DeliveryStatus.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = timezone.now()
    delivery.save(update_fields=["status", "attempts", "next_attempt_at"])
    audit_record(
        actor=actor,
        action="webhook.redelivered",
        target=delivery.webhook,
        changes={
            "delivery": delivery.pk,
            "event_id": delivery.event_id,
            "event_type": delivery.event_type,
            "before": {"status": before},
        },
    )
    transaction.on_commit(lambda: enqueue_delivery(delivery.pk))
    return delivery
