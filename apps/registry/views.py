"""Registry pages: models, versions, files. Thin: access check, one selector or service call.

Every object is resolved through `access_model`/`access_version`: not visible is a 404, visible
but not allowed a 403. Every action is a plain form POST that works without JavaScript;
`static/js/upload.js` only adds multi-file uploads with progress on top.
"""

import re
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.registry import artifacts, detection, downloads, lineage_svg, selectors, views_insight
from apps.registry.access import access_model, access_version, model_permissions
from apps.registry.forms import (
    FileUploadForm,
    ModelCreateForm,
    ModelEditForm,
    ModelFilterForm,
    VersionCreateForm,
    VersionEditForm,
)
from apps.registry.history import recent_history
from apps.registry.markdown import render_model_card
from apps.registry.models import Artifact, ModelVersion, RegisteredModel, VersionStatus
from apps.registry.services import model_create, model_update, version_create, version_update
from registry_site.api_errors import ApiError

MODELS_PER_PAGE = 25
VERSIONS_PER_PAGE = 50
METRIC_COLUMNS = 3
NO_FILTERS = {"q": "", "visibility": "", "archived": False}
_TAG_TERM = re.compile(r"[^\s:]+:\S*")


# --- Models ---------------------------------------------------------------------------------


def _split_search(query: str) -> tuple[str, str | None]:
    """ "task:nlp bert" → ("bert", "task:nlp"): the first key:value term filters by tag."""
    words, tag = [], None
    for term in query.split():
        if tag is None and _TAG_TERM.fullmatch(term):
            tag = term
        else:
            words.append(term)
    return " ".join(words), tag


def _stages(model: RegisteredModel) -> dict[str, int | None]:
    """Stage name → the version number holding it (None: empty stage)."""
    return dict(selectors.model_stage_summary(model) or {})


def _version_stages(stages: dict[str, int | None]) -> dict[int, list[str]]:
    """Version number → the stages it holds."""
    held: dict[int, list[str]] = {}
    for stage, number in stages.items():
        if number is not None:
            held.setdefault(number, []).append(stage)
    return held


@require_GET
@login_required
def model_list_view(request: HttpRequest) -> HttpResponse:
    """Every model the user may view: search, filters, 25 a page."""
    form = ModelFilterForm(request.GET)
    filters = form.cleaned_data if form.is_valid() else NO_FILTERS
    search, tag = _split_search(filters["q"])
    models = selectors.model_list(
        request.user, search=search, tag=tag, include_archived=filters["archived"]
    )
    if filters["visibility"]:
        models = models.filter(visibility=filters["visibility"])
    page = Paginator(models, MODELS_PER_PAGE).get_page(request.GET.get("page"))
    rows = [(model, _stages(model)) for model in page.object_list]
    filtered = bool(filters["q"] or filters["visibility"] or filters["archived"])
    context = {"page": page, "rows": rows, "form": form, "filtered": filtered}
    return render(request, "registry/model_list.html", context)


@require_http_methods(["GET", "POST"])
@login_required
def model_create_view(request: HttpRequest) -> HttpResponse:
    """Register a model; its creator becomes its owner."""
    form = ModelCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            model = model_create(actor=request.user, **form.service_kwargs())
        except ApiError as error:
            form.add_service_error(error)
        else:
            messages.success(request, f"Model “{model.name}” registered. You are its owner.")
            return redirect(model)
    status = 400 if form.errors else 200
    return render(request, "registry/model_create.html", {"form": form}, status=status)


def _metric_names(versions: list[ModelVersion]) -> list[str]:
    """The first few metric names, in the order the listed versions (newest first) use them."""
    names: list[str] = []
    for version in versions:
        for name in version.metrics or {}:
            if name not in names:
                names.append(name)
                if len(names) == METRIC_COLUMNS:
                    return names
    return names


def _versions_page(request: HttpRequest, model: RegisteredModel) -> Page:
    versions = selectors.version_list(model, request.user)
    return Paginator(versions, VERSIONS_PER_PAGE).get_page(request.GET.get("page"))


