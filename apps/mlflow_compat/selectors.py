"""Reads behind the MLflow endpoints, permission-filtered, in a constant number of queries.

Archived models are invisible here (MLflow's `delete` archives), so every lookup starts
from `visible_models`. A model the caller may not view and a missing one give the same
RESOURCE_DOES_NOT_EXIST; visible but not allowed is PERMISSION_DENIED.
"""

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any

from django.db.models import F, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from apps.approvals.models import PromotionRequest, PromotionStatus, Stage
from apps.mlflow_compat import filters
from apps.mlflow_compat.errors import (
    PERMISSION_DENIED,
    RESOURCE_DOES_NOT_EXIST,
    MlflowError,
    invalid,
    model_not_found,
    version_not_found,
)
from apps.mlflow_compat.models import ModelAlias
from apps.registry import access
from apps.registry.models import ModelVersion, RegisteredModel
from apps.registry.paths import InvalidModelName, validate_model_name
from apps.registry.validation import MAX_VERSION_NUMBER

# MLflow's canonical stage names for Regent's default stages; other stages keep their name.
MLFLOW_STAGE_NAMES = {"staging": "Staging", "production": "Production"}
NO_STAGE = "None"
ARCHIVED = "Archived"
MAX_OFFSET = 10_000_000
ALIAS_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_VERBS = {"edit": "change", "manage": "manage"}


def mlflow_stage_name(stage_name: str) -> str:
    return MLFLOW_STAGE_NAMES.get(stage_name, stage_name)


def visible_models(user: Any) -> QuerySet[RegisteredModel]:
    """The models `user` may view, minus archived ones (deleted, as far as MLflow knows)."""
    return access.models_visible_to(user).filter(archived_at__isnull=True)


def _lookup_name(name: str) -> bool:
    """Whether `name` could be a model name at all (NUL or 5 000 characters cannot)."""
    try:
        validate_model_name(name)
    except InvalidModelName:
        return False
    return True


def model_for(user: Any, name: str, action: str = "view") -> RegisteredModel:
    """The live model named `name` if `user` may do `action` on it."""
    model = None
    if _lookup_name(name):
        model = visible_models(user).select_related("created_by").filter(name=name).first()
    if model is None:
        raise model_not_found()
    if action != "view" and not access.can(user, action, model):
        verb = _VERBS.get(action, action)
        raise MlflowError(PERMISSION_DENIED, f"You may not {verb} registered model {name}.")
    return model


def version_number(value: Any) -> int | None:
    """The integer of an MLflow `version` ("3" or 3); None if it cannot exist."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdecimal() and value.strip().isascii():
        number = int(value.strip())
    else:
        raise invalid(f"Model version must be an integer, got {str(value)[:50]!r}.")
    return number if 1 <= number <= MAX_VERSION_NUMBER else None


def version_of(model: RegisteredModel, value: Any) -> ModelVersion:
    """Version `value` of a model already resolved for the caller."""
    number = version_number(value)
    version = None
    if number is not None:
        version = versions_loaded(model.versions.filter(number=number)).first()
    if version is None:
        raise version_not_found(model.name, value)
    version.model = model
    return version


# --- Loading what a response shows --------------------------------------------------------------


def with_last_updated(queryset: QuerySet[ModelVersion]) -> QuerySet[ModelVersion]:
    """`last_updated`: the latest of created, sealed and verified (versions keep no other)."""
    return queryset.annotate(
        last_updated=Greatest(
            F("created_at"),
            Coalesce(F("sealed_at"), F("created_at")),
            Coalesce(F("verified_at"), F("created_at")),
        )
    )


def versions_loaded(queryset: QuerySet[ModelVersion]) -> QuerySet[ModelVersion]:
    """Versions with their model, creator, held stages and aliases (three queries)."""
    return (
        with_last_updated(queryset)
        .select_related("model", "created_by")
        .prefetch_related(
            Prefetch("held_stages", queryset=Stage.objects.order_by("-position", "name")),
            Prefetch("mlflow_aliases", queryset=ModelAlias.objects.order_by("alias")),
        )
    )


def version_reloaded(version: ModelVersion) -> ModelVersion:
    return versions_loaded(ModelVersion.objects.filter(pk=version.pk)).get()


def models_loaded(models: Iterable[RegisteredModel]) -> list[RegisteredModel]:
    """Attach `mlflow_latest` (one version per stage) and `mlflow_alias_pairs` to each model.

    About six queries for any number of models.
    """
    models = list(models)
    ids = [model.pk for model in models]
    stages = list(Stage.objects.filter(model_id__in=ids).order_by("model_id", "position", "name"))
    unstaged = dict(_latest_unstaged(ids))
    wanted = {stage.current_version_id for stage in stages if stage.current_version_id}
    wanted |= {pk for pk in unstaged.values() if pk}
    versions = {v.pk: v for v in versions_loaded(ModelVersion.objects.filter(pk__in=wanted))}
    pairs = ModelAlias.objects.filter(model_id__in=ids).values_list(
        "model_id", "alias", "version__number"
    )
    for model in models:
        held = [stage for stage in stages if stage.model_id == model.pk]
        latest = [versions[unstaged[model.pk]]] if unstaged.get(model.pk) else []
        latest += [versions[stage.current_version_id] for stage in held if stage.current_version_id]
        model.mlflow_latest = list({version.pk: version for version in latest}.values())
        aliases = [(alias, number) for owner, alias, number in pairs if owner == model.pk]
        aliases += [
            (stage.name, versions[stage.current_version_id].number)
            for stage in held
            if stage.current_version_id
        ]
        model.mlflow_alias_pairs = sorted(aliases)
    return models


def _latest_unstaged(ids: list[int]) -> QuerySet:
    """(model id, id of its newest version holding no stage) — MLflow's stage "None"."""
    newest = ModelVersion.objects.filter(model=OuterRef("pk"), held_stages__isnull=True)
    return RegisteredModel.objects.filter(pk__in=ids).values_list(
        "pk", Subquery(newest.order_by("-number").values("pk")[:1])
    )


