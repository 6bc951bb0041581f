"""Who is acting and through which channel, for the audit rows written during a request.

The middleware fills a context variable at the start of each request; services call
`audit_record` without threading the request through every signature. Tasks and commands
run with the empty context (channel "system" unless they say otherwise).
"""

import contextvars
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from django.conf import settings
from django.http import HttpRequest


class Via:
    """The channel an action came through."""

    WEB = "web"
    API = "api"
    EMAIL = "email"
    MLFLOW = "mlflow"
    ADMIN = "admin"
    SYSTEM = "system"
    CLI = "cli"


@dataclass(frozen=True)
class RequestContext:
    ip: str | None = None
    user_agent: str = ""
    request_id: str = ""
    via: str = Via.SYSTEM


_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "regent_request_context",
    default=RequestContext(),  # noqa: B039 (a frozen dataclass: immutable)
)

MAX_USER_AGENT = 512
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def current_context() -> RequestContext:
    return _current.get()


def client_ip(request: HttpRequest) -> str | None:
    """The client address, trusting X-Forwarded-For only as far as the configured proxies.

    With N trusted proxies, the client is the Nth address from the right of X-Forwarded-For;
    anything further left was written by the client and may be forged.
    """
    proxies = settings.REGENT_TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies > 0 and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if len(hops) >= proxies:
            return hops[-proxies]
    return request.META.get("REMOTE_ADDR") or None


def via_for_path(path: str) -> str:
    if path.startswith(("/api/2.0/mlflow/", "/api/2.0/mlflow-artifacts/", "/ajax-api/")):
        return Via.MLFLOW
    if path.startswith("/api/"):
        return Via.API
    if path.startswith("/admin/"):
        return Via.ADMIN
    return Via.WEB


def _safe_request_id(raw: str) -> str:
    """Keep a proxy's request id when it is a plain token; otherwise make our own."""
    return raw if REQUEST_ID_PATTERN.fullmatch(raw) else uuid.uuid4().hex


def context_from_request(request: HttpRequest) -> RequestContext:
    return RequestContext(
        ip=client_ip(request),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:MAX_USER_AGENT],
        request_id=_safe_request_id(request.META.get("HTTP_X_REQUEST_ID", "")),
        via=via_for_path(request.path),
    )


@contextmanager
def use_context(context: RequestContext) -> Iterator[RequestContext]:
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


@contextmanager
def using_via(via: str) -> Iterator[RequestContext]:
    """Run a block under another channel (an email-link decision, a CLI command)."""
    with use_context(replace(current_context(), via=via)) as context:
        yield context