@require_GET
@login_required
def model_detail_view(request: HttpRequest, name: str) -> HttpResponse:
    """The model page: its card, versions (`?tab=versions`), trends or history."""
    model = access_model(request.user, name)
    tabs = ("versions", "trends", "history")
    tab = request.GET.get("tab") if request.GET.get("tab") in tabs else "card"
    page = _versions_page(request, model)
    versions = list(page.object_list)
    stages = _stages(model)
    context = {
        "model": model,
        "tab": tab,
        "perms": model_permissions(request.user, model),
        "stages": stages,
        "version_stages": _version_stages(stages),
        "page": page,
        "versions": versions,
        "version_count": page.paginator.count,
        "metric_names": _metric_names(versions),
    }
    if tab == "trends":
        context["trends"] = views_insight.trends_context(request, model)
    if tab == "history":  # the model's events and those of its versions, stages, requests
        context["events"] = recent_history(request.user, model)
    if tab == "card":
        # Sanitised by an allowlist in render_model_card: the only HTML a user controls.
        context["card_html"] = mark_safe(render_model_card(model.description))  # noqa: S308
    return render(request, "registry/model_detail.html", context)


@require_http_methods(["GET", "POST"])
@login_required
def model_edit_view(request: HttpRequest, name: str) -> HttpResponse:
    """Edit the card and tags (editors); the visibility too (owners)."""
    model = access_model(request.user, name, "edit")
    can_manage = "manage" in model_permissions(request.user, model)
    initial = {"description": model.description, "tags": model.tags, "visibility": model.visibility}
    form = ModelEditForm(request.POST or None, initial=initial, can_manage=can_manage)
    if request.method == "POST" and form.is_valid():
        try:
            model_update(actor=request.user, model=model, **form.service_kwargs())
        except ApiError as error:
            form.add_service_error(error)
        else:
            messages.success(request, "Model updated.")
            return redirect(model)
    context = {"model": model, "form": form}
    return render(request, "registry/model_edit.html", context, status=400 if form.errors else 200)


# --- Versions -------------------------------------------------------------------------------


def _wants_json(request: HttpRequest) -> bool:
    """upload.js posts the create form with fetch and asks for JSON back."""
    return "application/json" in request.headers.get("Accept", "")


def _created_response(request: HttpRequest, version: ModelVersion) -> HttpResponse:
    model = version.model
    if _wants_json(request):
        files_url = f"/api/v1/models/{model.name}/versions/{version.number}/files/"
        return JsonResponse(
            {
                "version": version.number,
                "url": version.get_absolute_url(),
                "files_url": files_url,
                "seal_url": f"/api/v1/models/{model.name}/versions/{version.number}/seal",
            },
            status=201,
        )
    messages.success(
        request,
        f"Version {version.number} created. Upload its files below, then seal it.",
    )
    return redirect(version)


@require_http_methods(["GET", "POST"])
@login_required
def version_create_view(request: HttpRequest, name: str) -> HttpResponse:
    """A new version's metadata; its files follow (upload.js, or the version page's form)."""
    model = access_model(request.user, name, "edit")
    form = VersionCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            version = version_create(actor=request.user, model=model, **form.service_kwargs())
        except ApiError as error:
            form.add_service_error(error)
        else:
            version.model = model
            return _created_response(request, version)
    status = 400 if form.errors else 200
    context = {"model": model, "form": form}
    return render(request, "registry/version_create.html", context, status=status)


def _version_framework(version: ModelVersion, files: list[Artifact]) -> str:
    """The worker's verdict once verified; before that, the same detection on upload kinds."""
    if version.framework:
        return version.framework
    kinds = {
        artifact.path: detection.FileKind(
            framework=str(kind.get("framework", "")),
            label=str(kind.get("label", "")),
            unsafe_pickle=bool(kind.get("unsafe_pickle")),
        )
        for artifact in files
        if isinstance(kind := artifact.kind, dict)
    }
    return detection.detect_version(kinds).framework


def _version_context(request: HttpRequest, version: ModelVersion) -> dict[str, Any]:
    files = list(version.files.all())  # prefetched by selectors.version_detail
    perms = model_permissions(request.user, version.model)
    framework = _version_framework(version, files)
    return {
        "model": version.model,
        "version": version,
        "perms": perms,
        "files": files,
        "total_size": sum(artifact.size for artifact in files),
        "pickle_paths": [a.path for a in files if (a.kind or {}).get("unsafe_pickle")],
        "pickle_warning": detection.PICKLE_WARNING,
        "snippet": detection.load_snippet(framework, [a.path for a in files]) if files else "",
        "parents": version.visible_parents,  # set by selectors.version_detail
        "children": selectors.version_children(request.user, version),
        "can_upload": "edit" in perms and version.status == VersionStatus.PENDING,
        "production_number": views_insight.production_holder_number(version.model),
        "lineage": lineage_svg.lineage_view(request.user, version),
        "events": recent_history(request.user, version),
    }


