"""The MLflow model registry endpoints: parse, resolve with access checks, one service call.

Handlers return MLflow's response messages as dicts; `http.route` (in urls.py) adds the
methods, authentication, token scope and MLflow's error shape. Decisions where Regent differs
from an MLflow server (delete archives, no rename, stages are protected) are in docs/MLFLOW.md.
"""

from typing import Any

from django.conf import settings
from django.urls import reverse

from apps.approvals.models import PromotionRequest, Stage
from apps.mlflow_compat import selectors, services, staging
from apps.mlflow_compat.errors import PERMISSION_DENIED, MlflowError, invalid
from apps.mlflow_compat.http import Call, reads, writes
from apps.mlflow_compat.serializers import download_uri, model_json, version_json
from apps.mlflow_compat.sources import check_source
from apps.registry import services as registry
from apps.registry.models import ModelVersion, RegisteredModel

MODELS_PAGE_DEFAULT, MODELS_PAGE_MAX = 100, 1000
VERSIONS_PAGE_DEFAULT, VERSIONS_PAGE_MAX, VERSIONS_PAGE_SERVED = 10_000, 200_000, 10_000
RENAME_REFUSED = (
    "Renaming is not supported: names are referenced by deployments and audit. "
    "Register a new model instead."
)
VERSION_DELETE_REFUSED = "Regent keeps every version; archive the model instead."


def _model(call: Call, action: str = "view", *, loaded: bool = False) -> RegisteredModel:
    return selectors.model_for(call.user, call.text("name", required=True), action, loaded=loaded)


def _version(call: Call, action: str = "view", *, model_stages: bool = False) -> ModelVersion:
    name = call.text("name", required=True)
    version = call.value("version", required=True)
    return selectors.version_for(call.user, name, version, action, model_stages=model_stages)


def _model_body(model: RegisteredModel) -> dict[str, Any]:
    return {"registered_model": model_json(selectors.models_loaded([model])[0])}


def _version_body(version: ModelVersion) -> dict[str, Any]:
    return {"model_version": version_json(selectors.version_reloaded(version))}


def _protected(stage: Stage, promotion: PromotionRequest) -> MlflowError:
    """PERMISSION_DENIED naming the promotion request that now waits for reviewers."""
    url = settings.REGENT_BASE_URL + reverse("approvals:promotion-detail", args=[promotion.pk])
    needed = promotion.required_approvals
    plural = "" if needed == 1 else "s"
    return MlflowError(
        PERMISSION_DENIED,
        f"Stage '{stage.name}' is protected: promotion request #{promotion.pk} opened; "
        f"it needs {needed} approval{plural} — review at {url}",
    )


def _move_to_stage(call: Call, version: ModelVersion, stage: Stage, how: str) -> None:
    """Put `version` into `stage` if its policy allows at once; else 403 naming the request."""
    promotion = services.stage_move(
        actor=call.user, version=version, stage=stage, reason=f"Requested through MLflow ({how})."
    )
    if promotion is not None:
        raise _protected(stage, promotion)


# --- Registered models --------------------------------------------------------------------------


@writes
def registered_model_create(call: Call) -> dict[str, Any]:
    model = services.registered_model_create(
        actor=call.user,
        name=call.text("name", required=True),
        description=call.text("description") or "",
        tags=call.tags(),
    )
    # A model just created holds no versions and no aliases: nothing more to load.
    model.mlflow_stage_rows, model.mlflow_free_aliases, model.mlflow_unstaged = [], [], None
    return _model_body(model)


@reads
def registered_model_get(call: Call) -> dict[str, Any]:
    return _model_body(_model(call, loaded=True))


@reads
def registered_model_search(call: Call) -> dict[str, Any]:
    models, token = selectors.search_models(
        call.user,
        filter_string=call.text("filter"),
        limit=call.integer("max_results", default=MODELS_PAGE_DEFAULT, maximum=MODELS_PAGE_MAX),
        order_by=call.texts("order_by"),
        page_token=call.text("page_token"),
    )
    body: dict[str, Any] = {}
    if models:
        body["registered_models"] = [model_json(model) for model in models]
    if token:
        body["next_page_token"] = token
    return body


@writes
def registered_model_update(call: Call) -> dict[str, Any]:
    model = _model(call, "edit")
    registry.model_update(actor=call.user, model=model, description=call.text("description"))
    return _model_body(model)


@writes
def registered_model_rename(call: Call) -> dict[str, Any]:
    _model(call)
    call.text("new_name", required=True)
    raise invalid(RENAME_REFUSED)


@writes
def registered_model_delete(call: Call) -> dict[str, Any]:
    services.registered_model_delete(actor=call.user, model=_model(call, "manage"))
    return {}


@writes
def registered_model_set_tag(call: Call) -> dict[str, Any]:
    model = _model(call, "edit")
    key = call.text("key", required=True)
    services.registered_model_tag_set(
        actor=call.user, model=model, key=key, value=call.text("value") or ""
    )
    return {}


