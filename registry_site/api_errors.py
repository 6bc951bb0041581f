"""The one JSON error shape of /api/: {"error": {"code", "message", "details"}}."""

from http import HTTPStatus
from typing import Any

from django.http import JsonResponse

# Default error code for each status when the raiser did not name one.
DEFAULT_CODES = {
    400: "invalid",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "server_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raised by services and endpoints; rendered by the API as the JSON error shape."""

    status = 400
    code = "invalid"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details or {}


class NotFound(ApiError):
    """Missing or not visible: one body for both, so existence never leaks."""

    status = 404
    code = "not_found"

    def __init__(self, message: str = "Not found.", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class NotAuthenticated(ApiError):
    status = 401
    code = "not_authenticated"

    def __init__(self, message: str = "Authentication required.", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


def error_response(
    status: int,
    message: str | None = None,
    *,
    code: str | None = None,
    details: dict[str, Any] | None = None,
) -> JsonResponse:
    """A JsonResponse in the API error shape."""
    body = {
        "error": {
            "code": code or DEFAULT_CODES.get(status, "error"),
            "message": message or HTTPStatus(status).phrase + ".",
            "details": details or {},
        }
    }
    response = JsonResponse(body, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="regent"'
    return response


def api_error_response(error: ApiError) -> JsonResponse:
    return error_response(error.status, error.message, code=error.code, details=error.details)
