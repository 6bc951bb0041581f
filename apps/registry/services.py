"""Catalog writes: registered models and their versions.

Every function is one user intention in one transaction: validate first (a 400 naming the
field, before anything is written), write, then record the audit event last. Callers (API,
pages, MLflow endpoints) check the caller's role with `apps.registry.access` beforehand;
the only permission question answered here is which parent versions the actor may see.
"""

from datetime import datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.models import Model, Q
from django.utils import timezone

from apps.accounts.models import User
from apps.audit.services import (
    AuditEntry,
    audit_record,
    audit_record_many,
    insert_and_record,
    record_inserted,
)
from apps.registry import access
from apps.registry.models import ModelVersion, RegisteredModel, VersionParent, VersionStatus
from apps.registry.paths import model_name_key
from apps.registry.validation import (
    check_dependencies,
    check_description,
    check_metric_directions,
    check_metrics,
    check_model_name,
    check_params,
    check_source,
    check_tags,
    check_training_data,
    check_visibility,
    invalid,
    parse_parent_refs,
)
from registry_site.api_errors import Conflict
from registry_site.prepared import AfterPlan, InsertStep, PreparedInsert

_INSERT_MODEL = PreparedInsert(RegisteredModel)
_INSERT_VERSION = PreparedInsert(ModelVersion)


def _name_taken(name: str) -> Conflict:
    return Conflict(
        f"A model named {name} already exists (names are compared ignoring case).",
        code="already_exists",
        details={"field": "name"},
    )


def model_create(
    *,
    actor: User,
    name: str,
    description: str = "",
    tags: dict[str, str] | None = None,
    visibility: str = "private",
) -> RegisteredModel:
    """Register a model; its creator becomes its owner.

    The name is stored in its NFKC form; `name_key` (NFKC + casefold) makes look-alike and
    case-only duplicates a 409 `already_exists`, also when two requests race.
    """
    name = check_model_name(name)
    fields = {
        "description": check_description(description),
        "tags": check_tags(tags),
        "visibility": check_visibility(visibility),
    }
    model = RegisteredModel(name=name, name_key=model_name_key(name), created_by=actor, **fields)
    try:
        # The unique name_key decides (no look-before-insert: one query fewer, and a race
        # has the same answer). One statement, one transaction: the model, its owner's
        # grants, its default stages and its audit event.
        insert_and_record(
            InsertStep(_INSERT_MODEL, [model]),
            access.creator_ownership_step(actor, model),
            *_default_stage_steps(model),
            actor=actor,
            entries=[
                AuditEntry(
                    action="model.created",
                    target=model,
                    changes={"after": {"name": name, **fields}},
                )
            ],
        )
    except IntegrityError as error:
        if not _on_model_table(error):
            raise
        raise _name_taken(name) from None
    return model