def _render_version(
    request: HttpRequest, version: ModelVersion, status: int = 200, **forms: Any
) -> HttpResponse:
    context = _version_context(request, version)
    context["edit_form"] = forms.get("edit_form") or VersionEditForm(
        initial={"description": version.description, "tags": version.tags}
    )
    context["upload_form"] = forms.get("upload_form") or FileUploadForm()
    return render(request, "registry/version_detail.html", context, status=status)


@require_GET
@login_required
def version_detail_view(request: HttpRequest, name: str, number: int) -> HttpResponse:
    """A version: status, metadata, metrics, files, how to load it, lineage."""
    version = access_version(request.user, name, number)
    return _render_version(request, selectors.version_detail(version, request.user))


@require_GET
@login_required
def version_status_view(request: HttpRequest, name: str, number: int) -> JsonResponse:
    """What the version page polls while the worker hashes the files."""
    version = access_version(request.user, name, number)
    response = JsonResponse(
        {
            "status": version.status,
            "status_reason": version.status_reason,
            "bytes_verified": version.bytes_verified,
            "bytes_total": version.bytes_total,
        }
    )
    add_never_cache_headers(response)
    return response


@require_POST
@login_required
def version_edit_view(request: HttpRequest, name: str, number: int) -> HttpResponse:
    """Change a version's description and tags (the only metadata that stays editable)."""
    version = access_version(request.user, name, number, "edit")
    form = VersionEditForm(request.POST)
    if form.is_valid():
        try:
            version_update(actor=request.user, version=version, **form.service_kwargs())
        except ApiError as error:
            form.add_service_error(error)
        else:
            messages.success(request, f"Version {version.number} updated.")
            return redirect(version)
    version = selectors.version_detail(version, request.user)
    return _render_version(request, version, status=400, edit_form=form)


@require_POST
@login_required
def version_upload_view(request: HttpRequest, name: str, number: int) -> HttpResponse:
    """The no-JavaScript upload: store the posted files into a pending version."""
    version = access_version(request.user, name, number, "edit")
    form = FileUploadForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            stored = _upload_all(request, version, form)
        except ApiError as error:
            form.add_error("files" if len(form.cleaned_data["files"]) == 1 else None, error.message)
        else:
            messages.success(request, f"Uploaded {', '.join(stored)}.")
            return redirect(version)
    version = selectors.version_detail(version, request.user)
    return _render_version(request, version, status=400, upload_form=form)


def _upload_all(request: HttpRequest, version: ModelVersion, form: FileUploadForm) -> list[str]:
    stored = []
    for upload in form.cleaned_data["files"]:
        path = form.cleaned_data["path"] or upload.name
        try:
            artifact = artifacts.artifact_upload(
                actor=request.user, version=version, path=path, stream=upload
            )
        except ApiError as error:
            raise ApiError(f"{path}: {error.message}", details=error.details) from error
        finally:
            upload.close()
        stored.append(artifact.path)
    return stored


@require_POST
@login_required
def version_seal_view(request: HttpRequest, name: str, number: int) -> HttpResponse:
    """Seal the version: its files become immutable and the checksum worker takes over."""
    version = access_version(request.user, name, number, "edit")
    try:
        version = artifacts.version_seal(actor=request.user, version=version)
    except ApiError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Version {version.number} sealed: checksums are being verified.")
    return redirect(reverse("registry:version-detail", args=[name, number]))


@require_GET
@login_required
def file_download_view(request: HttpRequest, name: str, number: int, path: str) -> HttpResponse:
    """One file of a ready version, always as an attachment, re-hashed on the way out."""
    version = access_version(request.user, name, number)
    artifact = downloads.artifact_lookup(version, path)  # 404 for a bad or unknown path
    try:
        return downloads.artifact_download_response(artifact)
    except downloads.ArtifactUnavailable as error:
        messages.error(request, f"{artifact.path} cannot be downloaded: {error.message}")
        return redirect(version)
