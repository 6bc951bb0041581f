"""Writing audit events. Every service that changes state calls `audit_record` inside its
own transaction, after its writes (the chain head's row lock is then held for the shortest
time: from the append to the commit)."""

import contextlib
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections, models, transaction
from django.utils import timezone
from django.utils.ipv6 import clean_ipv6_address

from apps.audit.chain import (
    GENESIS_HASH,
    ChainReport,
    canonical_form,
    canonical_form_parts,
    event_hash,
    to_storable_json,
)
from apps.audit.context import current_context
from apps.audit.models import AuditChainHead, AuditCheck, AuditEvent, Webhook
from apps.audit.webhooks import (
    WEBHOOK_EVENTS,
    active_webhooks_sql,
    webhook_fanout_many,
    webhook_scope,
    webhooks_from_rows,
)
from registry_site.prepared import InsertStep, TogetherPlan, insert_together

SYSTEM_ACTOR_NAME = "system"

_HEAD_SQL = "SELECT hash FROM {table} ORDER BY id DESC LIMIT 1"


def _sqlite_chain_head() -> str:
    """The last event's hash. SQLite serialises write transactions itself."""
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(_HEAD_SQL.format(table=table))
        row = cursor.fetchone()
    return row[0] if row else GENESIS_HASH


# The columns an append binds: all but the key and the two hashes, which PostgreSQL computes.
_BOUND_FIELDS = [
    field
    for field in AuditEvent._meta.concrete_fields
    if field.attname not in ("id", "prev_hash", "hash")
]
_append_sql: dict[tuple[int, str], str] = {}  # (number of events, webhook look-up) → SQL
APPEND_BATCH = 32  # events per statement: bounds the statements kept and their parameters


def _compile_append(count: int, hooks: str) -> str:
    """One statement for `count` events: update the head row (its lock serialises appends;
    a waiter re-reads the row once the holder commits, and computes from that hash), hash
    the events onto it with `audit_chain_hashes`, insert them in order and, with `hooks`
    (the webhook look-up's SQL), return the webhooks to notify alongside. No head row (a
    new or flushed database): nothing is inserted, and `_append` seeds it."""
    row = [_cast(field) for field in _BOUND_FIELDS]
    ctes = _append_ctes(["%s::text"] * count, [row] * count, gate=None)
    found = "NULL"
    if hooks:
        found = "(SELECT json_agg(json_build_array(w.id, w.model_id, w.events))"
        found += f" FROM ({hooks}) w)"
    sql = f"WITH {', '.join(ctes)} SELECT id, prev_hash, hash, {found} FROM appended"  # noqa: S608
    _append_sql[(count, hooks)] = sql
    return sql


def _cast(field: models.Field) -> str:
    """`%s::<column type>`, the placeholder of one bound column (computed once per field)."""
    cast = _casts.get(field)
    if cast is None:
        cast = _casts[field] = f"%s::{field.db_type(connection)}"
    return cast


_casts: dict[models.Field, str] = {}


def _wrapper() -> Any:
    """The default database's wrapper itself. `django.db.connection` is a proxy that looks
    the wrapper up (a context-local read) on every attribute: ~2 µs each, and a field's
    `get_db_prep_save` reads several, for every value bound."""
    return connections[DEFAULT_DB_ALIAS]


