"""The plumbing shared by every MLflow endpoint: methods, authentication, parameters, errors.

`route(get=..., post=...)` makes one Django view per path. Each handler takes a `Call` and
returns the response body (a dict); handlers are marked `@reads` or `@writes`, and a
read-only token reaches only the former. Parameters come from the query string for GET
(repeated fields as repeated keys, as MLflow's client sends them) and from the JSON body
otherwise — DELETE included. Every error leaves in MLflow's shape.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps.mlflow_compat.auth import Caller, authenticate_caller, ensure_can_write
from apps.mlflow_compat.errors import (
    ENDPOINT_NOT_FOUND,
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    PERMISSION_DENIED,
    RESOURCE_DOES_NOT_EXIST,
    MlflowError,
    from_api_error,
    invalid,
)
from registry_site.api_errors import ApiError

logger = logging.getLogger("regent.mlflow")

Handler = Callable[["Call"], dict[str, Any]]


@dataclass
class Call:
    """One authenticated request: who is calling and what they sent."""

    request: HttpRequest
    caller: Caller
    params: dict[str, Any]
    from_query: bool

    @property
    def user(self) -> Any:
        return self.caller.user

    def _raw(self, field: str) -> Any:
        value = self.params.get(field)
        if self.from_query and isinstance(value, list):
            return value[0] if value else None
        return value

    def text(self, field: str, *, required: bool = False) -> str | None:
        """A string parameter; None when absent (INVALID_PARAMETER_VALUE if `required`)."""
        value = self._raw(field)
        if value is None or (required and value == ""):
            if required:
                raise invalid(f"Missing value for required parameter '{field}'.")
            return None
        if not isinstance(value, str):
            raise invalid(
                f"Invalid value {str(value)[:50]!r} for parameter '{field}': expected a string."
            )
        return value

    def value(self, field: str, *, required: bool = False) -> Any:
        """A parameter of any JSON type (e.g. `version`, a string or a number)."""
        value = self._raw(field)
        if required and (value is None or value == ""):
            raise invalid(f"Missing value for required parameter '{field}'.")
        return value

    def texts(self, field: str) -> list[str]:
        """A repeated string parameter (`stages`, `order_by`)."""
        value = self.params.get(field)
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) for item in items):
            raise invalid(f"Invalid value for parameter '{field}': expected a list of strings.")
        return items

    def integer(self, field: str, *, default: int, maximum: int) -> int:
        """A positive integer parameter, at most `maximum` (JSON number or decimal string)."""
        value = self._raw(field)
        if value is None or value == "":
            return default
        if isinstance(value, str) and value.strip().isdecimal() and value.isascii():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
            raise invalid(
                f"Invalid value {str(value)[:50]!r} for parameter '{field}': "
                f"expected an integer from 1 to {maximum}."
            )
        return value

    def tags(self, field: str = "tags") -> dict[str, str]:
        """MLflow's `[{"key": k, "value": v}, …]` as a dict (a missing value is "")."""
        value = self.params.get(field) or []
        if not isinstance(value, list):
            raise invalid(f"Invalid value for parameter '{field}': expected a list of tags.")
        tags: dict[str, str] = {}
        for item in value:
            if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                raise invalid(f"Invalid value for parameter '{field}': each tag needs a 'key'.")
            tag_value = item.get("value", "")
            tags[item["key"]] = "" if tag_value is None else tag_value
        return tags


def reads(handler: Handler) -> Handler:
    handler.writes = False  # type: ignore[attr-defined]
    return handler


def writes(handler: Handler) -> Handler:
    handler.writes = True  # type: ignore[attr-defined]
    return handler


