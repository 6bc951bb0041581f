"""The MLflow endpoints' writes, over Regent's own services.

Each function is one transaction that reuses the registry and approvals services (which
validate and audit), so a change made through MLflow is the same change, with the same audit
event, as one made in the web UI or the REST API; the request context marks it via=mlflow.
Only aliases are written here, and audited here; the "external artifacts" state is the
registry's `version_create(external_reason=…)`.
"""

import re
from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from apps.approvals.models import PromotionRequest, PromotionStatus, Stage
from apps.approvals.services import promotion_request
from apps.audit.services import audit_record
from apps.mlflow_compat import selectors
from apps.mlflow_compat.errors import invalid
from apps.mlflow_compat.models import ModelAlias
from apps.mlflow_compat.selectors import open_promotion
from apps.registry import services as registry
from apps.registry.models import ModelVersion, RegisteredModel
from registry_site.api_errors import Conflict
from registry_site.prepared import Prepared, sentinel_int, sentinel_text

ALIAS = selectors.ALIAS_SHAPE
RESERVED_ALIAS = re.compile(r"(?i)latest|v\d+")
PROMPT_TAG_PREFIX = "mlflow.prompt."
EXTERNAL_REASON = (
    "Files are outside Regent (an MLflow source); Regent never fetched or verified them."
)


def check_alias(alias: Any) -> str:
    """An MLflow alias: 1-64 letters, digits, `_` or `-`; not `latest`, not `v3`."""
    if not isinstance(alias, str) or not alias:
        raise invalid("Registered model alias name cannot be empty.")
    if not ALIAS.fullmatch(alias):
        raise invalid(
            f"Invalid alias name: {alias[:80]!r}. Names may only contain alphanumerics, "
            "underscores (_) and dashes (-), at most 64 characters."
        )
    if RESERVED_ALIAS.fullmatch(alias):
        raise invalid(f"Alias name {alias!r} is reserved.")
    return alias


def check_no_prompt(tags: dict[str, str]) -> dict[str, str]:
    """Refuse MLflow prompt tags: prompts are not models, and Regent does not store them."""
    if any(key.startswith(PROMPT_TAG_PREFIX) for key in tags):
        raise invalid("Prompts are not supported by Regent: tags mlflow.prompt.* are refused.")
    return tags


def registered_model_create(
    *, actor: Any, name: Any, description: str, tags: dict[str, str]
) -> RegisteredModel:
    """Register a model (its creator owns it; default stages and policies come with it)."""
    return registry.model_create(
        actor=actor, name=name, description=description, tags=check_no_prompt(tags)
    )


@transaction.atomic
def registered_model_tag_set(
    *, actor: Any, model: RegisteredModel, key: str, value: str
) -> RegisteredModel:
    """Set one tag; the row lock keeps two concurrent set-tags from losing one."""
    locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    tags = {**locked.tags, **check_no_prompt({key: value})}
    return registry.model_update(actor=actor, model=locked, tags=tags)


@transaction.atomic
def registered_model_tag_delete(*, actor: Any, model: RegisteredModel, key: str) -> None:
    """Remove one tag; removing a tag that is not there changes and records nothing."""
    locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
    if key in locked.tags:
        tags = {name: value for name, value in locked.tags.items() if name != key}
        registry.model_update(actor=actor, model=locked, tags=tags)


def registered_model_delete(*, actor: Any, model: RegisteredModel) -> RegisteredModel:
    """MLflow's delete: archive (Regent never destroys history); MLflow no longer sees it."""
    return registry.model_archive(actor=actor, model=model)


def version_register(
    *,
    actor: Any,
    model: RegisteredModel,
    source: str,
    run_id: str | None,
    description: str,
    tags: dict[str, str],
) -> ModelVersion:
    """A version whose files stay at `source`: `ready` at once, marked external.

    `source` (already checked by `sources.check_source`) and `run_id` are lineage metadata;
    the server never opens them. One transaction (the registry's): the version is inserted
    ready, and audited as "version.created" then "version.ready".
    """
    return registry.version_create(
        actor=actor,
        model=model,
        description=description,
        tags=check_no_prompt(tags),
        source={"uri": source, "run_id": run_id or None},
        external_reason=EXTERNAL_REASON,
    )


