"""Reads behind the MLflow endpoints, permission-filtered, in a constant number of queries.

Archived models are invisible here (MLflow's `delete` archives), so every lookup starts
from `visible_models`. A model the caller may not view and a missing one give the same
RESOURCE_DOES_NOT_EXIST; visible but not allowed is PERMISSION_DENIED.
"""

import base64
import binascii
import functools
import json
import re
from collections.abc import Iterable
from typing import Any

from django.db.models import Exists, F, JSONField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Greatest, JSONObject
from django.utils import timezone

from apps.accounts.models import User
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
from apps.registry.paths import InvalidModelName, model_name_key, validate_model_name
from apps.registry.validation import MAX_VERSION_NUMBER
from registry_site.prepared import Prepared, sentinel_int, sentinel_text

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
    return RegisteredModel.objects.filter(access.viewable_q(user), archived_at__isnull=True)


def _lookup_key(name: str) -> str | None:
    """The unique `name_key` of `name`; None if it could not be a model name at all (NUL or
    5 000 characters cannot)."""
    try:
        validate_model_name(name)
    except InvalidModelName:
        return None
    return model_name_key(name)


def _denied(name: str, action: str) -> MlflowError:
    verb = _VERBS.get(action, action)
    return MlflowError(PERMISSION_DENIED, f"You may not {verb} registered model {name}.")


def model_for(
    user: Any, name: str, action: str = "view", *, loaded: bool = False
) -> RegisteredModel:
    """The live model named `name` if `user` may do `action` on it: one prepared query (the
    unique `name_key` index, EXISTS probes for the grants). `loaded`: with what
    `models_loaded` needs, in the same query."""
    model = None
    key = _lookup_key(name)
    if key is not None and _active(user):
        shape = (user.is_superuser, action, loaded)
        model = _MODEL.one(shape, user_id=user.pk, name_key=key, name=name)
    if model is None:
        raise model_not_found()
    if not model.mlflow_allowed:
        raise _denied(name, action)
    return model


def _active(user: Any) -> bool:
    return getattr(user, "is_authenticated", False) and user.is_active


def _as_user(user_id: int, superuser: bool) -> User:
    # Stands for the caller while a prepared query is compiled (only its id and flags count).
    return User(pk=user_id, is_superuser=superuser, is_active=True)


def _model_query(
    shape: tuple, *, user_id: int, name_key: str, name: str
) -> QuerySet[RegisteredModel]:
    superuser, action, loaded = shape
    user = _as_user(user_id, superuser)
    # name_key finds the row; `name` keeps the lookup exact (no case-folded aliases).
    queryset = (
        visible_models(user)
        .filter(name_key=name_key, name=name)
        .select_related("created_by")
        .annotate(mlflow_allowed=access.allowed_expression(user, action))
    )
    return (with_mlflow_fields(queryset) if loaded else queryset).order_by()[:1]


_MODEL = Prepared(
    _model_query, user_id=sentinel_int(), name_key=sentinel_text(), name=sentinel_text()
)


