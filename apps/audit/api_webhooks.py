"""Webhook endpoints of the REST API: `/api/v1/webhooks…` (thin: schemas + services).

Owners manage the webhooks of their models, superusers also global ones (no model). A
webhook on a model the caller cannot view is a 404, on one they view but do not manage a
403. The signing secret appears in the creation response only.
"""

import math
from datetime import datetime
from typing import Any, Literal

from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict, StrictBool

from apps.audit.models import DeliveryStatus, Webhook, WebhookDelivery
from apps.audit.webhook_services import (
    MAX_ID,
    access_webhook,
    webhook_create,
    webhook_delete,
    webhook_redeliver,
    webhook_secret_rotate,
    webhook_update,
    webhooks_managed_by,
)
from apps.registry.access import access_model
from apps.registry.paths import InvalidModelName, validate_model_name

router = Router(tags=["webhooks"])

EventName = Literal[
    "version.created",
    "version.ready",
    "version.failed",
    "promotion.requested",
    "promotion.approved",
    "promotion.rejected",
    "stage.changed",
    "stage.rolled_back",
]
DeliveryStatusName = Literal["pending", "delivering", "succeeded", "failed"]
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_PAGE = 1_000_000
PageQuery = Query(1, ge=1, le=MAX_PAGE)
PageSizeQuery = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
WEBHOOK_PATH = "/webhooks/{int:webhook_id}"


# --- Schemas -----------------------------------------------------------------------------------


class StrictIn(Schema):
    """Unknown fields are a 422 (no mass assignment), as in every input schema."""

    model_config = ConfigDict(extra="forbid")


class WebhookCreateIn(StrictIn):
    url: str = Field(max_length=2048, description="https:// endpoint that receives the POSTs")
    events: list[EventName] = Field(min_length=1, max_length=32)
    model: str | None = Field(None, max_length=128, description="A model name; none: global")
    description: str = Field("", max_length=1000)


class WebhookPatchIn(StrictIn):
    url: str | None = Field(None, max_length=2048)
    events: list[EventName] | None = Field(None, min_length=1, max_length=32)
    description: str | None = Field(None, max_length=1000)
    active: StrictBool | None = None


class WebhookOut(Schema):
    id: int
    url: str
    model: str | None = Field(description="null: a global webhook (every model)")
    events: list[str]
    description: str
    active: bool
    created_by: str | None
    created_at: datetime


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(
        description="whsec_…: the signing secret, shown in this response only; store it now"
    )


class WebhookRotatedOut(WebhookCreatedOut):
    previous_secret_signs_until: datetime = Field(
        description="Until then deliveries carry a second signature, by the replaced secret"
    )


class WebhookPage(Schema):
    items: list[WebhookOut]
    count: int
    page: int
    pages: int


class DeliveryOut(Schema):
    id: int
    event_id: str = Field(description="The audit event; the webhook-id header is evt_<it>")
    event_type: str
    status: DeliveryStatusName
    attempts: int
    response_code: int | None
    duration_ms: int | None
    last_error: str
    next_attempt_at: datetime | None = Field(description="When a pending delivery is due")
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]


class DeliveryPage(Schema):
    items: list[DeliveryOut]
    count: int
    page: int
    pages: int


# --- Shaping -----------------------------------------------------------------------------------


def _webhook_out(webhook: Webhook) -> dict[str, Any]:
    return {
        "id": webhook.pk,
        "url": webhook.url,
        "model": webhook.model.name if webhook.model else None,
        "events": list(webhook.events),
        "description": webhook.description,
        "active": webhook.active,
        "created_by": webhook.created_by.username if webhook.created_by else None,
        "created_at": webhook.created_at,
    }


def _delivery_out(delivery: WebhookDelivery) -> dict[str, Any]:
    pending = delivery.status == DeliveryStatus.PENDING
    return {
        "id": delivery.pk,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "response_code": delivery.response_code,
        "duration_ms": delivery.duration_ms,
        "last_error": delivery.last_error,
        "next_attempt_at": delivery.next_attempt_at if pending else None,
        "created_at": delivery.created_at,
        "delivered_at": delivery.delivered_at,
        "payload": delivery.payload,
    }


def _paginate(queryset: QuerySet, page: int, page_size: int, shape: Any) -> dict[str, Any]:
    """One COUNT and one page query; a page past the end is empty rather than an error."""
    count = queryset.count()
    start = (page - 1) * page_size
    return {
        "items": [shape(row) for row in queryset[start : start + page_size]],
        "count": count,
        "page": page,
        "pages": max(1, math.ceil(count / page_size)),
    }


def _model(request: HttpRequest, name: str) -> Any:
    """A model the caller manages: 404 if it cannot be a name or is not visible, else 403."""
    try:
        validate_model_name(name)
    except InvalidModelName:
        raise Http404("Not found.") from None
    return access_model(request.auth, name, "manage")