@transaction.atomic
def version_tag_set(*, actor: Any, version: ModelVersion, key: str, value: str) -> ModelVersion:
    locked = ModelVersion.objects.select_for_update(of=("self",)).get(pk=version.pk)
    tags = {**locked.tags, **check_no_prompt({key: value})}
    return registry.version_update(actor=actor, version=locked, tags=tags)


@transaction.atomic
def version_tag_delete(*, actor: Any, version: ModelVersion, key: str) -> None:
    locked = ModelVersion.objects.select_for_update(of=("self",)).get(pk=version.pk)
    if key in locked.tags:
        tags = {name: value for name, value in locked.tags.items() if name != key}
        registry.version_update(actor=actor, version=locked, tags=tags)


def _locked_model(shape: tuple, model_id: int) -> QuerySet[RegisteredModel]:
    return RegisteredModel.objects.select_for_update().filter(pk=model_id).only("pk")


def _alias_row(shape: tuple, model_id: int, alias: str) -> QuerySet[ModelAlias]:
    rows = ModelAlias.objects.filter(model_id=model_id, alias=alias).order_by()
    return rows.select_related("version").only("model", "alias", "version", "version__number")


# Compiled once: an alias move is a hot path of deployment pipelines.
_LOCK_MODEL = Prepared(_locked_model, model_id=sentinel_int())
_ALIAS_ROW = Prepared(_alias_row, model_id=sentinel_int(), alias=sentinel_text())


@transaction.atomic
def alias_set(
    *, actor: Any, model: RegisteredModel, alias: str, version: ModelVersion
) -> ModelAlias:
    """Point a free alias at `version` (a version of `model`); audited "alias.set".

    Callers route stage names to `stage_move` first: a stage is never a free alias.
    """
    alias = check_alias(alias)
    if version.model_id != model.pk:
        raise invalid("The version belongs to another model.")
    # The model row lock orders concurrent moves of the same alias (on SQLite, whose
    # transactions are serialised, it is a plain read).
    _LOCK_MODEL.all((), model_id=model.pk)
    row = _ALIAS_ROW.one((), model_id=model.pk, alias=alias)
    before = row.version.number if row else None
    if row is None:
        row = ModelAlias(model=model, alias=alias, version=version)
        row.save(force_insert=True)
    elif row.version_id != version.pk:
        row.version = version
        row.save(update_fields=["version", "updated_at"])
    row.model = model  # the audit label names it: no query to load it again
    if before != version.number:
        audit_record(
            actor=actor,
            action="alias.set",
            target=row,
            changes={
                "alias": alias,
                "before": {"version": before},
                "after": {"version": version.number},
            },
            model_id=model.pk,
        )
    return row


@transaction.atomic
def alias_delete(*, actor: Any, model: RegisteredModel, alias: str) -> bool:
    """Remove a free alias; audited "alias.deleted". False (and no event) if it was not set."""
    if not ALIAS.fullmatch(alias):
        return False
    row = (
        ModelAlias.objects.select_for_update()
        .filter(model=model, alias=alias)
        .select_related("version")
        .first()
    )
    if row is None:
        return False
    audit_record(
        actor=actor,
        action="alias.deleted",
        target=row,
        changes={"alias": alias, "before": {"version": row.version.number}, "after": {}},
        model_id=model.pk,
    )
    row.delete()
    return True


def stage_move(
    *, actor: Any, version: ModelVersion, stage: Stage, reason: str
) -> PromotionRequest | None:
    """Ask for `version` to hold `stage`, through a promotion request under its policy.

    None when the version holds the stage afterwards (it already did, or the policy needs
    no approval and it moved at once); otherwise the pending request — a new one, or the
    one already open for this version and stage.
    """
    if stage.current_version_id == version.pk:
        return None
    existing = open_promotion(version, stage)
    if existing is not None:
        return existing
    try:
        promotion = promotion_request(actor=actor, version=version, stage=stage, reason=reason)
    except Conflict:
        # Lost a race with an identical request, or the stage moved meanwhile.
        stage.refresh_from_db(fields=["current_version", "since"])
        existing = open_promotion(version, stage)
        if stage.current_version_id == version.pk or existing is not None:
            return existing
        raise
    return None if promotion.status == PromotionStatus.APPROVED else promotion