# --- Search -------------------------------------------------------------------------------------


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def decode_page_token(token: str | None) -> int:
    """The offset inside an opaque page token ('' or None: the first page)."""
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))["offset"]
    except (ValueError, TypeError, KeyError, UnicodeError, binascii.Error):
        raise invalid("Invalid page token.") from None
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_OFFSET:
        raise invalid("Invalid page token.")
    return offset


def _page(queryset: QuerySet, limit: int, page_token: str | None) -> tuple[list, str | None]:
    offset = decode_page_token(page_token)
    rows = list(queryset[offset : offset + limit + 1])
    more = len(rows) > limit and offset + limit <= MAX_OFFSET
    return rows[:limit], encode_page_token(offset + limit) if more else None


def search_models(
    user: Any, *, filter_string: str | None, limit: int, order_by: list[str], page_token: str | None
) -> tuple[list[RegisteredModel], str | None]:
    """A page of the live models `user` may view that match the filter."""
    queryset = (
        visible_models(user)
        .filter(filters.filter_q(filter_string, filters.MODELS))
        .select_related("created_by")
        .order_by(*filters.order_by_fields(order_by, filters.MODELS))
    )
    models, token = _page(queryset, limit, page_token)
    return models_loaded(models), token


def search_versions(
    user: Any, *, filter_string: str | None, limit: int, order_by: list[str], page_token: str | None
) -> tuple[list[ModelVersion], str | None]:
    """A page of the versions of live models `user` may view that match the filter."""
    condition = filters.filter_q(filter_string, filters.VERSIONS)
    queryset = versions_loaded(
        ModelVersion.objects.filter(model__in=visible_models(user)).filter(condition)
    ).order_by(*filters.order_by_fields(order_by, filters.VERSIONS))
    return _page(queryset, limit, page_token)


# --- Stages and aliases -------------------------------------------------------------------------


def stage_named(model: RegisteredModel, name: str) -> Stage | None:
    """The stage of `model` called `name`, ignoring case ("Production" is "production")."""
    wanted = name.casefold()
    for stage in Stage.objects.filter(model=model).select_related("policy"):
        if stage.name.casefold() == wanted:
            stage.model = model
            return stage
    return None


def latest_versions(model: RegisteredModel, stages: list[str]) -> list[ModelVersion]:
    """MLflow's get-latest-versions: per requested stage, the version in it.

    "None" is the newest version holding no stage; "Archived" holds nothing in Regent; any
    other name must be a stage of the model. No stages asked: every stage.
    """
    loaded = models_loaded([model])[0]
    by_stage: dict[str, list[ModelVersion]] = {}
    for version in loaded.mlflow_latest:
        held = [stage.name.casefold() for stage in version.held_stages.all()]
        for key in held or [NO_STAGE.casefold()]:
            by_stage.setdefault(key, []).append(version)
    if not stages:
        return loaded.mlflow_latest
    known = {stage.name.casefold(): stage.name for stage in Stage.objects.filter(model=model)}
    found: dict[int, ModelVersion] = {}
    for name in stages:
        key = name.casefold() if isinstance(name, str) else ""
        if key != NO_STAGE.casefold() and key != ARCHIVED.casefold() and key not in known:
            choices = ", ".join([NO_STAGE, *map(mlflow_stage_name, known.values()), ARCHIVED])
            raise invalid(f"Invalid Model Version stage: {name}. Value must be one of {choices}.")
        for version in by_stage.get(key, []):
            found.setdefault(version.pk, version)
    return list(found.values())


def version_by_alias(model: RegisteredModel, alias: str) -> ModelVersion:
    """The version an alias points at; a stage name is the stage's current holder."""
    stage = stage_named(model, alias)
    if stage is not None:
        version_id = stage.current_version_id
    elif not ALIAS_SHAPE.fullmatch(alias):
        version_id = None  # cannot have been set (and NUL cannot even be looked up)
    else:
        version_id = (
            ModelAlias.objects.filter(model=model, alias=alias)
            .values_list("version_id", flat=True)
            .first()
        )
    if version_id is None:
        raise MlflowError(RESOURCE_DOES_NOT_EXIST, f"Registered model alias {alias} not found.")
    return versions_loaded(ModelVersion.objects.filter(pk=version_id)).get()


def open_promotion(version: ModelVersion, stage: Stage) -> PromotionRequest | None:
    """The pending, unexpired request to put `version` into `stage`, if there is one."""
    return (
        PromotionRequest.objects.filter(
            Q(version=version, stage=stage, status=PromotionStatus.PENDING),
            expires_at__gt=timezone.now(),
        )
        .order_by("-pk")
        .first()
    )