@writes
def registered_model_delete_tag(call: Call) -> dict[str, Any]:
    model = _model(call, "edit")
    services.registered_model_tag_delete(
        actor=call.user, model=model, key=call.text("key", required=True)
    )
    return {}


@writes
def alias_set(call: Call) -> dict[str, Any]:
    version = _version(call, "edit", model_stages=True)
    alias = services.check_alias(call.text("alias", required=True))
    stage = selectors.stage_of_model(version, alias)
    if stage is not None:
        _move_to_stage(call, version, stage, f"alias {alias}")
        return {}
    services.alias_set(actor=call.user, model=version.model, alias=alias, version=version)
    return {}


@reads
def alias_get(call: Call) -> dict[str, Any]:
    model = _model(call)
    version = selectors.version_by_alias(model, call.text("alias", required=True))
    return {"model_version": version_json(version)}


@writes
def alias_delete(call: Call) -> dict[str, Any]:
    model = _model(call, "edit")
    alias = call.text("alias", required=True)
    stage = selectors.stage_named(model, alias)
    if stage is not None:
        raise MlflowError(
            PERMISSION_DENIED,
            f"Stage '{stage.name}' is protected: it changes only through an approved promotion "
            "or a rollback in Regent.",
        )
    services.alias_delete(actor=call.user, model=model, alias=alias)
    return {}


@reads
def latest_versions(call: Call) -> dict[str, Any]:
    versions = selectors.latest_versions(_model(call), call.texts("stages"))
    return {"model_versions": [version_json(v) for v in versions]} if versions else {}


# --- Model versions -----------------------------------------------------------------------------


@writes
def version_create(call: Call) -> dict[str, Any]:
    """Files logged to Regent (`models:/m-…`, `runs:/…`) are copied in and verified; any
    other source is kept as lineage metadata and the version is ready at once."""
    model = _model(call, "edit")
    source = check_source(call.text("source", required=True))
    fields = {
        "actor": call.user,
        "model": model,
        "source": source,
        "run_id": call.text("run_id"),
        "description": call.text("description") or "",
        "tags": services.check_no_prompt(call.tags()),
    }
    location = staging.staged_source(call.user, source)
    if location is not None:
        # Reloaded: the copy may already have run, on commit, before this answer.
        return _version_body(staging.version_register_staged(location=location, **fields))
    version = services.version_register(**fields)
    # Ready as inserted, with no stage and no alias yet: nothing more to load.
    version.mlflow_held, version.mlflow_aliases_loaded = [], []
    return {"model_version": version_json(version)}


@reads
def version_get(call: Call) -> dict[str, Any]:
    return {"model_version": version_json(_version(call))}


@writes
def version_update(call: Call) -> dict[str, Any]:
    version = _version(call, "edit")
    registry.version_update(actor=call.user, version=version, description=call.text("description"))
    return _version_body(version)


@writes
def version_delete(call: Call) -> dict[str, Any]:
    _version(call)
    raise MlflowError(PERMISSION_DENIED, VERSION_DELETE_REFUSED)


@reads
def version_search(call: Call) -> dict[str, Any]:
    limit = call.integer("max_results", default=VERSIONS_PAGE_DEFAULT, maximum=VERSIONS_PAGE_MAX)
    versions, token = selectors.search_versions(
        call.user,
        filter_string=call.text("filter"),
        limit=min(limit, VERSIONS_PAGE_SERVED),
        order_by=call.texts("order_by"),
        page_token=call.text("page_token"),
    )
    body: dict[str, Any] = {}
    if versions:
        body["model_versions"] = [version_json(version) for version in versions]
    if token:
        body["next_page_token"] = token
    return body


@writes
def version_set_tag(call: Call) -> dict[str, Any]:
    version = _version(call, "edit")
    key = call.text("key", required=True)
    services.version_tag_set(
        actor=call.user, version=version, key=key, value=call.text("value") or ""
    )
    return {}


@writes
def version_delete_tag(call: Call) -> dict[str, Any]:
    version = _version(call, "edit")
    services.version_tag_delete(
        actor=call.user, version=version, key=call.text("key", required=True)
    )
    return {}


@reads
def version_download_uri(call: Call) -> dict[str, Any]:
    return {"artifact_uri": download_uri(_version(call))}


@writes
def version_transition_stage(call: Call) -> dict[str, Any]:
    version = _version(call, "edit")
    wanted = call.text("stage", required=True)
    if wanted.casefold() in (selectors.NO_STAGE.casefold(), selectors.ARCHIVED.casefold()):
        raise invalid(
            f"Regent does not move versions to '{wanted}': a stage changes only when another "
            "version is promoted into it, or by a rollback."
        )
    stage = selectors.stage_named(version.model, wanted)
    if stage is None:
        raise invalid(f"Invalid Model Version stage: {wanted}. This model has no such stage.")
    _move_to_stage(call, version, stage, f"transition-stage {wanted}")
    return _version_body(version)
