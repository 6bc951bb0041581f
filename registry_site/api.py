"""The REST API v1 (django-ninja): routers from each app, one auth, one error shape."""

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from apps.accounts.api import router as accounts_router
from apps.accounts.api_access import router as access_router
from apps.accounts.auth import api_auth
from apps.approvals.api import router as approvals_router
from apps.approvals.api_manifest import router as manifest_router
from apps.audit.api import router as audit_router
from apps.audit.api_webhooks import router as webhooks_router
from apps.registry.api import router as registry_router
from apps.registry.api_files import router as files_router
from registry_site.api_errors import ApiError, api_error_response, error_response

logger = logging.getLogger("regent.api")

api = NinjaAPI(
    title="Regent API",
    version="1",
    description="Versioned models, verified artifacts, approvals and audit. "
    "Authenticate with `Authorization: Bearer <token>` (create one under Tokens).",
    auth=api_auth,
    urls_namespace="api",
    docs_url=None,
)
api.add_router("/", accounts_router)
api.add_router("/models", registry_router)
api.add_router("/models", files_router)
api.add_router("/models", access_router)
api.add_router("/", approvals_router)
api.add_router("/", manifest_router)
api.add_router("/", webhooks_router)
api.add_router("/", audit_router)


@api.exception_handler(ApiError)
def on_api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return api_error_response(exc)


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    fields = [_field_name(error.get("loc", ())) for error in exc.errors]
    details = {
        "errors": [
            {"field": field, "message": error.get("msg", "")}
            for field, error in zip(fields, exc.errors, strict=True)
        ]
    }
    message = "Invalid input: " + ", ".join(sorted(set(fields))) + "."
    return error_response(422, message, code="invalid", details=details)


def _field_name(location: tuple | list) -> str:
    # Ninja locations look like ("body", "payload", "source", "uri"): drop the leading
    # request part and the parameter's own name, keep the field path a user wrote.
    parts = [str(part) for part in location]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:]
    if parts and parts[0] == "payload":
        parts = parts[1:]
    return ".".join(parts) or "body"


@api.exception_handler(AuthenticationError)
def on_authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(401, "Authentication required.")


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return error_response(exc.status_code, str(exc))


@api.exception_handler(Http404)
def on_not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(404, "Not found.")


@api.exception_handler(PermissionDenied)
def on_permission_denied(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return error_response(403, str(exc) or "You may not do this.", code="forbidden")


@api.exception_handler(RequestDataTooBig)
def on_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return error_response(413, f"The request body is larger than {limit} bytes.")


@api.exception_handler(Exception)
def on_unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    if settings.DEBUG and settings.DEBUG_PROPAGATE_EXCEPTIONS:
        raise exc
    logger.exception("Unhandled API error")
    return error_response(500, "Internal server error.")
