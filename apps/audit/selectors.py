"""Reads of the audit log, shared by the audit page, the export, the API and history tabs.

Every listing starts from `audit_events_visible_to(user)`, so the permission rule lives in
one place: nobody but a superuser ever reads, counts or exports an event about a model they
may not view.
"""

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model
from django.db.models import Model, Q, QuerySet
from django.http import Http404

from apps.audit.chain import CHAINED_FIELDS, ChainReport, verify_rows
from apps.audit.links import object_url
from apps.audit.models import AuditChainHead, AuditCheck, AuditEvent
from apps.registry.access import models_visible_to
from apps.registry.models import RegisteredModel
from apps.registry.paths import model_name_key

# Counting a million-row log on every page load costs more than it tells: the page says
# "more than 10 000" instead, and the count query reads at most COUNT_CAP + 1 rows.
COUNT_CAP = 10_000
PAGE_SIZE = 50
# A literal id list beats the permission subquery even for large grants (measured at 10k).
MAX_LISTED_MODELS = 20000
MODEL_TYPE = RegisteredModel._meta.label_lower


# --- The chain -----------------------------------------------------------------------------


def chain_rows(chunk_size: int = 5000) -> Iterator[dict[str, Any]]:
    """Every event in chain order, as plain dicts, streamed from the database."""
    columns = ("id", "prev_hash", "hash", *CHAINED_FIELDS)
    return AuditEvent.objects.order_by("id").values(*columns).iterator(chunk_size=chunk_size)


def audit_verify_chain() -> ChainReport:
    report = verify_rows(chain_rows())
    return _check_head_row(report) if report.ok else report


def _check_head_row(report: ChainReport) -> ChainReport:
    """The row appends build on (PostgreSQL) must hold the last event's hash: any other
    hash would make the next append refused or break its link. No row yet is fine (the
    next append seeds it from the last event)."""
    head = AuditChainHead.objects.filter(pk=1).values_list("hash", flat=True).first()
    if head is None or head == report.head_hash:
        return report
    message = (
        f"the head row (audit_auditchainhead), which holds {head[:12]}… instead of the last "
        f"event's {report.head_hash[:12]}…; delete that row and the next append re-seeds it"
    )
    return replace(report, ok=False, message=message)


def audit_latest_check() -> AuditCheck | None:
    """The most recent chain verification, if any has run."""
    return AuditCheck.objects.order_by("-checked_at", "-id").first()


def audit_log_size_at_most(limit: int) -> bool:
    """Whether the whole log holds at most `limit` events (reads at most limit + 1 rows)."""
    return AuditEvent.objects.order_by()[: limit + 1].count() <= limit


# --- Who may read what ---------------------------------------------------------------------


def _user_type() -> str:
    return get_user_model()._meta.label_lower


def _visible_model_ids(user: Any) -> list[int] | QuerySet:
    """The ids of the models `user` may view, as a list when there are not too many.

    A literal list lets PostgreSQL combine the `model_id` and `actor` indexes (a bitmap OR)
    and estimate from its statistics; the same rule as a subquery makes it scan the whole
    table for a user who may view a few models of a million-event log (measured: 0.5 s
    against 5 ms). Past MAX_LISTED_MODELS ids, the subquery is cheaper to send.
    """
    visible = models_visible_to(user).order_by().values_list("pk", flat=True)
    ids = list(visible[: MAX_LISTED_MODELS + 1])
    return ids if len(ids) <= MAX_LISTED_MODELS else visible


def audit_events_visible_to(user: Any) -> QuerySet[AuditEvent]:
    """The events `user` may read.

    Superusers read everything. Anyone else reads the events about models they may view,
    and, among events about no model, the ones they did and the ones done to their own
    account. An event about a model they may not view stays hidden even when they did it
    (a revoked editor loses that model's history with the model).
    """
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return AuditEvent.objects.none()
    if user.is_superuser:
        return AuditEvent.objects.all()
    about_visible_model = Q(model_id__in=_visible_model_ids(user))
    own = Q(actor_id=user.pk) | Q(target_type=_user_type(), target_id=str(user.pk))
    return AuditEvent.objects.filter(about_visible_model | (Q(model_id__isnull=True) & own))


# --- Filters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilters:
    """What the audit page, the export and the API filter by; empty values filter nothing.

    `since` and `until` are aware datetimes, both inclusive (a date-only `until` is turned
    into the last instant of that day by the form). `target` is "type" or "type:id".
    """

    actor: str = ""
    action: str = ""
    model: str = ""
    target: str = ""
    via: str = ""
    since: datetime | None = None
    until: datetime | None = None


def _filter_action(events: QuerySet[AuditEvent], action: str) -> QuerySet[AuditEvent]:
    family, _, name = action.partition(".")
    if name:
        return events.filter(action=action)
    if family:
        return events.filter(action__startswith=f"{family}.")
    return events


