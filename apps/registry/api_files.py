"""Artifact endpoints: upload, seal, download (thin: streaming + artifact services).

Uploads are raw bytes streamed from the WSGI input in chunks: no endpoint here declares a
body parameter, so neither ninja nor Django ever reads `request.body` (which would buffer
the whole file and hit DATA_UPLOAD_MAX_MEMORY_SIZE); the JSON size limit is bypassed for
these paths in `registry_site.middleware`.
"""

from typing import IO, Any

from django.http import HttpRequest, HttpResponse
from ninja import Router, Schema, Status

from apps.registry import access, selectors
from apps.registry.artifacts import artifact_upload, version_seal
from apps.registry.downloads import artifact_download_response, artifact_lookup
from apps.registry.models import ModelVersion
from apps.registry.schemas import VersionOut
from registry_site.api_errors import ApiError

router = Router(tags=["files"])

FILE_PATH = "/{name}/versions/{int:v}/files/{path:path}"
BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_DOC = {
    "requestBody": {"required": True, "content": {"application/octet-stream": BINARY}},
    "parameters": [
        {
            "name": "X-Content-SHA256",
            "in": "header",
            "required": False,
            "description": "The SHA-256 you expect (64 lowercase hex digits); checked on seal",
            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        }
    ],
}
DOWNLOAD_DOC = {
    "responses": {
        200: {"description": "The file, as an attachment", "content": {"*/*": BINARY}},
        409: {"description": "The version is not verified, or failed verification"},
    }
}


class FileUploadOut(Schema):
    path: str
    size: int


def _version(request: HttpRequest, name: str, number: int, action: str) -> ModelVersion:
    return access.access_version(request.auth, name, number, action)


def upload_stream(request: HttpRequest) -> tuple[IO[bytes] | Any, int | None]:
    """The request body as a stream, with its declared length (None when chunked)."""
    declared = request.META.get("CONTENT_LENGTH")
    if declared:
        if not declared.isdigit():
            raise ApiError("Content-Length must be a non-negative integer.", status=400)
        return request, int(declared)  # Django's LimitedStream stops at that length
    if "chunked" not in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        return request, 0
    if not request.META.get("wsgi.input_terminated"):
        # Without the server's promise that the input ends, reading it could block forever.
        raise ApiError("Send a Content-Length header.", status=411, code="length_required")
    return request.META["wsgi.input"], None


@router.put(
    FILE_PATH,
    response={201: FileUploadOut},
    summary="Upload a file to a pending version",
    openapi_extra=UPLOAD_DOC,
)
def file_upload(request: HttpRequest, name: str, v: int, path: str) -> Status:
    version = _version(request, name, v, "edit")
    stream, length = upload_stream(request)
    artifact = artifact_upload(
        actor=request.auth,
        version=version,
        path=path,
        stream=stream,
        content_length=length,
        claimed_sha256=request.headers.get("X-Content-SHA256"),
    )
    return Status(201, {"path": artifact.path, "size": artifact.size})


@router.post(
    "/{name}/versions/{int:v}/seal",
    response={202: VersionOut},
    summary="Seal a version and queue its verification",
)
def seal(request: HttpRequest, name: str, v: int) -> Status:
    version = _version(request, name, v, "edit")
    version_seal(actor=request.auth, version=version)
    # Re-read: with eager tasks (the embedded default) it may already be ready or failed.
    return Status(202, selectors.version_detail(version, request.auth))


@router.api_operation(
    ["GET", "HEAD"],
    FILE_PATH,
    summary="Download a file of a ready version",
    openapi_extra=DOWNLOAD_DOC,
)
def file_download(request: HttpRequest, name: str, v: int, path: str) -> HttpResponse:
    version = _version(request, name, v, "view")
    artifact = artifact_lookup(version, path)
    return artifact_download_response(artifact, head=request.method == "HEAD")