def _diff(instance: Model, wanted: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Set the fields of `wanted` that differ; return {"before", "after"} of those only."""
    before, after = {}, {}
    for field, value in wanted.items():
        current = getattr(instance, field)
        if current != value:
            before[field], after[field] = current, value
            setattr(instance, field, value)
    return {"before": before, "after": after} if after else {}


def _mirror(target: Model, source: Model, fields: list[str]) -> None:
    # Keep the caller's instance (and any annotations on it) in step with the saved row.
    for field in fields:
        setattr(target, field, getattr(source, field))


_MODEL_CHECKS = {
    "description": check_description,
    "tags": check_tags,
    "visibility": check_visibility,
    "metric_directions": check_metric_directions,
}


@transaction.atomic
def model_update(
    *,
    actor: User,
    model: RegisteredModel,
    description: str | None = None,
    tags: dict[str, str] | None = None,
    visibility: str | None = None,
    metric_directions: dict[str, str] | None = None,
) -> RegisteredModel:
    """Edit a model's card, tags (replaced as a whole), visibility or metric directions.

    Only fields that really change are saved and audited ("model.updated" with before and
    after); a request that changes nothing records nothing.
    """
    given = {
        "description": description,
        "tags": tags,
        "visibility": visibility,
        "metric_directions": metric_directions,
    }
    wanted = {
        field: _MODEL_CHECKS[field](value) for field, value in given.items() if value is not None
    }
    locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    changes = _diff(locked, wanted)
    if changes:
        locked.save(update_fields=[*changes["after"], "updated_at"])
        audit_record(actor=actor, action="model.updated", target=locked, changes=changes)
    _mirror(model, locked, [*wanted, "updated_at"])
    return model


def _set_archived(actor: User, model: RegisteredModel, *, archived: bool) -> RegisteredModel:
    locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    if locked.is_archived != archived:
        locked.archived_at = timezone.now() if archived else None
        locked.save(update_fields=["archived_at", "updated_at"])
        audit_record(
            actor=actor,
            action="model.archived" if archived else "model.unarchived",
            target=locked,
            changes={"before": {"archived": not archived}, "after": {"archived": archived}},
        )
    _mirror(model, locked, ["archived_at", "updated_at"])
    return model


@transaction.atomic
def model_archive(*, actor: User, model: RegisteredModel) -> RegisteredModel:
    """Archive a model: still readable, hidden from default lists, refuses new versions.

    Archiving an archived model changes and records nothing (a double click is harmless).
    """
    return _set_archived(actor, model, archived=True)


@transaction.atomic
def model_unarchive(*, actor: User, model: RegisteredModel) -> RegisteredModel:
    """Bring an archived model back; a no-op for a model that is not archived."""
    return _set_archived(actor, model, archived=False)


def _resolve_parents(actor: User, refs: list[tuple[str, str, int]]) -> list[ModelVersion]:
    """The parent versions, in one query; missing and not-visible get the same 400."""
    if not refs:
        return []
    wanted = Q()
    for _, key, number in refs:
        wanted |= Q(model__name_key=key, number=number)
    rows = ModelVersion.objects.filter(wanted, model__in=access.models_visible_to(actor))
    found = {(row.model.name_key, row.number): row for row in rows.select_related("model")}
    for index, (raw, key, number) in enumerate(refs):
        if (key, number) not in found:
            raise invalid(f"parents.{index}", f"parent {raw} does not exist")
    return [found[(key, number)] for _, key, number in refs]


def _version_fields(**values: Any) -> dict[str, Any]:
    return {
        "description": check_description(values["description"]),
        "metrics": check_metrics(values["metrics"]),
        "params": check_params(values["params"]),
        "tags": check_tags(values["tags"]),
        "training_data": check_training_data(values["training_data"]),
        "dependencies": check_dependencies(values["dependencies"]),
        "source": check_source(values["source"]),
    }


_TAKE_NUMBER = (
    "UPDATE {table} SET last_version_number = last_version_number + 1, updated_at = %s"
    " WHERE id = %s AND archived_at IS NULL RETURNING last_version_number, updated_at"
)


def _insert_numbered(version: ModelVersion, now: datetime) -> None:
    """Lock the model row, take the next number and insert `version` with it, in one
    statement (an UPDATE … RETURNING feeding the INSERT); `version.model` (the caller's
    instance) gets the new number and `updated_at`.

    Concurrent creations queue on the row lock, and each reads the number the previous one
    committed, so numbers are 1, 2, 3… with no gaps or duplicates. (A rolled-back creation
    rolls its bump back too.)
    """
    model = version.model
    table = connection.ops.quote_name(RegisteredModel._meta.db_table)
    taken = {"number": "last_version_number"}
    before = _TAKE_NUMBER.format(table=table)
    if not _INSERT_VERSION.insert_after(version, before, [now, model.pk], taken, now=now):
        # archived (or gone: the lookup below raises DoesNotExist)
        locked = RegisteredModel.objects.get(pk=model.pk)
        raise Conflict(f"Model {locked.name} is archived; it accepts no new versions.")
    model.last_version_number, model.updated_at, model.archived_at = version.number, now, None


def version_create(
    *,
    actor: User,
    model: RegisteredModel,
    description: str = "",
    metrics: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    training_data: list[dict[str, Any]] | None = None,
    dependencies: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    parents: list[str] | None = None,
    external_reason: str | None = None,
) -> ModelVersion:
    """Create the next version of `model`, `pending` (accepting files), with its metadata.

    Parents are "model-name/3" references to versions the actor may view; one that is
    missing or hidden is the same 400 "parent X does not exist". Archived models: 409.

    With `external_reason` (files that stay outside Regent, e.g. an MLflow `s3://` source)
    the version is inserted `ready` with `external_artifacts` set, and audited
    "version.created" (pending, as always) then "version.ready" giving that reason.

    On PostgreSQL, without parents, one statement does it all (`_create_version_at_once`);
    otherwise one transaction of several (`_create_version_locked`).
    """
    fields = _version_fields(
        description=description,
        metrics=metrics,
        params=params,
        tags=tags,
        training_data=training_data,
        dependencies=dependencies,
        source=source,
    )
    parent_versions = _resolve_parents(actor, parse_parent_refs(parents))
    state: dict[str, Any] = {}
    if external_reason is not None:
        state = {"status": VersionStatus.READY, "external_artifacts": True, "status_reason": ""}
    version = ModelVersion(model=model, created_by=actor, **fields, **state)
    if connection.vendor == "postgresql" and not parent_versions:
        for _ in range(_AT_ONCE_ATTEMPTS):
            done = _create_version_at_once(actor, version, fields, external_reason)
            if done is not False:
                break  # True: created; None: webhooks wait, take the locked path
            _refresh_number(model)  # another creation took the number first
        if done:
            return version
    return _create_version_locked(actor, version, fields, parent_versions, external_reason)


_AT_ONCE_ATTEMPTS = 3

# The model row as the caller saw it: the number it expects to take, and not archived.
_TAKE_EXPECTED_NUMBER = (
    "UPDATE {table} SET last_version_number = %s, updated_at = %s"
    " WHERE id = %s AND last_version_number = %s AND archived_at IS NULL RETURNING id"
)


def _create_version_at_once(
    actor: User, version: ModelVersion, fields: dict[str, Any], external_reason: str | None
) -> bool | None:
    """Insert `version` with the number after the one its model's row held when the caller
    read it, and its events, in one statement (`audit.record_inserted`): outside a
    transaction, one round trip that commits by itself. The model row's UPDATE checks the
    number it expects and takes the row lock before the chain head's, as the locked path
    does. True when done; False when the number was taken first (or the model archived):
    nothing inserted, read the row again; None when the statement cannot carry the events
    (webhooks wait for them): nothing inserted, take the locked path."""
    model = version.model
    now = timezone.now()
    version.number = model.last_version_number + 1
    version.sealed_at = now if external_reason is not None else None
    table = connection.ops.quote_name(RegisteredModel._meta.db_table)
    expected = [version.number, now, model.pk, version.number - 1]
    plan = AfterPlan(
        _INSERT_VERSION,
        version,
        _TAKE_EXPECTED_NUMBER.format(table=table),
        expected,
        connections[DEFAULT_DB_ALIAS],  # the wrapper itself: the proxy costs per value bound
        now=now,
    )
    entries = _version_entries(version, fields, [], external_reason)
    try:
        events = record_inserted(plan, actor=actor, entries=entries)
    except IntegrityError as error:
        if not _on_version_number(error):
            raise
        events = []  # a creation that committed meanwhile holds the number
    if not events:
        version.pk = version.number = version.sealed_at = None
        return None if events is None else False
    model.last_version_number, model.updated_at, model.archived_at = version.number, now, None
    return True


def _refresh_number(model: RegisteredModel) -> None:
    """Read the model's counter again; 409 if it was archived (DoesNotExist if deleted)."""
    current = RegisteredModel.objects.get(pk=model.pk)
    if current.archived_at is not None:
        raise Conflict(f"Model {current.name} is archived; it accepts no new versions.")
    model.last_version_number = current.last_version_number


def _on_version_number(error: IntegrityError) -> bool:
    diagnostics = getattr(error.__cause__, "diag", None)
    return getattr(diagnostics, "constraint_name", None) == "version_number_unique"


@transaction.atomic
def _create_version_locked(
    actor: User,
    version: ModelVersion,
    fields: dict[str, Any],
    parent_versions: list[ModelVersion],
    external_reason: str | None,
) -> ModelVersion:
    now = timezone.now()
    if external_reason is not None:
        version.sealed_at = now  # sealed the moment it is created
    _insert_numbered(version, now)
    VersionParent.objects.bulk_create(
        VersionParent(child=version, parent=parent) for parent in parent_versions
    )
    audit_record_many(
        actor=actor, entries=_version_entries(version, fields, parent_versions, external_reason)
    )
    return version


def _version_entries(
    version: ModelVersion,
    fields: dict[str, Any],
    parent_versions: list[ModelVersion],
    external_reason: str | None,
) -> list[AuditEntry]:
    after = {"version": version.number, "status": VersionStatus.PENDING.value, **fields}
    after["parents"] = [str(parent) for parent in parent_versions]
    entries = [AuditEntry("version.created", target=version, changes={"after": after})]
    if external_reason is not None:
        ready = {
            "before": {"status": VersionStatus.PENDING.value},
            "after": {"status": VersionStatus.READY.value, "external_artifacts": True},
            "reason": external_reason,
        }
        entries.append(AuditEntry("version.ready", target=version, changes=ready))
    return entries


@transaction.atomic
def version_update(
    *,
    actor: User,
    version: ModelVersion,
    description: str | None = None,
    tags: dict[str, str] | None = None,
) -> ModelVersion:
    """Edit a version's description or tags: the only metadata editable once sealed.

    Audited as "version.updated" with before/after of what changed; no change, no event.
    """
    wanted: dict[str, Any] = {}
    if description is not None:
        wanted["description"] = check_description(description)
    if tags is not None:
        wanted["tags"] = check_tags(tags)
    locked = (
        ModelVersion.objects.select_for_update(of=("self",))
        .select_related("model")
        .get(pk=version.pk)
    )
    changes = _diff(locked, wanted)
    if changes:
        locked.save(update_fields=list(changes["after"]))
        audit_record(actor=actor, action="version.updated", target=locked, changes=changes)
    _mirror(version, locked, list(wanted))
    return version


def _default_stage_steps(model: RegisteredModel) -> list[InsertStep]:
    from apps.approvals.services import default_stage_steps  # approvals builds on us

    return default_stage_steps(model)


def _on_model_table(error: IntegrityError) -> bool:
    """The model row's own conflict, its unique name_key (a new id never collides); not a
    grant's or a stage's. SQLite does not say, and there it can only be the name."""
    diagnostics = getattr(error.__cause__, "diag", None)
    table = getattr(diagnostics, "table_name", None)
    return table is None or table == RegisteredModel._meta.db_table
