"""Model, version and lineage endpoints of the REST API (thin: schemas + services).

Every endpoint resolves its model or version through `apps.registry.access`: not visible is
a 404 with the same body as a missing model, visible but not allowed is a 403.
"""

import math
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from ninja import Query, Router, Status

from apps.registry import access, selectors, services
from apps.registry.models import ModelVersion, RegisteredModel
from apps.registry.paths import InvalidModelName, validate_model_name
from apps.registry.schemas import (
    LineageOut,
    ModelCreateIn,
    ModelOut,
    ModelPage,
    ModelPatchIn,
    VersionCreateIn,
    VersionOut,
    VersionPage,
    VersionPatchIn,
)
from apps.registry.validation import MAX_VERSION_NUMBER

router = Router(tags=["models"])

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_PAGE = 1_000_000  # keeps OFFSET far inside PostgreSQL's range


def _check_name(name: str) -> None:
    # A path that cannot be a model name (NUL, 5 000 characters…) is simply not found.
    try:
        validate_model_name(name)
    except InvalidModelName:
        raise Http404("Not found.") from None


def _access_model(request: HttpRequest, name: str, action: str = "view") -> RegisteredModel:
    _check_name(name)
    return access.access_model(request.auth, name, action)


def _access_version(
    request: HttpRequest, name: str, number: int, action: str = "view"
) -> ModelVersion:
    _check_name(name)
    return access.access_version(request.auth, name, number, action)


def _paginate(queryset: QuerySet, page: int, page_size: int) -> dict[str, Any]:
    """One COUNT and one page query; a page past the end is empty rather than an error."""
    count = queryset.count()
    start = (page - 1) * page_size
    return {
        "items": list(queryset[start : start + page_size]),
        "count": count,
        "page": page,
        "pages": max(1, math.ceil(count / page_size)),
    }


PageQuery = Query(1, ge=1, le=MAX_PAGE)
PageSizeQuery = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


@router.post("", response={201: ModelOut}, summary="Register a model")
def model_create(request: HttpRequest, payload: ModelCreateIn) -> Status:
    fields = payload.model_dump(exclude_none=True)
    model = services.model_create(actor=request.auth, **fields)
    return Status(201, model)


@router.get("", response=ModelPage, summary="Models you may view")
def model_list(
    request: HttpRequest,
    search: str = Query("", max_length=200),
    tag: str | None = Query(None, max_length=400, description='"key:value" or "key"'),
    page: int = PageQuery,
    page_size: int = PageSizeQuery,
) -> dict[str, Any]:
    models = selectors.model_list(request.auth, search=search, tag=tag)
    return _paginate(models, page, page_size)


@router.get("/{name}", response=ModelOut, summary="One model")
def model_get(request: HttpRequest, name: str) -> RegisteredModel:
    return selectors.attach_version_stats(_access_model(request, name))


@router.patch("/{name}", response=ModelOut, summary="Edit a model's card, tags or visibility")
def model_patch(request: HttpRequest, name: str, payload: ModelPatchIn) -> RegisteredModel:
    model = _access_model(request, name, "edit")
    changes = payload.model_dump(exclude_none=True)
    visibility = changes.get("visibility", model.visibility)
    if visibility != model.visibility and not access.can(request.auth, "manage", model):
        raise PermissionDenied("Only an owner may change a model's visibility.")
    services.model_update(actor=request.auth, model=model, **changes)
    return selectors.attach_version_stats(model)


@router.post("/{name}/versions", response={201: VersionOut}, summary="Create a version")
def version_create(request: HttpRequest, name: str, payload: VersionCreateIn) -> Status:
    model = _access_model(request, name, "edit")
    fields = payload.model_dump(exclude_none=True)
    version = services.version_create(actor=request.auth, model=model, **fields)
    return Status(201, selectors.version_detail(version, request.auth))


@router.get("/{name}/versions", response=VersionPage, summary="Versions, newest first")
def version_list(
    request: HttpRequest, name: str, page: int = PageQuery, page_size: int = PageSizeQuery
) -> dict[str, Any]:
    model = _access_model(request, name)
    return _paginate(selectors.version_list(model, request.auth), page, page_size)


@router.get("/{name}/versions/{int:v}", response=VersionOut, summary="One version")
def version_get(request: HttpRequest, name: str, v: int) -> ModelVersion:
    version = _access_version(request, name, v)
    return selectors.version_detail(version, request.auth)


@router.patch(
    "/{name}/versions/{int:v}", response=VersionOut, summary="Edit a version's description/tags"
)
def version_patch(request: HttpRequest, name: str, v: int, payload: VersionPatchIn) -> ModelVersion:
    version = _access_version(request, name, v, "edit")
    changes = payload.model_dump(exclude_none=True)
    services.version_update(actor=request.auth, version=version, **changes)
    return selectors.version_detail(version, request.auth)


@router.get("/{name}/lineage", response=LineageOut, by_alias=True, summary="Lineage graph")
def lineage(
    request: HttpRequest,
    name: str,
    version: int | None = Query(None, ge=1, le=MAX_VERSION_NUMBER),
) -> dict[str, Any]:
    if version is None:
        model = _access_model(request, name)
        return selectors.lineage_graph(request.auth, model)
    found = _access_version(request, name, version)
    return selectors.lineage_graph(request.auth, found.model, found)
