"""Error handlers: JSON under /api/, the styled templates elsewhere."""

from django.http import HttpRequest, HttpResponse
from django.views import defaults

from registry_site.api_errors import error_response
from registry_site.middleware import is_api_path


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path):
        return error_response(404, "Not found.")
    return defaults.page_not_found(request, exception)


def handler403(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path):
        return error_response(403, "You may not do this.")
    return defaults.permission_denied(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        return error_response(500, "Internal server error.")
    return defaults.server_error(request)
