"""Template helpers for audit events: `{% load audit_tags %}`.

Filters, not model properties, so any page can render a list of events (the "History" tabs
include `audit/_history.html`) without preparing them in Python first.
"""

from typing import Any

from django import template
from django.urls import NoReverseMatch, reverse

from apps.audit import display, links

register = template.Library()


@register.filter
def object_url(event: Any) -> str | None:
    """The page of the event's object, or None (see `apps.audit.links`)."""
    return links.event_object_url(event)


@register.filter
def history_url(event: Any) -> str | None:
    """The object's history page, or None for an event about nothing in particular."""
    if not (event.target_type and event.target_id):
        return None
    try:
        return reverse("audit:object-history", args=[event.target_type, event.target_id])
    except NoReverseMatch:
        return None


@register.filter
def change_rows(event: Any) -> list[display.ChangeRow]:
    """The event's changes as a short diff list (before → after per field)."""
    return display.change_rows(event.changes)


@register.filter
def hidden_fields(event: Any) -> int:
    return display.hidden_fields(event.changes)


@register.filter
def one_line(value: Any) -> str:
    """A stored name or label as one visible, bounded line (the template still escapes it)."""
    return display.shorten(display.printable("" if value is None else value, multiline=False))
