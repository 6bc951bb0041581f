from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from apps.audit.context import context_from_request, use_context


class RequestContextMiddleware:
    """Make the caller's ip, user agent, request id and channel available to audit rows."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        context = context_from_request(request)
        request.request_id = context.request_id
        with use_context(context):
            response = self.get_response(request)
        response["X-Request-ID"] = context.request_id
        return response
