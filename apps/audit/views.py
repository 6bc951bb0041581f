"""Audit log pages."""

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from apps.audit.selectors import audit_events_search, audit_latest_check

PAGE_SIZE = 50
MAX_FILTER_LENGTH = 150


def _filters(request: HttpRequest) -> dict[str, str]:
    """The filter form's values, trimmed and bounded."""
    return {
        name: request.GET.get(name, "").strip()[:MAX_FILTER_LENGTH] for name in ("action", "actor")
    }


@require_safe
@login_required
def audit_list(request: HttpRequest) -> HttpResponse:
    """The audit log as a bank statement: newest first, filterable, 50 rows a page."""
    filters = _filters(request)
    events = audit_events_search(request.user, **filters)
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"page": page, "filters": filters, "check": audit_latest_check()}
    return render(request, "audit/list.html", context)
