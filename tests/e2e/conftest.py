"""End-to-end fixtures: a real browser, a real Celery worker and a real SMTP server.

Browser (`browser`, `page`, `console_errors`, `signed_in_page`, `screenshot`)
    Playwright's sync API drives Debian's Chromium (never `playwright install`). Pages talk
    to pytest-django's `live_server`, which needs `@pytest.mark.django_db(transaction=True)`.
    Mark such tests `@pytest.mark.browser`. A failing test leaves
    `test-output/screenshots/<test-name>-failed.png`.

Worker (`celery_worker`, `celery_worker_factory`)
    A real `celery worker` subprocess on the test database and the test Redis database,
    consuming a queue of its own: `task.apply_async(args, queue=celery_worker.queue)`.
    Needs `transactional_db` (the worker only sees committed rows). Mark `@pytest.mark.worker`.

SMTP (`smtp_server`)
    An aiosmtpd server on 127.0.0.1 that records what it receives, or answers 451/550 on
    demand (`smtp_server.respond_with(SMTP_TEMPFAIL, at="DATA")`); Django's SMTP backend is
    pointed at it for the test, and `smtp_server.worker_env` points a worker at it.

`wait_until(predicate, timeout)` polls for something another process does (a worker, a mail).

Why DJANGO_ALLOW_ASYNC_UNSAFE: Playwright's sync API runs an asyncio event loop in the main
thread (in a greenlet) for as long as the browser is open. Django's async-safety guard sees
that running loop and refuses every ORM call made from the main thread afterwards
(SynchronousOnlyOperation), although fixtures and tests run synchronously and never share
a connection with the loop. The variable switches the guard off for the whole pytest process
once this file is collected; the worker and other subprocesses we start do not inherit it.
"""

import contextlib
import email
import email.policy
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from aiosmtpd.controller import Controller
from django.conf import settings
from django.db import connection
from kombu import Exchange, Queue
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tests.conftest import PASSWORD

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUT_DIR = REPO_ROOT / "test-output"
SCREENSHOT_DIR = OUTPUT_DIR / "screenshots"
WORKER_LOG_DIR = OUTPUT_DIR / "workers"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
]
VIEWPORT = {"width": 1280, "height": 900}
PAGE_TIMEOUT_MS = 15_000
LOGIN_PATH = "/accounts/login/"

WORKER_READY_TIMEOUT = 30.0
WORKER_STOP_TIMEOUT = 10.0
WORKER_READY = re.compile(r"@\S+ ready\.")

SMTP_TEMPFAIL = "451 4.3.0 Try again later"
SMTP_REJECT = "550 5.7.1 Rejected"
SMTP_ACCEPT = "250 Message accepted for delivery"

_phase_reports = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    """Keep each phase's report on the item, so fixtures can tell that the test failed."""
    report = yield
    item.stash.setdefault(_phase_reports, {})[report.when] = report
    return report


def _test_failed(node: pytest.Item) -> bool:
    reports = node.stash.get(_phase_reports, {})
    return any(report.failed for report in reports.values())


def safe_name(name: str) -> str:
    """A file name from a test name (parametrised ids contain brackets and slashes)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "unnamed"


# --- Browser --------------------------------------------------------------------------------


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as test-output/screenshots/<name>.png and return its path."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{safe_name(name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (never playwright install)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def console_errors() -> list[str]:
    """Console errors and uncaught exceptions of the test's `page` (CSP violations included)."""
    return []


@pytest.fixture
def page(
    browser: Browser, console_errors: list[str], request: pytest.FixtureRequest
) -> Iterator[Page]:
    """A page in a fresh browser context (no cookies shared between tests)."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    context.set_default_navigation_timeout(PAGE_TIMEOUT_MS)
    new_page = context.new_page()
    new_page.on("console", lambda message: _record_console_error(message, console_errors))
    new_page.on("pageerror", lambda error: console_errors.append(f"pageerror: {error}"))
    try:
        yield new_page
    finally:
        if _test_failed(request.node):
            _try_screenshot(new_page, f"{request.node.name}-failed")
        context.close()


def _record_console_error(message: ConsoleMessage, errors: list[str]) -> None:
    url = message.location.get("url", "")
    # Chromium asks for /favicon.ico on its own when a page declares no icon: not the page's error.
    if message.type == "error" and urlsplit(url).path != "/favicon.ico":
        errors.append(f"console: {message.text} ({url})")


def _try_screenshot(page: Page, name: str) -> None:
    try:
        screenshot(page, name)
    except Exception as error:  # a crashed page must not hide the test's own failure
        sys.stderr.write(f"Could not save screenshot {name}: {error}\n")


def sign_in(page: Page, base_url: str, username: str, password: str) -> Page:
    """Sign in through the real login page; fail clearly if we stay on it."""
    response = page.goto(f"{base_url}{LOGIN_PATH}")
    if response is None or not response.ok:
        _try_screenshot(page, f"sign-in-page-failed-{username}")
        status = response.status if response else "no response"
        raise AssertionError(f"GET {LOGIN_PATH} answered {status}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.wait_for_load_state("load")
    if urlsplit(page.url).path == LOGIN_PATH:
        _try_screenshot(page, f"sign-in-failed-{username}")
        raise AssertionError(f"Signing in as {username!r} failed: still on {page.url}")
    return page


@pytest.fixture
def signed_in_page(page: Page, live_server: Any) -> Callable[..., Page]:
    """`signed_in_page(user, password=PASSWORD)`: the test's `page`, signed in as `user`."""

    def sign_in_as(user: Any, password: str = PASSWORD) -> Page:
        username = user if isinstance(user, str) else user.get_username()
        return sign_in(page, live_server.url, username, password)

    return sign_in_as


