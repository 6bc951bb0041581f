"""Reads of the audit log."""

from collections.abc import Iterator
from typing import Any

from django.db.models import QuerySet

from apps.audit.chain import CHAINED_FIELDS, ChainReport, verify_rows
from apps.audit.models import AuditCheck, AuditEvent


def chain_rows(chunk_size: int = 5000) -> Iterator[dict[str, Any]]:
    """Every event in chain order, as plain dicts, streamed from the database."""
    columns = ("id", "prev_hash", "hash", *CHAINED_FIELDS)
    return AuditEvent.objects.order_by("id").values(*columns).iterator(chunk_size=chunk_size)


def audit_verify_chain() -> ChainReport:
    return verify_rows(chain_rows())


def audit_events_visible_to(user: Any) -> QuerySet[AuditEvent]:
    """The events `user` may read: all for superusers, otherwise the ones they did.

    Later this widens to events about objects the user may view (through `model_id`);
    every page and endpoint listing events starts from here so the rule lives in one place.
    """
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return AuditEvent.objects.none()
    if user.is_superuser:
        return AuditEvent.objects.all()
    return AuditEvent.objects.filter(actor_id=user.pk)


def audit_events_search(user: Any, *, action: str = "", actor: str = "") -> QuerySet[AuditEvent]:
    """Visible events, newest first, filtered by action and actor name.

    `action` is a full action ("token.created") or a family ("token" or "token."),
    which matches every action of that family.
    """
    events = audit_events_visible_to(user)
    family, _, name = action.partition(".")
    if name:
        events = events.filter(action=action)
    elif family:
        events = events.filter(action__startswith=f"{family}.")
    if actor:
        events = events.filter(actor_name__iexact=actor)
    return events.order_by("-id")


def audit_latest_check() -> AuditCheck | None:
    """The most recent chain verification, if any has run."""
    return AuditCheck.objects.order_by("-checked_at", "-id").first()
