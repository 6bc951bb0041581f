"""Webhook fan-out: audit events become outbox rows in the same transaction.

`audit_record` calls `webhook_fanout_many(events)` with the events it writes. For the actions in
WEBHOOK_EVENTS it creates one WebhookDelivery per active webhook subscribed to that action,
on the event's model or global, then enqueues their sending after commit. A rolled-back
change therefore notifies no one, and a committed one is never lost: if the broker is down
at commit, the row stays `pending` and `webhook_sweep` enqueues it later.

Other actions cost nothing (no query). The payload is built here, once, from the event's
target, and is kept small: the model, version, stage, status and actor of this event, links
to Regent, never data of other models.
"""

from datetime import UTC
from functools import partial
from typing import Any
from urllib.parse import quote

from django.apps import apps
from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.urls import NoReverseMatch

from apps.audit.models import WEBHOOK_EVENTS, AuditEvent, Webhook, WebhookDelivery
from registry_site.prepared import Prepared, sentinel_int

API_PREFIX = "/api/v1"


def _active_in(scope: Q) -> models.QuerySet[Webhook]:
    """Active webhooks, global or of the models `scope` names."""
    scope |= Q(model__isnull=True)
    return Webhook.objects.filter(scope, active=True).only("pk", "model_id", "events")


def _active(shape: tuple, model_id: int | None = None) -> models.QuerySet[Webhook]:
    return _active_in(Q(model_id=model_id) if model_id is not None else Q())


# Compiled once: the look-up runs inside every audited change of a version or stage.
_ACTIVE_GLOBAL = Prepared(_active)
_ACTIVE_FOR_MODEL = Prepared(_active, model_id=sentinel_int())


def _active_webhooks(model_ids: set[int]) -> list[Webhook]:
    if not model_ids:
        return _ACTIVE_GLOBAL.all(())
    if len(model_ids) == 1:
        return _ACTIVE_FOR_MODEL.all((), model_id=next(iter(model_ids)))
    return list(_active_in(Q(model_id__in=model_ids)))


def active_webhooks_sql(model_ids: set[int]) -> tuple[str, list[Any]] | None:
    """The look-up of `webhook_fanout_many` for events of `model_ids` as SQL (columns id,
    model_id, events) and parameters, for the audit append to run in its own statement;
    None where it cannot (events of several models, SQLite)."""
    if not model_ids:
        return _ACTIVE_GLOBAL.bound_sql(())
    if len(model_ids) == 1:
        return _ACTIVE_FOR_MODEL.bound_sql((), model_id=next(iter(model_ids)))
    return None


def webhooks_from_rows(rows: list[list[Any]] | None) -> list[Webhook]:
    """The webhooks `active_webhooks_sql` found, as `[id, model_id, events]` rows."""
    return [Webhook.from_db("default", ["id", "model_id", "events"], row) for row in rows or []]


def webhook_scope(events: list[AuditEvent]) -> set[int] | None:
    """The models whose webhooks `events` may notify, or None: no webhook action among them."""
    if not any(event.action in WEBHOOK_EVENTS for event in events):
        return None
    return {event.model_id for event in events if event.model_id is not None}


def webhook_fanout(event: AuditEvent) -> list[WebhookDelivery]:
    """Queue `event` for every subscribed endpoint; runs in the caller's transaction."""
    return webhook_fanout_many([event])


def webhook_fanout_many(
    events: list[AuditEvent], active: list[Webhook] | None = None
) -> list[WebhookDelivery]:
    """Queue each of `events` (in order) for its subscribed endpoints, with one look-up
    (none when the caller passes what `active_webhooks_sql` found)."""
    scope = webhook_scope(events)
    if scope is None:
        return []
    events = [event for event in events if event.action in WEBHOOK_EVENTS]
    if active is None:
        active = _active_webhooks(scope)
    if not active:
        return []
    deliveries = []
    for event in events:
        webhooks = [
            webhook
            for webhook in active
            if event.action in webhook.events and webhook.model_id in (None, event.model_id)
        ]
        if not webhooks:
            continue
        payload = webhook_payload(event)
        deliveries += [
            WebhookDelivery(
                webhook=webhook,
                event_id=str(event.pk),
                event_type=event.action,
                payload=payload,
                next_attempt_at=event.at,
            )
            for webhook in webhooks
        ]
    if not deliveries:
        return []
    deliveries = WebhookDelivery.objects.bulk_create(deliveries)
    from apps.audit.webhook_delivery import enqueue_delivery

    for delivery in deliveries:
        transaction.on_commit(partial(enqueue_delivery, delivery.pk))
    return deliveries


def webhook_payload(event: AuditEvent) -> dict[str, Any]:
    """`{"type", "timestamp", "data": {"model", "version", "stage", "status", "actor", …}}`."""
    data: dict[str, Any] = {
        "model": None,
        "version": None,
        "stage": None,
        "status": None,
        "actor": event.actor_name,
    }
    target = _target(event)
    if target is not None:
        data.update(_describe(target, event))
    return {
        "type": event.action,
        "timestamp": event.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": data,
    }


def _target(event: AuditEvent) -> models.Model | None:
    try:
        model_class = apps.get_model(event.target_type)
    except (LookupError, ValueError):
        return None
    return model_class._default_manager.filter(pk=event.target_id).first()


def _describe(target: models.Model, event: AuditEvent) -> dict[str, Any]:
    label = target._meta.label_lower
    if label == "registry.modelversion":
        return _version_data(target, event)
    if label == "approvals.promotionrequest":
        return _promotion_data(target)
    if label == "approvals.stage":
        return _stage_data(target, event)
    return {}


def _version_data(version: Any, event: AuditEvent) -> dict[str, Any]:
    # The status this event left the version in (a "version.created" written together with
    # its "version.ready" still reports `pending`); the row's when the event names none.
    after = (event.changes or {}).get("after")
    status = after.get("status") if isinstance(after, dict) else None
    return {
        "model": version.model.name,
        "version": version.number,
        "status": status or version.status,
        "url": absolute_url(version),
    }


def _promotion_data(promotion: Any) -> dict[str, Any]:
    return {
        "model": promotion.stage.model.name,
        "version": promotion.version.number,
        "stage": promotion.stage.name,
        "status": promotion.status,
        "promotion_id": promotion.pk,
        "url": absolute_url(promotion),
    }


def _stage_data(stage: Any, event: AuditEvent) -> dict[str, Any]:
    holder = stage.current_version
    before = (event.changes or {}).get("before") or {}
    return {
        "model": stage.model.name,
        "version": holder.number if holder else None,
        "previous_version": before.get("version"),
        "stage": stage.name,
        "status": holder.status if holder else None,
        "url": absolute_url(stage),
        "manifest_url": api_url("models", stage.model.name, "stages", stage.name, "manifest"),
    }


def absolute_url(target: Any) -> str | None:
    """The object's page on REGENT_BASE_URL (never a host taken from a request)."""
    try:
        return settings.REGENT_BASE_URL + target.get_absolute_url()
    except NoReverseMatch:
        return None


def api_url(*segments: str) -> str:
    """An absolute REST API URL, each segment percent-encoded."""
    path = "/".join(quote(str(segment), safe="") for segment in segments)
    return f"{settings.REGENT_BASE_URL}{API_PREFIX}/{path}"
