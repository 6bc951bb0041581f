"""Writing audit events. Every service that changes state calls `audit_record` inside its
own transaction, after its writes (the chain lock is then held for the shortest time)."""

from dataclasses import dataclass
from typing import Any

from django.db import connection, models, transaction
from django.utils import timezone
from django.utils.ipv6 import clean_ipv6_address

from apps.audit.chain import GENESIS_HASH, ChainReport, event_hash, to_storable_json
from apps.audit.context import current_context
from apps.audit.models import AuditCheck, AuditEvent
from apps.audit.webhooks import webhook_fanout_many
from registry_site.prepared import PreparedInsert

# Any constant works: it names the one advisory lock that serialises the chain head.
CHAIN_LOCK_KEY = 0x52454745  # "REGE"

SYSTEM_ACTOR_NAME = "system"

_INSERT_EVENTS = PreparedInsert(AuditEvent)


_HEAD_SQL = "SELECT hash FROM {table} ORDER BY id DESC LIMIT 1"
# Two statements in one round trip (no parameters, so psycopg sends them as one simple
# query). Inside the transaction each takes its own snapshot, so the head is read after the
# lock is granted: it is the last event committed by whoever held the lock before.
_LOCK_THEN_HEAD_SQL = "SELECT pg_advisory_xact_lock({key}); " + _HEAD_SQL


def _locked_chain_head() -> str:
    """Serialise appends (two transactions can never link to the same predecessor) and read
    the last event's hash. SQLite serialises write transactions itself."""
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_LOCK_THEN_HEAD_SQL.format(key=int(CHAIN_LOCK_KEY), table=table))
            cursor.nextset()
        else:
            cursor.execute(_HEAD_SQL.format(table=table))
        row = cursor.fetchone()
    return row[0] if row else GENESIS_HASH


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
    entry = AuditEntry(action=action, target=target, changes=changes, model_id=model_id)
    return audit_record_many(actor=actor, entries=[entry], via=via, actor_name=actor_name)[0]


@dataclass(frozen=True)
class AuditEntry:
    """One event of `audit_record_many`: what `audit_record` takes besides the actor."""

    action: str
    target: models.Model | None = None
    changes: dict[str, Any] | None = None
    model_id: int | None = None


def audit_record_many(
    *,
    actor: Any,
    entries: list[AuditEntry],
    via: str | None = None,
    actor_name: str | None = None,
) -> list[AuditEvent]:
    """Append several events by one actor to the chain, in this order, in the caller's
    transaction: one lock, one head read, one INSERT and one webhook look-up for them all.
    """
    context = current_context()
    common: dict[str, Any] = {
        **_actor_fields(actor, actor_name),
        "via": (via or context.via)[:16],
        "ip": _clean_ip(context.ip),
        "user_agent": context.user_agent[:512],
        "request_id": context.request_id[:64],
    }
    rows = []
    for entry in entries:
        fields = {
            **common,
            "action": entry.action[:64],
            **_target_fields(entry.target),
            "changes": to_storable_json(entry.changes or {}),
        }
        if entry.model_id is not None:
            fields["model_id"] = entry.model_id
        rows.append(fields)
    # No savepoint: callers are always inside their own transaction (which an error here
    # must roll back anyway), and two round trips per call are saved. Outside one, this
    # still opens a transaction, so the lock is held from the head read to the insert.
    with transaction.atomic(savepoint=False):
        prev_hash = _locked_chain_head()
        events = []
        for fields in rows:
            # Stamped under the chain lock, so event times follow chain order.
            fields["at"] = timezone.now()
            digest = event_hash(prev_hash, fields)
            events.append(AuditEvent(prev_hash=prev_hash, hash=digest, **fields))
            prev_hash = digest
        # One INSERT; PostgreSQL numbers its rows in this order, which is the chain's.
        _INSERT_EVENTS.insert(events)
        # Webhooks ride on the log: their outbox rows join this same transaction.
        webhook_fanout_many(events)
        return events


def audit_check_record(report: ChainReport) -> AuditCheck:
    """Remember a verification result for the audit page (not itself an audit event)."""
    return AuditCheck.objects.create(
        ok=report.ok,
        events_checked=report.events_checked,
        first_broken_id=report.first_broken_id,
        message=report.message,
        head_hash=report.head_hash,
    )