def version_number(value: Any) -> int | None:
    """The integer of an MLflow `version` ("3" or 3); None if it cannot exist."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdecimal() and value.strip().isascii():
        number = int(value.strip())
    else:
        raise invalid(f"Model version must be an integer, got {str(value)[:50]!r}.")
    return number if 1 <= number <= MAX_VERSION_NUMBER else None


def version_for(
    user: Any, name: str, value: Any, action: str = "view", *, model_stages: bool = False
) -> ModelVersion:
    """Version `value` of the live model `name`, if `user` may do `action` on the model: the
    version, its model, stages and aliases in one prepared query. Errors come in the order a
    model lookup then a version lookup would give them (404 model, 403, 400, 404 version).

    `model_stages`: also `mlflow_model_stages`, every stage name of the model.
    """
    try:
        number = version_number(value)
    except MlflowError:
        model_for(user, name, action)  # a missing or forbidden model answers first
        raise
    key = _lookup_key(name)
    version = None
    if key is not None and number is not None and _active(user):
        shape = (user.is_superuser, action, model_stages)
        version = _VERSION.one(shape, user_id=user.pk, name_key=key, name=name, number=number)
    if version is None:
        model = model_for(user, name, action)
        raise version_not_found(model.name, value)
    if not version.mlflow_allowed:
        raise _denied(name, action)
    return version


def _version_query(
    shape: tuple, *, user_id: int, name_key: str, name: str, number: int
) -> QuerySet[ModelVersion]:
    superuser, action, model_stages = shape
    user = _as_user(user_id, superuser)
    queryset = ModelVersion.objects.filter(
        access.viewable_q(user, "model__"),
        model__name_key=name_key,
        model__name=name,
        model__archived_at__isnull=True,
        number=number,
    ).annotate(mlflow_allowed=access.allowed_expression(user, action, "model__"))
    if model_stages:
        names = Stage.objects.filter(model=OuterRef("model")).values(v=JSONObject(name="name"))
        queryset = queryset.annotate(mlflow_model_stages=JSONList(names))
    return versions_loaded(queryset).order_by()[:1]


_VERSION = Prepared(
    _version_query,
    user_id=sentinel_int(),
    name_key=sentinel_text(),
    name=sentinel_text(),
    number=sentinel_int(),
)


def stage_of_model(version: ModelVersion, name: str) -> Stage | None:
    """The stage of the version's model called `name`, ignoring case; no query when
    `version_for(model_stages=True)` loaded the model's stage names and none matches."""
    rows = getattr(version, "mlflow_model_stages", None)
    if rows is not None and name.casefold() not in {row["name"].casefold() for row in rows}:
        return None
    return stage_named(version.model, name)


# --- Loading what a response shows --------------------------------------------------------------


class JSONList(Subquery):
    """The rows of a correlated subquery selecting one JSON object per row (`.values(v=...)`)
    as a JSON list, inside the outer query: a version's stages and aliases come with the
    version instead of in two more queries. PostgreSQL and SQLite. Order is not kept."""

    template = "(SELECT COALESCE(JSONB_AGG(_rows.v), '[]'::jsonb) FROM (%(subquery)s) _rows)"

    def __init__(self, queryset: QuerySet, **extra: Any) -> None:
        # Unordered: a model's default ordering would add a join and a sort per row.
        super().__init__(queryset.order_by(), output_field=JSONField(), **extra)

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        template = (
            "(SELECT COALESCE(JSON_GROUP_ARRAY(JSON(_rows.v)), '[]') FROM (%(subquery)s) _rows)"
        )
        return self.as_sql(compiler, connection, template=template, **extra)


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
    """Versions with their model, creator, held stages and aliases: one query."""
    held = Stage.objects.filter(current_version=OuterRef("pk")).values(
        v=JSONObject(name="name", position="position")
    )
    aliases = ModelAlias.objects.filter(version=OuterRef("pk")).values(v=JSONObject(alias="alias"))
    return (
        with_last_updated(queryset)
        .select_related("model")
        .annotate(
            mlflow_held=JSONList(held),
            mlflow_aliases_loaded=JSONList(aliases),
            # Only the creator's name is shown: not the whole user row (password hash included).
            mlflow_user_name=F("created_by__username"),
        )
    )


def held_stage_names(version: ModelVersion) -> list[str]:
    """The names of the stages `version` holds, most advanced first."""
    rows = getattr(version, "mlflow_held", None)
    if rows is None:  # not from `versions_loaded`
        rows = version.held_stages.order_by().values("name", "position")
    return [row["name"] for row in sorted(rows, key=lambda row: (-row["position"], row["name"]))]


def alias_names(version: ModelVersion) -> list[str]:
    """The free aliases pointing at `version`, sorted."""
    rows = getattr(version, "mlflow_aliases_loaded", None)
    if rows is None:  # not from `versions_loaded`
        rows = version.mlflow_aliases.order_by().values("alias")
    return sorted(row["alias"] for row in rows)


def version_reloaded(version: ModelVersion) -> ModelVersion:
    return versions_by_id([version.pk])[version.pk]