def _append_ctes(forms: list[str], rows: list[list[str]], *, gate: str | None) -> list[str]:
    """The CTEs `forms`, `head`, `chained` and `appended` that chain and insert one event
    per form: `forms` are SQL texts of the canonical forms, `rows` those of each event's
    `_BOUND_FIELDS`.

    With `gate` (the name of a CTE inserting the rows the events are about), the events are
    appended only if that CTE inserted a row, after it (so a statement locks the rows it
    changes before the head, as every transaction does), and a missing head row fails the
    statement (RG001, migration audit.0006) instead of inserting nothing."""
    quote = connection.ops.quote_name
    count = len(forms)
    columns = [quote(field.column) for field in _BOUND_FIELDS]
    values = ", ".join(f"({', '.join(row)}, {n})" for n, row in enumerate(rows, start=1))
    texts = f"forms AS (SELECT ARRAY[{', '.join(forms)}] AS texts"
    head = (
        f"head AS (UPDATE {quote(AuditChainHead._meta.db_table)} SET prev_hash = hash,"  # noqa: S608
        f" hash = (audit_chain_hashes(hash, (SELECT texts FROM forms)))[{count}] WHERE id = 1"
    )
    if gate is None:
        texts += ")"
        head += " RETURNING prev_hash)"
        chained = (
            "chained AS (SELECT prev_hash AS first,"
            " audit_chain_hashes(prev_hash, (SELECT texts FROM forms)) AS hashes FROM head)"
        )
    else:
        texts += f" FROM (SELECT 1 FROM {gate} LIMIT 1) AS gate)"  # noqa: S608 (our names)
        head += " AND EXISTS (SELECT 1 FROM forms) RETURNING prev_hash)"
        chained = (
            "chained AS (SELECT audit_chain_head_required(head.prev_hash) AS first,"
            " audit_chain_hashes(head.prev_hash, forms.texts) AS hashes"
            " FROM forms LEFT JOIN head ON true)"
        )
    return [
        texts,
        head,
        chained,
        f"appended AS (INSERT INTO {quote(AuditEvent._meta.db_table)}"  # noqa: S608
        f" ({', '.join(columns)}, prev_hash, hash)"
        f" SELECT {', '.join('e.' + column for column in columns)},"
        " CASE WHEN e.n = 1 THEN chained.first ELSE chained.hashes[e.n - 1] END,"
        " chained.hashes[e.n]"
        f" FROM chained, (VALUES {values}) AS e({', '.join(columns)}, n)"
        " ORDER BY e.n RETURNING id, prev_hash, hash)",
    ]


# The head as the events leave it; inserted only where there is no row yet (a concurrent
# seeder wins, which is as good).
_SEED_HEAD_SQL = (
    "INSERT INTO {head} (id, prev_hash, hash)"
    " SELECT 1, COALESCE(MAX(prev_hash), %s), COALESCE(MAX(hash), %s)"
    " FROM (SELECT prev_hash, hash FROM {events} ORDER BY id DESC LIMIT 1) AS last"
    " ON CONFLICT (id) DO NOTHING"
)


def _append(
    events: list[AuditEvent], forms: list[str], hooks: tuple[str, list[Any]] | None
) -> list[Webhook]:
    """Chain and insert `events` (PostgreSQL), setting their ids and hashes; the webhooks
    the `hooks` look-up finds."""
    count = len(events)
    hooks_sql, hooks_params = hooks or ("", [])
    sql = _append_sql.get((count, hooks_sql)) or _compile_append(count, hooks_sql)
    params: list[Any] = list(forms)
    db = _wrapper()
    for event in events:
        params += [
            field.get_db_prep_save(getattr(event, field.attname), db) for field in _BOUND_FIELDS
        ]
    params += hooks_params
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        if not rows:  # no head row yet
            _seed_head()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
    rows.sort()  # ids follow the chain's order
    for event, (key, prev_hash, digest, _) in zip(events, rows, strict=True):
        event.pk, event.prev_hash, event.hash = key, prev_hash, digest
        event._state.adding, event._state.db = False, "default"
    return webhooks_from_rows(rows[0][3])


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
    transaction: one statement (on PostgreSQL) and one webhook look-up for them all.
    """
    rows = _event_rows(actor, entries, via, actor_name)
    # No savepoint: callers are always inside their own transaction (which an error here
    # must roll back anyway). Outside one, this still opens a transaction.
    with transaction.atomic(savepoint=False):
        for fields in rows:
            fields["at"] = timezone.now()
        if connection.vendor == "postgresql":
            return _postgres_append(rows)
        events = _sqlite_append(rows)
        webhook_fanout_many(events)
        return events


def insert_and_record(
    *steps: InsertStep, actor: Any, entries: list[AuditEntry], via: str | None = None
) -> list[AuditEvent]:
    """`insert_together(*steps)`, then `audit_record_many(actor=actor, entries=entries)`, as
    one transaction: on PostgreSQL one statement where `record_inserted` can, else (and on
    SQLite) the two in `transaction.atomic`."""
    if connection.vendor == "postgresql":
        plan = TogetherPlan(steps, _wrapper())
        events = record_inserted(plan, actor=actor, entries=entries, via=via)
        if events is not None:
            return events
    with transaction.atomic():
        insert_together(*steps)
        return audit_record_many(actor=actor, entries=entries, via=via)


def record_inserted(
    plan: Any, *, actor: Any, entries: list[AuditEntry], via: str | None = None
) -> list[AuditEvent] | None:
    """Run `plan`'s inserts and append `entries`' events in one statement (PostgreSQL): as it
    stands outside a transaction (a statement commits by itself: no BEGIN and no COMMIT
    round trip), in a savepoint inside one (a refused insert leaves the caller's
    transaction usable, as `transaction.atomic` would).

    `plan` is a `registry_site.prepared.TogetherPlan` or anything with its interface; its
    first CTE's rows gate the events. An entry's target may be a row inserted here: the
    database fills in its new key as the event's target_id, and as its model_id where that
    is the target's own key (a model).

    Returns the events; `[]` when the plan inserted nothing (nothing changed); None, with
    nothing changed, when this cannot be one statement: a long batch, webhooks of several
    models, or webhooks waiting for these events (their deliveries must commit with them:
    the statement looks them up and fails if there are any). The caller then takes its
    transactional path.
    """
    if len(entries) > APPEND_BATCH:
        return None
    rows = _event_rows(actor, entries, via, None)
    keyed = [_keyed_fields(plan, entry, row) for entry, row in zip(entries, rows, strict=True)]
    hooks: tuple[str, list[Any]] | None = None
    if any(entry.action in WEBHOOK_EVENTS for entry in entries):
        if any("model_id" in names for names in keyed):
            return None  # whose webhooks: known only once inserted
        hooks = active_webhooks_sql({row["model_id"] for row in rows if row["model_id"]})
        if hooks is None:
            return None
    try:
        return _insert_and_append(plan, entries, rows, keyed, hooks)
    except HeadMissing:
        _seed_head()  # the failed statement changed nothing; once more, onto the seeded head
    return _insert_and_append(plan, entries, rows, keyed, hooks)


class HeadMissing(Exception):
    """The chain head row was missing (guard RG001, migration audit.0006)."""


def _keyed_fields(plan: Any, entry: AuditEntry, row: dict[str, Any]) -> dict[str, bool]:
    """The event's fields that take its target's new key → whether the form quotes them:
    target_id (text) when the target is inserted here, and model_id (a number) when the
    target's `audit_model_id` is its own key."""
    target = entry.target
    if target is None or not plan.inserts(target):
        return {}
    keyed = {"target_id": True}
    if row["model_id"] is None:
        saved, target.pk = target.pk, _PROBE
        try:
            if getattr(target, "audit_model_id", None) is _PROBE:
                keyed["model_id"] = False
        finally:
            target.pk = saved
    return keyed