def _filter_target(events: QuerySet[AuditEvent], target: str) -> QuerySet[AuditEvent]:
    target_type, colon, target_id = target.partition(":")
    events = events.filter(target_type=target_type.strip().lower())
    return events.filter(target_id=target_id.strip()) if colon else events


def _filter_model(events: QuerySet[AuditEvent], user: Any, name: str) -> QuerySet[AuditEvent]:
    # A subquery through `models_visible_to`: a model the user may not view matches nothing,
    # exactly like a model that does not exist, and costs no query of its own.
    model = models_visible_to(user).filter(name_key=model_name_key(name))
    return events.filter(model_id__in=model.values("pk"))


def audit_events_filter(
    events: QuerySet[AuditEvent], user: Any, filters: AuditFilters
) -> QuerySet[AuditEvent]:
    """`events` narrowed by `filters` (never widened: start from the visible events)."""
    events = _filter_action(events, filters.action)
    if filters.actor:
        events = events.filter(actor_name__iexact=filters.actor)
    if filters.model:
        events = _filter_model(events, user, filters.model)
    if filters.target:
        events = _filter_target(events, filters.target)
    if filters.via:
        events = events.filter(via=filters.via)
    if filters.since is not None:
        events = events.filter(at__gte=filters.since)
    if filters.until is not None:
        events = events.filter(at__lte=filters.until)
    return events


def audit_events_matching(user: Any, filters: AuditFilters) -> QuerySet[AuditEvent]:
    """The events `user` may read that match `filters` (unordered)."""
    return audit_events_filter(audit_events_visible_to(user), user, filters)


