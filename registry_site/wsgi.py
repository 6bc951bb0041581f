"""WSGI entry point: `python -m registry_site.serve` (granian) and `runserver` load it."""

import functools
import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "registry_site.settings")

django_application = get_wsgi_application()
# Import the URLconf (every view module) now rather than on the first request, so the first
# request is not slower than the others.
get_resolver().url_patterns  # noqa: B018

# What a server sets from the request itself (PEP 3333, RFC 3875). A process variable of one
# of these names (or HTTP_*) is only dropped when the request left it as it was.
REQUEST_VARIABLES = frozenset(
    {
        "AUTH_TYPE",
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "GATEWAY_INTERFACE",
        "PATH_INFO",
        "QUERY_STRING",
        "REMOTE_ADDR",
        "REMOTE_HOST",
        "REMOTE_PORT",
        "REMOTE_USER",
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
    }
)


def _request_variable(name: str) -> bool:
    return name.startswith("HTTP_") or name in REQUEST_VARIABLES


class ProcessEnvironment:
    """The process's variables, split once into those to drop from every request environ
    and those named like request data, dropped only while they hold the process's value."""

    def __init__(self, process: Mapping[str, str]) -> None:
        self.names = tuple(name for name in process if not _request_variable(name))
        self.lookalikes = tuple(
            (name, value) for name, value in process.items() if _request_variable(name)
        )


def without_process_environment(
    environ: MutableMapping[str, Any], process: ProcessEnvironment
) -> MutableMapping[str, Any]:
    """`environ` without what the server copied into it from the process environment.

    granian, like wsgiref (`runserver`), starts each request's environ from `os.environ`, so
    SECRET_KEY, DATABASE_URL with its password and storage keys would sit in `request.META`
    of every request, where error reports show whatever their filters do not recognise.
    A variable named like request data (`HTTP_PROXY`, say) is dropped only when it still
    holds the process's value: a header the client really sent with that very value is lost
    too, the safe side (for `Proxy:` it is the httpoxy defence).
    """
    for name in process.names:
        environ.pop(name, None)
    for name, value in process.lookalikes:
        if environ.get(name) == value:
            del environ[name]
    return environ


@functools.cache
def _process_environment() -> ProcessEnvironment:
    # Read at the first request, after the server took its own copy at start-up.
    return ProcessEnvironment(os.environ)


def application(
    environ: MutableMapping[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    return django_application(
        without_process_environment(environ, _process_environment()), start_response
    )
