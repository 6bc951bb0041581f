"""Site-wide middleware: every error under /api/ speaks the JSON error shape."""

import logging
import re
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse

from registry_site.api_errors import error_response

logger = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/ajax-api/")
# Artifact uploads stream their body to storage under their own size limit.
STREAMED_UPLOAD = re.compile(
    r"^/api/v1/models/[^/]+/versions/[^/]+/files/|^/(ajax-)?api/2\.0/mlflow-artifacts/artifacts/"
)


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


class ApiErrorMiddleware:
    """Turn HTML/plain error responses and uncaught exceptions under /api/ into JSON errors.

    Ninja renders its own errors as JSON; this catches the ones produced outside it:
    unknown routes, wrong methods, oversized bodies, CSRF failures and crashes.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if is_api_path(request.path) and _declares_oversized_body(request):
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            return error_response(413, f"The request body is larger than {limit} bytes.")
        response = self.get_response(request)
        if not is_api_path(request.path) or response.status_code < 400:
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        converted = error_response(response.status_code)
        if response.status_code == 405 and response.has_header("Allow"):
            converted["Allow"] = response["Allow"]
        return converted

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_api_path(request.path):
            return None
        if isinstance(exception, RequestDataTooBig):
            return error_response(413, "The request body is too large.")
        logger.exception("Unhandled error in %s %s", request.method, request.path)
        return error_response(500, "Internal server error.")


def _declares_oversized_body(request: HttpRequest) -> bool:
    """Refuse a declared oversized JSON body before anything reads it."""
    if STREAMED_UPLOAD.match(request.path):
        return False
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False
    return length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE
