"""Deploy-time resolution: `GET /api/v1/models/{name}/stages/{stage}/manifest`.

"What is in production for model X, and how do I fetch exactly those bytes?" — one answer a
Kubernetes init container, a CI step or a shell script can act on: the holder's files with
their sizes, SHA-256 digests and absolute download URLs (built on REGENT_BASE_URL, never on
the request's Host), so `sha256sum -c` can verify what was downloaded (docs/INTEGRATIONS.md).

404 when the model or stage is not visible or the stage holds nothing; 409 when the holder
is not `ready` (not verified yet, failed, flagged corrupt) or holds external artifacts that
Regent never verified: a deploy tool must not receive a manifest it cannot check.
"""

from datetime import datetime
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.http import Http404, HttpRequest
from ninja import Field, Router, Schema

from apps.approvals.models import Stage
from apps.approvals.schemas import ErrorOut
from apps.approvals.validation import STAGE_NAME
from apps.registry.access import access_model
from apps.registry.models import ModelVersion, VersionStatus
from apps.registry.paths import InvalidModelName, validate_model_name
from registry_site.api_errors import Conflict, NotFound

router = Router(tags=["deploy"])

API_PREFIX = "/api/v1"


class ManifestFileOut(Schema):
    path: str = Field(description="Relative path inside the version (folders kept)")
    size: int
    sha256: str = Field(description="Verified by Regent's worker")
    url: str = Field(description="Absolute download URL (send the same bearer token)")


class ManifestOut(Schema):
    model: str
    stage: str
    version: int
    since: datetime | None = Field(description="When this version started holding the stage")
    status: str = Field(description="Always ready: any other status is a 409")
    files: list[ManifestFileOut]


def _stage(request: HttpRequest, name: str, stage_name: str) -> Stage:
    """The stage with its holder, if the caller may view the model; 404 otherwise."""
    try:
        validate_model_name(name)
    except InvalidModelName:
        raise Http404("Not found.") from None
    model = access_model(request.auth, name, "view")
    stage = None
    if STAGE_NAME.fullmatch(stage_name):
        stage = (
            Stage.objects.select_related("current_version")
            .filter(model=model, name=stage_name)
            .first()
        )
    if stage is None:
        raise Http404("Not found.")
    stage.model = model
    return stage


def _ensure_deployable(version: ModelVersion) -> None:
    if version.status != VersionStatus.READY:
        raise Conflict(
            f"v{version.number} is {version.status}, not ready: nothing verified to deploy.",
            details={"status": version.status, "status_reason": version.status_reason},
        )
    if version.external_artifacts:
        raise Conflict(
            f"v{version.number} holds external artifacts that Regent has not verified.",
            details={"status": version.status, "external_artifacts": True},
        )


def file_url(model: str, number: int, path: str) -> str:
    """The absolute API download URL of one file (each path segment percent-encoded)."""
    return (
        f"{settings.REGENT_BASE_URL}{API_PREFIX}/models/{quote(model, safe='')}"
        f"/versions/{number}/files/{quote(path, safe='/')}"
    )


@router.get(
    "/models/{name}/stages/{stage}/manifest",
    response={200: ManifestOut, 401: ErrorOut, 404: ErrorOut, 409: ErrorOut},
    summary="What a stage holds, with verified digests and download URLs",
)
def stage_manifest(request: HttpRequest, name: str, stage: str) -> dict[str, Any]:
    """The files of the version holding the stage, for `curl` + `sha256sum -c`."""
    found = _stage(request, name, stage)
    version = found.current_version
    if version is None:
        raise NotFound(f"{found.name} holds no version.")
    _ensure_deployable(version)
    files = list(version.files.order_by("path").only("path", "size", "sha256"))
    if any(not artifact.sha256 for artifact in files):
        raise Conflict(f"v{version.number} has files that were never verified.")
    return {
        "model": found.model.name,
        "stage": found.name,
        "version": version.number,
        "since": found.since,
        "status": version.status,
        "files": [
            {
                "path": artifact.path,
                "size": artifact.size,
                "sha256": artifact.sha256,
                "url": file_url(found.model.name, version.number, artifact.path),
            }
            for artifact in files
        ],
    }