def _json_body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
        if isinstance(body, str):  # older clients double-encode; MLflow's server accepts it
            body = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise invalid("Malformed request: the body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise invalid("Malformed request: the body must be a JSON object.")
    return body


def _params(request: HttpRequest) -> tuple[dict[str, Any], bool]:
    if request.method == "GET" and request.GET:
        return {key: request.GET.getlist(key) for key in request.GET}, True
    return _json_body(request), False


def _respond(handler: Handler, request: HttpRequest, path_params: dict[str, str]) -> HttpResponse:
    caller = authenticate_caller(request)
    if getattr(handler, "writes", True):
        ensure_can_write(caller)
    params, from_query = _params(request)
    if path_params:  # ids in the URL (`logged-models/<id>`) win over the body's
        params = {
            **params,
            **({k: [v] for k, v in path_params.items()} if from_query else path_params),
        }
    return JsonResponse(handler(Call(request, caller, params, from_query)))


def error_response(request: HttpRequest, error: Exception) -> HttpResponse:
    """Any exception as MLflow's error body (unexpected ones are logged and answer 500)."""
    if isinstance(error, MlflowError):
        return error.response()
    if isinstance(error, ApiError):
        return from_api_error(error).response()
    if isinstance(error, Http404):
        return MlflowError(RESOURCE_DOES_NOT_EXIST, "Not found.").response()
    if isinstance(error, PermissionDenied):
        return MlflowError(PERMISSION_DENIED, str(error) or "Permission denied.").response()
    if isinstance(error, RequestDataTooBig):
        message = "The request body is too large."
        return MlflowError(INVALID_PARAMETER_VALUE, message, status=413).response()
    logger.exception("Unhandled error in MLflow endpoint %s %s", request.method, request.path)
    return MlflowError(INTERNAL_ERROR, "Internal server error.").response()


def route(**handlers: Handler) -> Callable[..., HttpResponse]:
    """One view for a path: `route(get=handler, post=handler)`; other methods get 405."""
    by_method = {method.upper(): handler for method, handler in handlers.items()}
    allowed = ", ".join(sorted(by_method))

    @csrf_exempt  # Bearer/Basic only: no cookie is ever read here, so no CSRF to forge.
    def view(request: HttpRequest, **path_params: str) -> HttpResponse:
        handler = by_method.get(request.method or "")
        if handler is None:
            return method_not_allowed(request, allowed)
        try:
            return _respond(handler, request, path_params)
        except Exception as error:  # every failure answers in MLflow's shape
            return error_response(request, error)

    view.__name__ = "_".join(dict.fromkeys(handler.__name__ for handler in by_method.values()))
    return view


# What `GET /api/3.0/mlflow/server-info` tells an MLflow 3 client before it signs in (as
# MLflow's server, no credentials needed): none of the optional MLflow server features. The
# client then uploads artifacts in one request, not in parts and not presigned, and skips
# workspaces. `store_type` names MLflow's own stores ("SqlStore", "FileStore"): neither here.
SERVER_INFO = {
    "store_type": None,
    "workspaces_enabled": False,
    "trace_archival_enabled": False,
    "multipart_uploads_enabled": False,
    "multipart_downloads_enabled": False,
    "presigned_upload_run_id_supported": False,
    "presigned_upload_model_id_supported": False,
    "features_enabled": {"gateway": False},
}


@csrf_exempt
def server_info(request: HttpRequest) -> HttpResponse:
    """The capabilities an MLflow 3 client asks for (no authentication, as in MLflow)."""
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed(request, "GET, HEAD")
    return JsonResponse(SERVER_INFO)


def method_not_allowed(request: HttpRequest, allowed: str) -> HttpResponse:
    """405 in MLflow's shape, with `Allow`."""
    message = f"{request.method} is not allowed on {request.path}; use {allowed}."
    response = MlflowError(ENDPOINT_NOT_FOUND, message, status=405).response()
    response["Allow"] = allowed
    return response


@csrf_exempt
def endpoint_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """Any other path under the MLflow prefixes: ENDPOINT_NOT_FOUND, as MLflow answers."""
    message = f"No MLflow endpoint {request.method} {request.path} in Regent."
    return MlflowError(ENDPOINT_NOT_FOUND, message).response()
