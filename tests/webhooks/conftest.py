"""Webhook and manifest fixtures: personas, a real local receiver, the docs' recipes.

`owner` (alice) creates `ml_model` and owns it; `viewer` (carol) and `editor` (bob) hold
those roles on it; `outsider` (dave) has none; `superuser` (root) sees everything.

`receiver` is a real HTTP server on 127.0.0.1 (a thread) that records every request and
answers what the test says; `allow_private` turns REGENT_WEBHOOK_ALLOW_PRIVATE on so
Regent may call it. `verify_webhook` is the Python function printed in
docs/INTEGRATIONS.md, executed as it stands there.
"""

import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from apps.accounts.models import TokenScope, User
from apps.accounts.services import token_create
from apps.audit.models import Webhook
from apps.audit.webhook_services import webhook_create
from apps.registry.models import RegisteredModel
from apps.registry.services import model_create
from tests.conftest import bearer, grant, make_user

DOCS = Path(__file__).resolve().parents[2] / "docs" / "INTEGRATIONS.md"


URLS = "registry_site.urls"


def token_for(user: User, scope: str = TokenScope.WRITE) -> dict[str, str]:
    _, plaintext = token_create(user=user, name="tests", scope=scope)
    return bearer(plaintext)


def docs_block(marker: str, language: str) -> str:
    """The fenced code block of docs/INTEGRATIONS.md whose first line is `marker`."""
    text = DOCS.read_text()
    pattern = rf"```{language}\n({re.escape(marker)}.*?)```"
    found = re.search(pattern, text, re.DOTALL)
    assert found, f"no {language} block starting with {marker!r} in {DOCS}"
    return found.group(1)


# --- Personas ----------------------------------------------------------------------------------


@pytest.fixture
def owner(alice: User) -> User:
    return alice


@pytest.fixture
def ml_model(owner: User) -> RegisteredModel:
    return model_create(actor=owner, name="fraud-detector")


@pytest.fixture
def other_model(owner: User) -> RegisteredModel:
    return model_create(actor=owner, name="churn-predictor")


@pytest.fixture
def viewer(ml_model: RegisteredModel) -> User:
    user = make_user("carol")
    grant(user, ml_model, "viewer")
    return user


@pytest.fixture
def editor(ml_model: RegisteredModel) -> User:
    user = make_user("bob")
    grant(user, ml_model, "editor")
    return user


@pytest.fixture
def owner_auth(owner: User) -> dict[str, str]:
    return token_for(owner)


@pytest.fixture
def viewer_auth(viewer: User) -> dict[str, str]:
    return token_for(viewer)


@pytest.fixture
def editor_auth(editor: User) -> dict[str, str]:
    return token_for(editor)


@pytest.fixture
def outsider_auth(outsider: User) -> dict[str, str]:
    return token_for(outsider)


@pytest.fixture
def superuser_auth(superuser: User) -> dict[str, str]:
    return token_for(superuser)


# --- The receiver ------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local endpoint: `requests` it got; `status`, `headers`, `body`, `delay` to answer."""

    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.server.server_address[0]}:{self.port}/hook"

    @property
    def hits(self) -> int:
        return len(self.requests)


def _handler(receiver_box: list[Receiver]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            receiver = receiver_box[0]
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            receiver.requests.append(Received(self.path, headers, body))
            if receiver.delay:
                threading.Event().wait(receiver.delay)
            self.send_response(receiver.status)
            for name, value in receiver.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(receiver.body)))
            self.end_headers()
            self.wfile.write(receiver.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    """`receiver_factory(host="127.0.0.1", port=0, tls=None)`: start another receiver
    (`tls`: a server-side SSLContext, for an https receiver)."""
    servers: list[ThreadingHTTPServer] = []

    def start(
        host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> Receiver:
        box: list[Receiver] = []
        server = ThreadingHTTPServer((host, port), _handler(box))
        server.daemon_threads = True
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        box.append(Receiver(server))
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append(server)
        return box[0]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver(receiver_factory: Callable[..., Receiver]) -> Receiver:
    return receiver_factory()


@pytest.fixture
def allow_private(settings: Any) -> None:
    settings.REGENT_WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture
def deny_private(settings: Any) -> None:
    settings.REGENT_WEBHOOK_ALLOW_PRIVATE = False


@pytest.fixture
def verify_webhook() -> Callable[..., bool]:
    """The signature check of docs/INTEGRATIONS.md, exactly as printed there."""
    namespace: dict[str, Any] = {}
    exec(docs_block("# verify_webhook.py", "python"), namespace)
    return namespace["verify_webhook"]


@pytest.fixture
def resolve_to(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    """`resolve_to({"hooks.example.com": ["127.0.0.1"]})`: a fake DNS for those names (the
    rest resolve as usual); returns the list of names looked up, in order."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def install(answers: dict[str, list[str] | Callable[[], list[str]]]) -> list[str]:
        def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> list:
            lookups.append(host)
            if host not in answers:
                return real(host, port, *args, **kwargs)
            found = answers[host]
            addresses = found() if callable(found) else found
            return [_addrinfo(address, int(port)) for address in addresses]

        monkeypatch.setattr(socket, "getaddrinfo", fake)
        return lookups

    return install


def _addrinfo(address: str, port: int) -> tuple:
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


def make_webhook(
    actor: User,
    url: str,
    events: list[str] | None = None,
    model: RegisteredModel | None = None,
) -> tuple[Webhook, str]:
    """Register through the service (the caller sets REGENT_WEBHOOK_ALLOW_PRIVATE)."""
    return webhook_create(actor=actor, url=url, events=events or ["version.created"], model=model)
