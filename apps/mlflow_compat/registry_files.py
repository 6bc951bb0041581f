"""A registered version's files through MLflow's artifact routes, so MLflow's loaders work.

`get-download-uri` answers `<Regent>/api/2.0/mlflow-artifacts/artifacts/registry/<name>/
<version>`, a URL MLflow's HTTP artifact repository knows how to list and download from; so
`mlflow.<flavor>.load_model("models:/fraud/3")` and `models:/fraud@champion` fetch the files
from Regent. Access is the model's view permission (hidden is the same 404 as missing);
files are served only once the version is verified, and re-hashed while they stream, exactly
as Regent's own download endpoint does (apps.registry.downloads).
"""

import re
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.http import Http404, HttpResponse

from apps.mlflow_compat.staging import children_of
from apps.registry import access
from apps.registry.downloads import artifact_download_response, artifact_lookup
from apps.registry.models import ModelVersion

PREFIX = "registry"
_LOCATION = re.compile(r"registry/([^/]+)/([1-9][0-9]{0,9})(?:/(.*))?")


def download_uri(version: ModelVersion) -> str:
    name = quote(version.model.name, safe="")
    base = f"{settings.REGENT_BASE_URL}/api/2.0/mlflow-artifacts/artifacts"
    return f"{base}/{PREFIX}/{name}/{version.number}"


def is_registry_path(artifact_path: str) -> bool:
    return artifact_path == PREFIX or artifact_path.startswith(f"{PREFIX}/")


def _version_at(user: Any, artifact_path: str) -> tuple[ModelVersion, str]:
    match = _LOCATION.fullmatch(artifact_path)
    if match is None:
        raise Http404("Not found.")
    version = access.access_version(user, match.group(1), match.group(2), "view")
    return version, (match.group(3) or "").strip("/")


def listing(user: Any, artifact_path: str) -> list[dict[str, Any]]:
    """The version's files and folders directly under the path (MLflow's list answer)."""
    version, prefix = _version_at(user, artifact_path)
    return children_of(version.files.values_list("path", "size"), prefix)


def download(user: Any, artifact_path: str) -> HttpResponse:
    version, path = _version_at(user, artifact_path)
    return artifact_download_response(artifact_lookup(version, path))