# --- Endpoints ---------------------------------------------------------------------------------


@router.post("/webhooks", response={201: WebhookCreatedOut}, summary="Register a webhook")
def webhook_create_endpoint(request: HttpRequest, payload: WebhookCreateIn) -> Status:
    """Owners for their model; superusers for every model (no `model`). The response is the
    only time the signing secret is shown. A URL the server must not call is a 400 naming
    `url` (https only; no private, loopback or link-local address, in any spelling)."""
    model = _model(request, payload.model) if payload.model is not None else None
    webhook, secret = webhook_create(
        actor=request.auth,
        url=payload.url,
        events=payload.events,
        model=model,
        description=payload.description,
    )
    return Status(201, {**_webhook_out(webhook), "secret": secret})


@router.get("/webhooks", response=WebhookPage, summary="Webhooks you manage")
def webhook_list(
    request: HttpRequest,
    model: str | None = Query(None, max_length=128, description="Only this model's"),
    page: int = PageQuery,
    page_size: int = PageSizeQuery,
) -> dict[str, Any]:
    """Webhooks on the models you own (all of them, global ones too, for superusers),
    newest first. With `model`: 404 if you cannot view it, 403 if you do not own it."""
    webhooks = webhooks_managed_by(request.auth)
    if model is not None:
        webhooks = webhooks.filter(model=_model(request, model))
    return _paginate(webhooks.order_by("-created_at", "-pk"), page, page_size, _webhook_out)


@router.get(WEBHOOK_PATH, response=WebhookOut, summary="A webhook")
def webhook_get(request: HttpRequest, webhook_id: int) -> dict[str, Any]:
    return _webhook_out(access_webhook(request.auth, webhook_id))


@router.patch(WEBHOOK_PATH, response=WebhookOut, summary="Change a webhook")
def webhook_patch(request: HttpRequest, webhook_id: int, payload: WebhookPatchIn) -> dict:
    """Any of `url`, `events`, `description`, `active`; absent fields are unchanged."""
    webhook = access_webhook(request.auth, webhook_id)
    values = payload.model_dump(exclude_unset=True)
    webhook = webhook_update(actor=request.auth, webhook=webhook, **values)
    return _webhook_out(access_webhook(request.auth, webhook.pk))


@router.post(
    WEBHOOK_PATH + "/rotate-secret", response=WebhookRotatedOut, summary="Rotate the secret"
)
def webhook_rotate_secret(request: HttpRequest, webhook_id: int) -> dict[str, Any]:
    """A new signing secret, shown in this response only. For 24 hours every delivery is
    signed with both the new and the replaced secret (two signatures in `webhook-signature`),
    so the receiver can switch to the new one without rejecting any delivery."""
    webhook = access_webhook(request.auth, webhook_id)
    webhook, secret = webhook_secret_rotate(actor=request.auth, webhook=webhook)
    return {
        **_webhook_out(webhook),
        "secret": secret,
        "previous_secret_signs_until": webhook.previous_secret_until,
    }


@router.delete(WEBHOOK_PATH, response={204: None}, summary="Delete a webhook")
def webhook_remove(request: HttpRequest, webhook_id: int) -> Status:
    webhook_delete(actor=request.auth, webhook=access_webhook(request.auth, webhook_id))
    return Status(204, None)


@router.get(WEBHOOK_PATH + "/deliveries", response=DeliveryPage, summary="Delivery log")
def delivery_list(
    request: HttpRequest,
    webhook_id: int,
    status: DeliveryStatusName | None = None,
    page: int = PageQuery,
    page_size: int = PageSizeQuery,
) -> dict[str, Any]:
    """The webhook's deliveries, newest first: status, response code, duration, attempts."""
    webhook = access_webhook(request.auth, webhook_id)
    deliveries = WebhookDelivery.objects.filter(webhook=webhook).order_by("-pk")
    if status is not None:
        deliveries = deliveries.filter(status=status)
    return _paginate(deliveries, page, page_size, _delivery_out)


@router.post(
    WEBHOOK_PATH + "/deliveries/{int:delivery_id}/redeliver",
    response={202: DeliveryOut},
    summary="Send a delivery again",
)
def delivery_redeliver(request: HttpRequest, webhook_id: int, delivery_id: int) -> Status:
    """Queues a fresh series of attempts with the same event id and body (a new timestamp
    and signature). 409 while the delivery is being sent."""
    webhook = access_webhook(request.auth, webhook_id)
    delivery = None
    if 1 <= delivery_id <= MAX_ID:
        delivery = WebhookDelivery.objects.filter(webhook=webhook, pk=delivery_id).first()
    if delivery is None:
        raise Http404("Not found.")
    return Status(202, _delivery_out(webhook_redeliver(actor=request.auth, delivery=delivery)))