_PROBE = object()
_insert_append_sql: dict[tuple, str] = {}  # (plan shape, keyed fields) → SQL


def _insert_and_append(
    plan: Any,
    entries: list[AuditEntry],
    rows: list[dict[str, Any]],
    keyed: list[dict[str, bool]],
    hooks: tuple[str, list[Any]] | None,
) -> list[AuditEvent] | None:
    forms, values, form_params, row_params = [], [], [], []
    for entry, row, names in zip(entries, rows, keyed, strict=True):
        row["at"] = timezone.now()
        form, columns, params = _event_sql(plan, entry, row, names)
        forms.append(form)
        values.append(columns)
        form_params += params[0]
        row_params += params[1]
    hooks_sql, hooks_params = hooks or ("", [])
    targets = tuple(plan.step_of(entry.target) for entry in entries)
    shape = (plan.shape, targets, tuple(tuple(names) for names in keyed), hooks_sql)
    sql = _insert_append_sql.get(shape) or _compile_insert_append(
        shape, plan, forms, values, hooks_sql
    )
    try:
        with _savepoint_in_a_transaction(), connection.cursor() as cursor:
            cursor.execute(sql, [*plan.params, *form_params, *row_params, *hooks_params])
            returned = cursor.fetchall()
    except DatabaseError as error:
        state = getattr(error.__cause__, "sqlstate", None)
        if state == "RG002":
            return None  # webhooks wait for these events
        if state == "RG001":
            raise HeadMissing from error
        raise
    plan.assign_keys([(index, key) for index, key, *_ in returned if index >= 0])
    appended = sorted((key, prev, digest) for index, key, prev, digest in returned if index == -1)
    if not appended:
        return []  # the plan's gate held: nothing was inserted
    events = []
    for entry, row, names, (key, prev_hash, digest) in zip(
        entries, rows, keyed, appended, strict=True
    ):
        if names:
            row["target_id"] = str(entry.target.pk)
            if "model_id" in names:
                row["model_id"] = entry.target.pk
        event = AuditEvent(**row, prev_hash=prev_hash, hash=digest)
        event.pk = key
        event._state.adding, event._state.db = False, "default"
        events.append(event)
    return events


