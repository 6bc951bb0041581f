"""Site-wide middleware: MLflow's API on its own short chain; every error under /api/ speaks
the JSON error shape."""

import logging
import re
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse
from django.urls import get_resolver
from django.utils.module_loading import import_string

from registry_site import mlflow_urls
from registry_site.api_errors import error_response

logger = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/ajax-api/")
# Artifact uploads stream their body to storage under their own size limit.
STREAMED_UPLOAD = re.compile(
    r"^/api/v1/models/[^/]+/versions/[^/]+/files/|^/(ajax-)?api/2\.0/mlflow-artifacts/artifacts/"
)


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


class MlflowLaneMiddleware:
    """Serve MLflow's JSON API through `MLFLOW_LANE_MIDDLEWARE` instead of the whole chain.

    Those endpoints authenticate every call by its Authorization header and never read a
    cookie, a session, a message or a static file, yet the full chain costs about as much
    Python as a cheap call's own work. Under `mlflow_urls.LANE_PREFIXES` a request goes through
    the short chain to the view that `mlflow_urls` resolves (the same as the root URLconf
    resolves there); any other request goes on down the full chain. First in MIDDLEWARE.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        handler = convert_exception_to_response(_dispatch_mlflow)
        for middleware_path in reversed(settings.MLFLOW_LANE_MIDDLEWARE):
            handler = convert_exception_to_response(import_string(middleware_path)(handler))
        self.lane = handler

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(mlflow_urls.LANE_PREFIXES):
            return self.lane(request)
        return self.get_response(request)


class ApiContentSecurityPolicyMiddleware:
    """The Content-Security-Policy of a JSON API answer: nothing may load from it and
    nothing may frame it (`default-src 'none'; frame-ancestors 'none'`, as OWASP advises
    for APIs). The pages' policy (django-csp) is built anew for every response, ~40 µs of
    Python; this one is a constant. An answer that sets its own policy keeps it."""

    POLICY = "default-src 'none'; frame-ancestors 'none'"

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", self.POLICY)
        return response


def _dispatch_mlflow(request: HttpRequest) -> HttpResponse:
    match = get_resolver(mlflow_urls.__name__).resolve(request.path_info)
    request.resolver_match = match
    return match.func(request, *match.args, **match.kwargs)


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