def versions_by_id(ids: Iterable[int]) -> dict[int, ModelVersion]:
    """{id: version} loaded for a response: one prepared query per number of ids (a few)."""
    ids = sorted(set(ids))
    if not ids:
        return {}
    if len(ids) > MAX_PREPARED_IDS:
        found = versions_loaded(ModelVersion.objects.filter(pk__in=ids))
    else:
        # One prepared query per power of two of ids (a search page's few dozen included),
        # the last id repeated to fill it: a handful of shapes, the same rows.
        count = 1 << (len(ids) - 1).bit_length()
        ids += ids[-1:] * (count - len(ids))
        found = _versions_by_id(count).all((), **{f"pk{i}": pk for i, pk in enumerate(ids)})
    return {version.pk: version for version in found}


MAX_PREPARED_IDS = 256  # a page of models' newest unstaged versions and their stage holders


@functools.cache
def _versions_by_id(count: int) -> Prepared:
    def build(shape: tuple, **ids: int) -> QuerySet[ModelVersion]:
        return versions_loaded(ModelVersion.objects.filter(pk__in=list(ids.values()))).order_by()

    return Prepared(build, **{f"pk{i}": sentinel_int() for i in range(count)})


def with_mlflow_fields(queryset: QuerySet[RegisteredModel]) -> QuerySet[RegisteredModel]:
    """Models with their stages, free aliases and newest unstaged version id, in the query."""
    stages = Stage.objects.filter(model=OuterRef("pk")).values(
        v=JSONObject(name="name", position="position", holder="current_version_id")
    )
    aliases = ModelAlias.objects.filter(model=OuterRef("pk")).values(
        v=JSONObject(alias="alias", number="version__number")
    )
    # NOT EXISTS (an anti-join probing the stage index per version), not a LEFT JOIN that a
    # generic plan may turn into a hash of every stage of every model.
    held = Stage.objects.filter(current_version=OuterRef("pk"))
    newest = ModelVersion.objects.filter(~Exists(held), model=OuterRef("pk"))
    return queryset.annotate(
        mlflow_stage_rows=JSONList(stages),
        mlflow_free_aliases=JSONList(aliases),
        mlflow_unstaged=Subquery(newest.order_by("-number").values("pk")[:1]),
    )


def models_loaded(models: Iterable[RegisteredModel]) -> list[RegisteredModel]:
    """Attach `mlflow_latest` (one version per stage) and `mlflow_alias_pairs` to each model.

    One query for the versions (none if there are none), plus one for models that do not
    come from `with_mlflow_fields`.
    """
    models = list(models)
    _load_fields([model for model in models if not hasattr(model, "mlflow_stage_rows")])
    wanted = {model.mlflow_unstaged for model in models if model.mlflow_unstaged}
    wanted |= {
        row["holder"] for model in models for row in model.mlflow_stage_rows if row["holder"]
    }
    versions = versions_by_id(wanted)
    for model in models:
        held = sorted(model.mlflow_stage_rows, key=lambda row: (row["position"], row["name"]))
        holders = [versions[row["holder"]] for row in held if row["holder"]]
        latest = [versions[model.mlflow_unstaged]] if model.mlflow_unstaged else []
        model.mlflow_latest = list({version.pk: version for version in latest + holders}.values())
        aliases = [(row["alias"], row["number"]) for row in model.mlflow_free_aliases]
        aliases += [(row["name"], versions[row["holder"]].number) for row in held if row["holder"]]
        model.mlflow_alias_pairs = sorted(aliases)
    return models


def _load_fields(models: list[RegisteredModel]) -> None:
    if not models:
        return
    fields = ("mlflow_stage_rows", "mlflow_free_aliases", "mlflow_unstaged")
    queryset = with_mlflow_fields(RegisteredModel.objects.filter(pk__in=[m.pk for m in models]))
    rows = {row["pk"]: row for row in queryset.values("pk", *fields)}
    for model in models:
        for field in fields:
            setattr(model, field, rows[model.pk][field])


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


def search_models(
    user: Any, *, filter_string: str | None, limit: int, order_by: list[str], page_token: str | None
) -> tuple[list[RegisteredModel], str | None]:
    """A page of the live models `user` may view that match the filter (two queries)."""
    models, token = _search(filters.MODELS, user, filter_string, limit, order_by, page_token)
    return models_loaded(models), token


def search_versions(
    user: Any, *, filter_string: str | None, limit: int, order_by: list[str], page_token: str | None
) -> tuple[list[ModelVersion], str | None]:
    """A page of the versions of live models `user` may view that match the filter (one
    query)."""
    return _search(filters.VERSIONS, user, filter_string, limit, order_by, page_token)


def _search_queryset(target: str, user: Any, condition: Q) -> QuerySet:
    if target == filters.MODELS:
        return with_mlflow_fields(
            visible_models(user).filter(condition).select_related("created_by")
        )
    return versions_loaded(
        ModelVersion.objects.filter(
            access.viewable_q(user, "model__"), condition, model__archived_at__isnull=True
        )
    )


def _search(
    target: str,
    user: Any,
    filter_string: str | None,
    limit: int,
    order_by: list[str],
    page_token: str | None,
) -> tuple[list, str | None]:
    """One page of a search, and the next page's token. What clients send (name comparisons
    and the prompt tag, for a caller who is not a superuser) runs as a prepared query; any
    other filter builds its queryset. Errors come in the order filter, order_by, token."""
    clauses = filters.parse_filter(filter_string, target)
    condition = Q()
    for clause in clauses:  # cheap; raises on a value out of range
        condition &= filters.clause_q(clause, target)
    order = tuple(filters.order_by_fields(order_by, target))
    offset = decode_page_token(page_token)
    signature = tuple((clause.kind, clause.key, clause.op) for clause in clauses)
    shape = (signature, order, offset, limit)
    if _preparable(user, clauses) and _keep_search_shape(target, shape):
        values = {f"v{i}": filters.bound_value(c.op, c.value) for i, c in enumerate(clauses)}
        rows = _prepared_search(target, len(clauses)).all(shape, user_id=user.pk, **values)
    else:
        queryset = _search_queryset(target, user, condition).order_by(*order)
        rows = list(queryset[offset : offset + limit + 1])
    more = len(rows) > limit and offset + limit <= MAX_OFFSET
    return rows[:limit], encode_page_token(offset + limit) if more else None


def _preparable(user: Any, clauses: list[filters.Clause]) -> bool:
    # A superuser's query holds no user id to bind (nothing filters on grants).
    return (
        _active(user)
        and not user.is_superuser
        and all(
            clause.op in filters.STRING_OPS
            and (
                (clause.kind == "attribute" and clause.key == "name")
                or (clause.kind == "tag" and clause.key == filters.IS_PROMPT_TAG)
            )
            for clause in clauses
        )
    )


# Compiled search shapes kept per process (the filter's form, order, offset and page size
# vary with the caller); a search of any other shape builds its queryset as usual.
MAX_SEARCH_SHAPES = 64
_search_shapes: set[tuple] = set()


def _keep_search_shape(target: str, shape: tuple) -> bool:
    key = (target, *shape)
    if key not in _search_shapes and len(_search_shapes) >= MAX_SEARCH_SHAPES:
        return False
    _search_shapes.add(key)
    return True


@functools.cache
def _prepared_search(target: str, count: int) -> Prepared:
    """The search of `count` clauses: values `v0`…, bound as `filters.bound_value` gives them."""

    def build(shape: tuple, *, user_id: int, **values: str) -> QuerySet:
        signature, order, offset, limit = shape
        condition = Q()
        for index, (kind, key, op) in enumerate(signature):
            clause = filters.Clause(kind, key, op, None)
            condition &= filters.clause_q(clause, target, values[f"v{index}"])
        queryset = _search_queryset(target, _as_user(user_id, False), condition)
        return queryset.order_by(*order)[offset : offset + limit + 1]

    return Prepared(
        build, user_id=sentinel_int(), **{f"v{i}": sentinel_text() for i in range(count)}
    )


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
        held = [name.casefold() for name in held_stage_names(version)]
        for key in held or [NO_STAGE.casefold()]:
            by_stage.setdefault(key, []).append(version)
    if not stages:
        return loaded.mlflow_latest
    rows = sorted(loaded.mlflow_stage_rows, key=lambda row: (row["position"], row["name"]))
    known = {row["name"].casefold(): row["name"] for row in rows}
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
