"""Writing audit events. Every service that changes state calls `audit_record` inside its
own transaction, after its writes (the chain lock is then held for the shortest time)."""

from typing import Any

from django.db import connection, models, transaction
from django.utils import timezone
from django.utils.ipv6 import clean_ipv6_address

from apps.audit.chain import GENESIS_HASH, ChainReport, event_hash, to_storable_json
from apps.audit.context import current_context
from apps.audit.models import AuditCheck, AuditEvent
from apps.audit.webhooks import webhook_fanout

# Any constant works: it names the one advisory lock that serialises the chain head.
CHAIN_LOCK_KEY = 0x52454745  # "REGE"

SYSTEM_ACTOR_NAME = "system"


def _lock_chain_head() -> None:
    """Serialise appends so two transactions can never link to the same predecessor."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])


def _target_fields(target: models.Model | None) -> dict[str, Any]:
    if target is None:
        return {"target_type": "", "target_id": "", "target_label": "", "model_id": None}
    return {
        "target_type": target._meta.label_lower,
        "target_id": str(target.pk),
        "target_label": str(target)[:300],
        "model_id": getattr(target, "audit_model_id", None),
    }


def _clean_ip(ip: str | None) -> str | None:
    if not ip:
        return None
    return clean_ipv6_address(ip) if ":" in ip else ip


def _actor_fields(actor: Any, actor_name: str | None) -> dict[str, Any]:
    if actor is not None and getattr(actor, "is_authenticated", False):
        return {"actor_id": actor.pk, "actor_name": (actor_name or actor.get_username())[:150]}
    return {"actor_id": None, "actor_name": (actor_name or SYSTEM_ACTOR_NAME)[:150]}


def audit_record(
    *,
    actor: Any,
    action: str,
    target: models.Model | None = None,
    changes: dict[str, Any] | None = None,
    model_id: int | None = None,
    via: str | None = None,
    actor_name: str | None = None,
) -> AuditEvent:
    """Append one event to the chain, in the caller's transaction.

    `changes` is free-form JSON, by convention {"before": {...}, "after": {...}} for edits.
    The ip, user agent, request id and channel come from the request context.
    """
    context = current_context()
    fields: dict[str, Any] = {
        **_actor_fields(actor, actor_name),
        "action": action[:64],
        **_target_fields(target),
        "changes": to_storable_json(changes or {}),
        "via": (via or context.via)[:16],
        "ip": _clean_ip(context.ip),
        "user_agent": context.user_agent[:512],
        "request_id": context.request_id[:64],
    }
    if model_id is not None:
        fields["model_id"] = model_id
    # No savepoint: callers are always inside their own transaction (which an error here
    # must roll back anyway), and two round trips per event are saved. Outside one, this
    # still opens a transaction, so the lock is held from the head read to the insert.
    with transaction.atomic(savepoint=False):
        _lock_chain_head()
        # Stamped under the chain lock, so event times follow chain order.
        fields["at"] = timezone.now()
        prev_hash = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        prev_hash = prev_hash or GENESIS_HASH
        event = AuditEvent.objects.create(
            prev_hash=prev_hash, hash=event_hash(prev_hash, fields), **fields
        )
        # Webhooks ride on the log: their outbox rows join this same transaction.
        webhook_fanout(event)
        return event


def audit_check_record(report: ChainReport) -> AuditCheck:
    """Remember a verification result for the audit page (not itself an audit event)."""
    return AuditCheck.objects.create(
        ok=report.ok,
        events_checked=report.events_checked,
        first_broken_id=report.first_broken_id,
        message=report.message,
        head_hash=report.head_hash,
    )
