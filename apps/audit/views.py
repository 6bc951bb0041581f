"""Audit log pages: the statement, its export, the chain check and per-object history.

Everything reads through `apps.audit.selectors`, whose `audit_events_visible_to` is the one
permission rule: a page, a count, an export or a history never shows an event about a model
the caller may not view.
"""

import logging
from collections.abc import Iterator
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_POST, require_safe

from apps.audit import export
from apps.audit.forms import AuditFilterForm
from apps.audit.models import AuditEvent
from apps.audit.selectors import (
    AuditFilters,
    EventPage,
    access_history_target,
    audit_events_matching,
    audit_events_page,
    audit_latest_check,
    audit_log_size_at_most,
    audit_verify_chain,
    history_for,
    parse_id,
    redact_events,
    redact_rows,
)
from apps.audit.services import audit_check_record, audit_record

logger = logging.getLogger(__name__)

# "Verify now" runs in the request up to this many events (well under a second of hashing);
# a larger log is verified by the worker and the page shows the result once it is recorded.
SYNC_VERIFY_MAX_EVENTS = 20_000


def _page(request: HttpRequest, events: Any) -> EventPage:
    before, after = parse_id(request.GET.get("before")), parse_id(request.GET.get("after"))
    page = audit_events_page(events, before=before, after=after)
    redact_events(request.user, page.object_list)
    return page


@require_safe
@login_required
def audit_list(request: HttpRequest) -> HttpResponse:
    """The audit log as a bank statement: newest first, filterable, 50 rows a page."""
    form = AuditFilterForm(request.GET)
    valid = form.is_valid()
    events = audit_events_matching(request.user, form.filters() if valid else AuditFilters())
    events = events if valid else events.none()
    context = {"page": _page(request, events), "form": form, "check": audit_latest_check()}
    return render(request, "audit/list.html", context, status=200 if valid else 400)


@require_safe
@login_required
def audit_export(request: HttpRequest) -> HttpResponse:
    """The filtered, visible events as CSV or JSONL, streamed oldest first.

    The export stops at the newest event when it starts, and records itself as
    `audit.exported` just after that point (so it is not part of its own file).
    """
    export_format = request.GET.get("format", "csv")
    form = AuditFilterForm(request.GET)
    if export_format not in export.FORMATS or not form.is_valid():
        return HttpResponseBadRequest(
            "Unknown format or invalid filters.", content_type="text/plain"
        )
    head = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    events = audit_events_matching(request.user, form.filters()).filter(id__lte=head)
    _record_export(request, export_format, head)
    rows = redact_rows(request.user, export.export_rows(events))
    return _streaming_export(export_format, rows)


def _record_export(request: HttpRequest, export_format: str, head: int) -> None:
    filters = {name: value for name, value in _form_values(request).items() if value}
    audit_record(
        actor=request.user,
        action="audit.exported",
        changes={"format": export_format, "filters": filters, "up_to_event": head},
    )


def _form_values(request: HttpRequest) -> dict[str, str]:
    return {name: request.GET.get(name, "")[:150] for name in AuditFilterForm.base_fields}


def _streaming_export(export_format: str, rows: Iterator[dict]) -> StreamingHttpResponse:
    content = export.stream(export_format, rows)
    response = StreamingHttpResponse(content, content_type=export.FORMATS[export_format][0])
    filename = export.export_filename(export_format, timezone.now())
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    patch_cache_control(response, private=True, no_store=True)
    return response


@require_POST
@login_required
def audit_verify(request: HttpRequest) -> HttpResponse:
    """Superusers: verify the chain now (in the request when small, else by the worker)."""
    if not request.user.is_superuser:
        raise PermissionDenied("Only a superuser may verify the audit chain.")
    if audit_log_size_at_most(SYNC_VERIFY_MAX_EVENTS):
        check = audit_check_record(audit_verify_chain())
        if check.ok:
            messages.success(request, f"Chain intact: {check.events_checked:,} events verified.")
        else:
            messages.error(request, f"Chain BROKEN: {check.message}.")
    elif _enqueue_verify():
        messages.info(request, "Verification queued: the result appears here when it is done.")
    else:
        messages.error(request, "Could not queue the verification. Run manage.py audit_verify.")
    return redirect("audit:list")


def _enqueue_verify() -> bool:
    from apps.audit.tasks import audit_verify_task

    try:
        audit_verify_task.delay()
    except Exception:
        logger.exception("Could not enqueue the audit chain verification")
        return False
    return True


@require_safe
@login_required
def object_history(request: HttpRequest, target_type: str, target_id: str) -> HttpResponse:
    """Every event about one object (for a model: also its versions, stages, requests)."""
    target = access_history_target(request.user, target_type, target_id)  # 404 if not visible
    page = _page(request, history_for(request.user, (target.target_type, target.target_id)))
    return render(request, "audit/object_history.html", {"target": target, "page": page})