def audit_events_search(
    user: Any,
    *,
    action: str = "",
    actor: str = "",
    model: str = "",
    target: str = "",
    via: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """Visible events, newest first, filtered as `AuditFilters` says.

    `action` is a full action ("token.created") or a family ("token" or "token."),
    which matches every action of that family.
    """
    filters = AuditFilters(actor, action, model, target, via, since, until)
    return audit_events_filter(audit_events_visible_to(user), user, filters).order_by("-id")


# --- Pages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventPage:
    """One page of events, newest first, with keyset cursors instead of page numbers.

    `older_cursor` and `newer_cursor` are event ids for `?before=` and `?after=`; None when
    there is nothing on that side. `count` is capped at `COUNT_CAP` (`count_capped`).
    """

    object_list: list[AuditEvent]
    count: int
    count_capped: bool
    older_cursor: int | None = None
    newer_cursor: int | None = None
    is_newest: bool = True

    @property
    def count_label(self) -> str:
        """ "1 event", "1,234 events" or "more than 10,000 events"."""
        if self.count_capped:
            return f"more than {self.count:,} events"
        return f"{self.count:,} event{'' if self.count == 1 else 's'}"


def parse_id(value: Any) -> int | None:
    """A positive bigint from user input (a cursor, an id in a URL), else None."""
    text = str(value or "").strip()
    if not (text.isascii() and text.isdecimal()) or len(text) > 18:
        return None
    number = int(text)
    return number if number > 0 else None


def count_capped(events: QuerySet, cap: int | None = None) -> tuple[int, bool]:
    """(count, capped): COUNT over at most `cap` + 1 rows, whatever the table's size."""
    cap = COUNT_CAP if cap is None else cap
    found = events.order_by()[: cap + 1].count()
    return min(found, cap), found > cap


def audit_events_page(
    events: QuerySet[AuditEvent],
    *,
    before: int | None = None,
    after: int | None = None,
    size: int = PAGE_SIZE,
) -> EventPage:
    """The page of `events` just older than `before`, just newer than `after`, or the newest.

    Two queries (the rows, a capped count), whatever the page's depth: `id < before ORDER BY
    id DESC LIMIT size + 1` walks the primary key instead of skipping an OFFSET.
    """
    count, capped = count_capped(events)
    if after is not None:
        rows = list(events.filter(id__gt=after).order_by("id")[: size + 1])
        has_newer, has_older = len(rows) > size, True
        rows = rows[:size][::-1]
    else:
        window = events.filter(id__lt=before) if before is not None else events
        rows = list(window.order_by("-id")[: size + 1])
        has_newer, has_older = before is not None, len(rows) > size
        rows = rows[:size]
    return EventPage(
        object_list=rows,
        count=count,
        count_capped=capped,
        older_cursor=rows[-1].pk if rows and has_older else None,
        newer_cursor=rows[0].pk if rows and has_newer else None,
        is_newest=not has_newer,
    )


# --- Per-object history --------------------------------------------------------------------


def target_key(target: Model | tuple[str, str]) -> tuple[str, str]:
    """("app.model", "id") for a model instance, or the pair itself."""
    if isinstance(target, Model):
        return target._meta.label_lower, str(target.pk)
    target_type, target_id = target
    return str(target_type).lower(), str(target_id)


def history_for(user: Any, target: Model | tuple[str, str]) -> QuerySet[AuditEvent]:
    """The events about `target` that `user` may read, newest first.

    `target` is a model instance or a ("app.model", "id") pair. For a registered model the
    history also holds every event about its versions, files, stages and requests (every
    event carrying its `model_id`).
    """
    target_type, target_id = target_key(target)
    about = Q(target_type=target_type, target_id=target_id)
    model_id = parse_id(target_id)
    if target_type == MODEL_TYPE and model_id is not None:
        about |= Q(model_id=model_id)
    return audit_events_visible_to(user).filter(about).order_by("-id")


@dataclass(frozen=True)
class HistoryTarget:
    """An object whose history a user may read: what to call it and where it lives."""

    target_type: str
    target_id: str
    label: str
    url: str | None


def _load_target(target_type: str, target_id: str) -> Model | None:
    """The live object, for types that belong to a registered model (they have
    `audit_model_id`); None for other types, unknown types and deleted objects."""
    try:
        klass = apps.get_model(target_type)
    except (LookupError, ValueError):
        return None
    pk = parse_id(target_id)
    if pk is None or not hasattr(klass, "audit_model_id"):
        return None
    return klass._default_manager.filter(pk=pk).first()


def _recorded_model_id(target_type: str, target_id: str) -> int | None:
    """The model a deleted object belonged to, as its newest event recorded it."""
    events = AuditEvent.objects.filter(target_type=target_type, target_id=target_id)
    return events.exclude(model_id=None).values_list("model_id", flat=True).first()


def access_history_target(user: Any, target_type: str, target_id: str) -> HistoryTarget:
    """The object `target_type`/`target_id` if `user` may read its history, else Http404.

    An object of a registered model needs that model to be visible (even with no event yet);
    any other object (a user, a token) needs at least one event the user may read. Missing
    and not visible are the same 404.
    """
    target_type, target_id = target_type.lower()[:64], target_id[:64]
    found = _load_target(target_type, target_id)
    model_id = found.audit_model_id if found is not None else None
    if model_id is None:
        model_id = _recorded_model_id(target_type, target_id)
    newest = history_for(user, (target_type, target_id)).first()
    if user.is_superuser or model_id is None:
        allowed = found is not None or newest is not None
    else:
        allowed = models_visible_to(user).filter(pk=model_id).exists()
    if not allowed or (found is None and newest is None):
        raise Http404("Not found.")
    label = str(found) if found is not None else newest.target_label
    return HistoryTarget(target_type, target_id, label, object_url(target_type, target_id, label))


# --- Names of models the reader may not view, inside visible events -------------------------
# An event about a visible model can still name another model: `version.created` records
# the new version's parents ("other-model/3"), and a parent may belong to a model the reader
# may not view. Pages, the API and exports drop those references for non-superusers (in
# memory, never in the log), as the lineage graph never draws such a parent.

_REFERENCE_FIELDS = ("parents",)
REDACT_BATCH = 2000


def _reference_lists(changes: Any) -> list[list[Any]]:
    """The lists of "model/number" references in a `changes` value's before/after."""
    if not isinstance(changes, dict):
        return []
    found = []
    for side in ("before", "after"):
        values = changes.get(side)
        if isinstance(values, dict):
            found += [values[key] for key in _REFERENCE_FIELDS if isinstance(values.get(key), list)]
    return found


def _model_name(reference: Any) -> str:
    return str(reference).rpartition("/")[0]


def redact_hidden_models(user: Any, changes: list[Any]) -> set[int]:
    """Remove, in place, references to models `user` may not view from each `changes`
    value; return the positions of the values that changed. One query at most."""
    if getattr(user, "is_superuser", False):
        return set()
    lists = [
        (index, refs) for index, value in enumerate(changes) for refs in _reference_lists(value)
    ]
    names = {_model_name(ref) for _, refs in lists for ref in refs}
    if not names:
        return set()
    visible = set(models_visible_to(user).filter(name__in=names).values_list("name", flat=True))
    changed = set()
    for index, refs in lists:
        kept = [ref for ref in refs if _model_name(ref) in visible]
        if len(kept) != len(refs):
            refs[:] = kept
            changed.add(index)
    return changed


def redact_events(user: Any, events: list[AuditEvent]) -> list[AuditEvent]:
    """`events` with hidden model names removed from their changes (in memory only)."""
    redact_hidden_models(user, [event.changes for event in events])
    return events


def redact_rows(user: Any, rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Export rows with hidden model names removed, a batch at a time (constant memory).
    A row that lost something is marked `"redacted": True`: its hash no longer matches."""
    if getattr(user, "is_superuser", False):
        yield from rows
        return
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= REDACT_BATCH:
            yield from _redact_batch(user, batch)
            batch = []
    yield from _redact_batch(user, batch)


def _redact_batch(user: Any, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for index in redact_hidden_models(user, [row["changes"] for row in batch]):
        batch[index]["redacted"] = True
    return batch
