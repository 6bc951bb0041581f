"""`GET /api/v1/audit`: the audit events the caller may read (thin: filters + selectors).

The same permission rule and filters as the audit page (`audit_events_visible_to`,
`AuditFilterForm`): a model the caller may not view filters to an empty list, exactly like
a model that does not exist. Mounted by `registry_site/api.py` with `api.add_router("/", router)`.
"""

import math
from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema

from apps.audit.forms import AuditFilterForm
from apps.audit.links import event_object_url
from apps.audit.models import AuditEvent
from apps.audit.selectors import audit_events_matching, count_capped, redact_events
from registry_site.api_errors import ApiError

router = Router(tags=["audit"])

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
# Deep pages cost an OFFSET; past this, walk with `before=<id>` (keyset) or use the export.
MAX_PAGE = 100_000
MAX_ID = 2**63 - 1


class AuditEventOut(Schema):
    """One event: every chained field, its hashes, and the page of its object (or null)."""

    id: int
    at: datetime
    actor: str
    actor_id: int | None
    action: str
    target_type: str
    target_id: str
    target_label: str
    model_id: int | None
    changes: Any
    via: str
    ip: str | None
    user_agent: str
    request_id: str
    prev_hash: str
    hash: str
    url: str | None

    @staticmethod
    def resolve_actor(obj: AuditEvent) -> str:
        return obj.actor_name

    @staticmethod
    def resolve_url(obj: AuditEvent) -> str | None:
        return event_object_url(obj)


class AuditPage(Schema):
    items: list[AuditEventOut]
    count: int = Field(description="Matching events, counted up to a cap (see count_capped)")
    count_capped: bool = Field(description="True when there are more than `count` events")
    page: int
    pages: int


def _filters(values: dict[str, str]) -> AuditFilterForm:
    form = AuditFilterForm({name: value for name, value in values.items() if value})
    if not form.is_valid():
        errors = [
            {"field": field, "message": message}
            for field, messages in form.errors.items()
            for message in messages
        ]
        fields = ", ".join(sorted(form.errors))
        raise ApiError(f"Invalid input: {fields}.", status=422, details={"errors": errors})
    return form


@router.get("/audit", response=AuditPage, summary="Audit events you may read, newest first")
def audit_list(
    request: HttpRequest,
    model: str = Query("", max_length=150, description="A model name"),
    actor: str = Query("", max_length=150, description="A username, any case"),
    action: str = Query("", max_length=150, description='"token.created" or a family: "token"'),
    target: str = Query("", max_length=150, description='"registry.modelversion:42"'),
    via: str = Query("", max_length=150, description="web, api, email, mlflow, admin…"),
    since: str = Query("", max_length=150, description="A date or ISO 8601 moment, UTC"),
    until: str = Query("", max_length=150, description="Inclusive; a date means its whole day"),
    before: int | None = Query(
        None, ge=1, le=2**63 - 1, description="Only events older than this id"
    ),
    page: int = Query(1, ge=1, le=MAX_PAGE),
    page_size: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
) -> dict[str, Any]:
    form = _filters(
        {"model": model, "actor": actor, "action": action, "target": target, "via": via}
        | {"since": since, "until": until}
    )
    events = audit_events_matching(request.auth, form.filters())
    if before is not None:
        events = events.filter(id__lt=before)
    # Counting a million-event log on every call costs more than the page: cap it, and
    # page deeper with `before=<id>` instead of large offsets.
    count, capped = count_capped(events)
    start = (page - 1) * page_size
    items = list(events.order_by("-id")[start : start + page_size])
    return {
        "items": redact_events(request.auth, items),
        "count": count,
        "count_capped": capped,
        "page": page,
        "pages": max(1, math.ceil(count / page_size)),
    }