def _savepoint_in_a_transaction() -> Any:
    """Inside a transaction, a savepoint (a refused statement leaves the transaction usable);
    outside one, nothing: the statement commits by itself."""
    if connection.in_atomic_block or not connection.get_autocommit():
        return transaction.atomic()
    return contextlib.nullcontext()


def _compile_insert_append(
    shape: tuple, plan: Any, forms: list[str], values: list[list[str]], hooks: str
) -> str:
    ctes = [*plan.ctes(), *_append_ctes(forms, values, gate=plan.gate)]
    selects = [*plan.selects(padding=2), "SELECT -1, id, prev_hash, hash FROM appended"]
    if hooks:  # fails the statement (RG002) where webhooks wait for these events
        found = f"(SELECT count(*) FROM ({hooks}) w)"  # noqa: S608 (compiled ORM SQL)
        selects.append(f"SELECT -2, audit_no_deliveries_due({found}), NULL, NULL")
    sql = _insert_append_sql[shape] = f"WITH {', '.join(ctes)} {' UNION ALL '.join(selects)}"
    return sql


def _event_sql(
    plan: Any, entry: AuditEntry, row: dict[str, Any], names: dict[str, bool]
) -> tuple[str, list[str], tuple[list[Any], list[Any]]]:
    """One event's canonical form and column values as SQL, and their parameters (form's,
    columns'); the fields in `names` read the target's new key."""
    db = plan.connection
    if not names:
        columns = [_cast(field) for field in _BOUND_FIELDS]
        values = [field.get_db_prep_save(row[field.attname], db) for field in _BOUND_FIELDS]
        return "%s::text", columns, ([canonical_form(row)], values)
    key_sql, key_params = plan.key_of(entry.target)
    parts = canonical_form_parts(row, names)
    form = "(" + f" || ({key_sql})::text || ".join(["%s::text"] * len(parts)) + ")"
    form_params = [parts[0]]
    for part in parts[1:]:
        form_params += [*key_params, part]
    columns, values = [], []
    for field in _BOUND_FIELDS:
        if field.attname in names:
            columns.append(f"({key_sql}){_cast(field)[2:]}")
            values += key_params
        else:
            columns.append(_cast(field))
            values.append(field.get_db_prep_save(row[field.attname], db))
    return form, columns, (form_params, values)


def _seed_head() -> None:
    quote = connection.ops.quote_name
    seed = _SEED_HEAD_SQL.format(
        head=quote(AuditChainHead._meta.db_table), events=quote(AuditEvent._meta.db_table)
    )
    with connection.cursor() as cursor:
        cursor.execute(seed, [GENESIS_HASH, GENESIS_HASH])


def _event_rows(
    actor: Any, entries: list[AuditEntry], via: str | None, actor_name: str | None
) -> list[dict[str, Any]]:
    """Each entry's column values, but `at` (stamped just before the append)."""
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
    return rows


def _postgres_append(rows: list[dict[str, Any]]) -> list[AuditEvent]:
    """`_append` in batches; webhooks ride on the log, looked up in the same statement when
    that can be done, and their outbox rows join this same transaction."""
    events = [AuditEvent(**fields) for fields in rows]
    forms = [canonical_form(fields) for fields in rows]
    scope = webhook_scope(events)
    hooks = None
    if scope is not None and len(events) <= APPEND_BATCH:
        hooks = active_webhooks_sql(scope)
    for start in range(0, len(events), APPEND_BATCH):
        batch = slice(start, start + APPEND_BATCH)
        found = _append(events[batch], forms[batch], hooks)
    webhook_fanout_many(events, active=found if hooks else None)
    return events


def _sqlite_append(rows: list[dict[str, Any]]) -> list[AuditEvent]:
    prev_hash = _sqlite_chain_head()
    events = []
    for fields in rows:
        digest = event_hash(prev_hash, fields)
        events.append(AuditEvent(prev_hash=prev_hash, hash=digest, **fields))
        prev_hash = digest
    return AuditEvent.objects.bulk_create(events)


def audit_check_record(report: ChainReport) -> AuditCheck:
    """Remember a verification result for the audit page (not itself an audit event)."""
    return AuditCheck.objects.create(
        ok=report.ok,
        events_checked=report.events_checked,
        first_broken_id=report.first_broken_id,
        message=report.message,
        head_hash=report.head_hash,
    )