# --- Celery worker --------------------------------------------------------------------------


@dataclass
class CeleryWorker:
    """A running `celery worker` subprocess that consumes `queue` only."""

    queue: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_ready(self, timeout: float = WORKER_READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if WORKER_READY.search(self.log()):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"Celery worker exited early:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"Celery worker not ready after {timeout}s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = WORKER_STOP_TIMEOUT) -> None:
        """SIGTERM (warm shutdown); if still running after `timeout`, SIGKILL its group."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The worker leads its own process group: this reaches a stuck pool child too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)


def worker_database_url() -> str:
    """A DATABASE_URL for the database this test session uses (pytest-django's test_*)."""
    db = connection.settings_dict
    user = quote(db["USER"] or "", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
    credentials = f"{user}{password}@" if user else ""
    host = db["HOST"] or "127.0.0.1"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{credentials}{host}{port}/{quote(db['NAME'], safe='')}"


def worker_environment(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The tests' own environment, pointed at the test database and broker."""
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(
        DATABASE_URL=worker_database_url(),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        DJANGO_SETTINGS_MODULE="registry_site.settings",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    return env


def _queue_clear(name: str, *, delete: bool = False) -> None:
    """Purge the queue; with `delete`, also drop it and its exchange and bindings from Redis."""
    from registry_site.celery import app

    with app.connection_for_write() as conn:
        # Declared as the worker declares it (`-Q name`), so this channel knows the binding.
        queue = Queue(name, Exchange(name, type="direct"), routing_key=name)(conn.default_channel)
        queue.declare()
        queue.purge()
        if delete:
            queue.delete()
            queue.exchange.delete()


def start_celery_worker(
    name: str, *, extra_env: dict[str, str] | None = None, pool: str = "prefork"
) -> CeleryWorker:
    """Start a worker on a fresh queue and wait until it consumes; the caller stops it."""
    queue = f"test-{safe_name(name)[:40]}-{uuid.uuid4().hex[:8]}"
    _queue_clear(queue)
    WORKER_LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = WORKER_LOG_DIR / f"{queue}.log"
    command = [sys.executable, "-m", "celery", "-A", "registry_site", "worker"]
    command += ["-P", pool, "-c", "1", "-Q", queue, "-n", f"{queue}@%h", "--loglevel", "INFO"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            # What the worker publishes itself (verify after a copy) stays on its queue.
            env=worker_environment({"CELERY_DEFAULT_QUEUE": queue, **(extra_env or {})}),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = CeleryWorker(queue=queue, process=process, log_path=log_path)
    try:
        worker.wait_until_ready()
    except BaseException:
        worker.stop()
        raise
    return worker


@pytest.fixture
def celery_worker_factory(
    transactional_db: None, request: pytest.FixtureRequest
) -> Iterator[Callable[..., CeleryWorker]]:
    """`celery_worker_factory(extra_env={...}, pool="solo")`: more or differently set workers."""
    workers: list[CeleryWorker] = []

    def start(*, extra_env: dict[str, str] | None = None, pool: str = "prefork") -> CeleryWorker:
        worker = start_celery_worker(request.node.name, extra_env=extra_env, pool=pool)
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.stop()
            _queue_clear(worker.queue, delete=True)


@pytest.fixture
def celery_worker(celery_worker_factory: Callable[..., CeleryWorker]) -> CeleryWorker:
    """One real worker (prefork, one process) consuming `celery_worker.queue`."""
    return celery_worker_factory()


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; return that or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Condition not met within {timeout}s")
        time.sleep(interval)


# --- SMTP -----------------------------------------------------------------------------------


@dataclass
class ReceivedMessage:
    """One message as the SMTP server received it."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage

    def body(self, subtype: str) -> str:
        """The text of the `text/<subtype>` part ("plain" or "html")."""
        part = self.message.get_body(preferencelist=(subtype,))
        if part is None or part.get_content_subtype() != subtype:
            raise KeyError(f"No text/{subtype} part in {self.message['Subject']!r}")
        return part.get_content()


@dataclass
class RecordingHandler:
    """aiosmtpd handler: keeps accepted messages; can answer RCPT or DATA with a failure."""

    messages: list[ReceivedMessage] = field(default_factory=list)
    rcpt_reply: str | None = None
    data_reply: str | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        raw = bytes(envelope.original_content or envelope.content)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        self.messages.append(
            ReceivedMessage(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                raw=raw,
                message=parsed,  # type: ignore[arg-type]
            )
        )
        return SMTP_ACCEPT


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self.handler.messages

    def respond_with(self, reply: str | None, *, at: str = "DATA") -> None:
        """Answer later RCPTs or DATAs with `reply` (SMTP_TEMPFAIL, SMTP_REJECT); None accepts."""
        if at not in ("RCPT", "DATA"):
            raise ValueError("at must be 'RCPT' or 'DATA'")
        setattr(self.handler, f"{at.lower()}_reply", reply)

    @property
    def worker_env(self) -> dict[str, str]:
        """Environment for a `celery_worker_factory(extra_env=...)` worker that sends mail here."""
        return {"EMAIL_HOST": self.host, "EMAIL_PORT": str(self.port), "EMAIL_TIMEOUT": "5"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smtp_server(settings: Any) -> Iterator[SmtpServer]:
    """A real SMTP server on 127.0.0.1; Django's mail goes there during the test."""
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=5)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_TIMEOUT = 5
    try:
        yield SmtpServer(host="127.0.0.1", port=port, handler=handler)
    finally:
        controller.stop()
