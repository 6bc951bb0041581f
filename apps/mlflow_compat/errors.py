"""MLflow's error shape: `{"error_code": "...", "message": "..."}` with MLflow's HTTP status.

The statuses are those of `mlflow.exceptions.ERROR_CODE_TO_HTTP_STATUS` (the stock client
reads `error_code` from the body; the status only decides whether it retries, which it does
for 429 and 5xx — so nothing a client did wrong is ever answered with those).
"""

from typing import Any

from django.http import JsonResponse

from registry_site.api_errors import ApiError

INVALID_PARAMETER_VALUE = "INVALID_PARAMETER_VALUE"
RESOURCE_ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
RESOURCE_DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"
RESOURCE_CONFLICT = "RESOURCE_CONFLICT"
PERMISSION_DENIED = "PERMISSION_DENIED"
UNAUTHENTICATED = "UNAUTHENTICATED"
ENDPOINT_NOT_FOUND = "ENDPOINT_NOT_FOUND"
INTERNAL_ERROR = "INTERNAL_ERROR"

HTTP_STATUS = {
    INVALID_PARAMETER_VALUE: 400,
    RESOURCE_ALREADY_EXISTS: 400,
    RESOURCE_DOES_NOT_EXIST: 404,
    RESOURCE_CONFLICT: 409,
    PERMISSION_DENIED: 403,
    UNAUTHENTICATED: 401,
    ENDPOINT_NOT_FOUND: 404,
    INTERNAL_ERROR: 500,
}

# Regent's REST statuses, for errors raised by the shared services.
_CODE_FOR_STATUS = {
    400: INVALID_PARAMETER_VALUE,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: RESOURCE_DOES_NOT_EXIST,
    409: RESOURCE_CONFLICT,
    411: INVALID_PARAMETER_VALUE,
    413: INVALID_PARAMETER_VALUE,
    422: INVALID_PARAMETER_VALUE,
}

AUTH_CHALLENGE = 'Bearer realm="regent", Basic realm="regent", charset="UTF-8"'


class MlflowError(Exception):
    """An error answered in MLflow's shape; `status` follows from `code`."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or HTTP_STATUS[code]

    def response(self) -> JsonResponse:
        body: dict[str, Any] = {"error_code": self.code, "message": self.message}
        response = JsonResponse(body, status=self.status)
        if self.code == UNAUTHENTICATED:
            response["WWW-Authenticate"] = AUTH_CHALLENGE
        return response


def invalid(message: str) -> MlflowError:
    return MlflowError(INVALID_PARAMETER_VALUE, message)


MODEL_NOT_FOUND = "Registered Model not found."


def model_not_found() -> MlflowError:
    # One body, byte for byte, for "missing" and "not visible to you", whatever the name:
    # existence never leaks (MLflow's own message names the model; Regent's does not).
    return MlflowError(RESOURCE_DOES_NOT_EXIST, MODEL_NOT_FOUND)


def version_not_found(name: str, version: Any) -> MlflowError:
    return MlflowError(
        RESOURCE_DOES_NOT_EXIST, f"Model Version (name={name}, version={version}) not found"
    )


def from_api_error(error: ApiError) -> MlflowError:
    """The MLflow twin of an error raised by a Regent service (same message)."""
    if error.status == 409 and error.code == "already_exists":
        return MlflowError(RESOURCE_ALREADY_EXISTS, error.message)
    code = _CODE_FOR_STATUS.get(error.status, INTERNAL_ERROR)
    return MlflowError(code, error.message)
