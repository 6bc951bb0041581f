"""Smoke test of the embedded default: nothing configured, SQLite and files under the data dir.

The ONE place the suite runs on SQLite: `make run` on a fresh machine must work. Everything
runs in subprocesses with an environment stripped of the test suite's PostgreSQL, Redis and
mail settings, exactly as a new user would start Regent.
"""

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tests.e2e.conftest import OUTPUT_DIR, REPO_ROOT, free_port

COMMAND_TIMEOUT = 60
SERVER_START_TIMEOUT = 30
HTTP_TIMEOUT = 10
# The suite's own settings (tests/testenv.py) and anything else that would configure Regent.
STRIPPED_PREFIXES = ("DATABASE_", "CELERY_", "EMAIL_", "REGENT_", "DJANGO_", "AWS_")
STRIPPED_NAMES = {"SECRET_KEY", "SECRET_KEY_FILE", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS"}
DEMO_SIGN_IN = re.compile(r"^Demo sign-in: admin / (\S+)$", re.MULTILINE)
RUNSERVER = (sys.executable, "manage.py", "runserver", "--nostatic", "--noreload")
CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def embedded_environment(data_dir: Path, port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(STRIPPED_PREFIXES) and key not in STRIPPED_NAMES
    }
    env.update(REGENT_DATA_DIR=str(data_dir), DEBUG="1", PORT=str(port), PYTHONUNBUFFERED="1")
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stderr}"
    return result


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class Browser:
    """A stdlib HTTP client with a cookie jar that does not follow redirects."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), NoRedirect()
        )

    def request(
        self, path: str, data: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(self.base_url + path, data=body, headers=headers or {})
        try:
            with self.opener.open(request, timeout=HTTP_TIMEOUT) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as error:  # 3xx (not followed), 4xx and 5xx
            return error.code, dict(error.headers), error.read().decode()

    def cookie(self, name: str) -> str | None:
        return next((cookie.value for cookie in self.cookies if cookie.name == name), None)


def wait_until_serving(client: Browser, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"runserver exited early:\n{log_path.read_text()[-4000:]}")
        try:
            if client.request("/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"runserver not serving after {SERVER_START_TIMEOUT}s:\n{log_path.read_text()}")


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, Browser]]:
    """A migrated embedded install with `runserver` running: (env, data dir, client)."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = embedded_environment(data_dir, port)
    manage(env, "migrate", "--no-input", "-v", "0")
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    log_path = OUTPUT_DIR / "embedded-runserver.log"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [*RUNSERVER, f"127.0.0.1:{port}"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        client = Browser(f"http://127.0.0.1:{port}")
        wait_until_serving(client, server, log_path)
        yield env, data_dir, client
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def demo_password(env: dict[str, str]) -> str:
    output = manage(env, "ensure_demo_admin").stdout
    match = DEMO_SIGN_IN.search(output)
    assert match, f"no 'Demo sign-in: admin / <password>' line in {output!r}"
    return match.group(1)


def sign_in(client: Browser, username: str, password: str) -> None:
    status, _, html = client.request("/accounts/login/")
    assert status == 200, f"GET /accounts/login/ answered {status}"
    csrf = CSRF_INPUT.search(html)
    assert csrf, "the login page has no CSRF token"
    form = {"username": username, "password": password, "csrfmiddlewaretoken": csrf.group(1)}
    status, headers, _ = client.request("/accounts/login/", form)
    assert status == 302, f"sign-in answered {status}, not a redirect"
    assert "/accounts/login/" not in headers["Location"]
    assert client.cookie("sessionid")


def test_embedded_default_runs_on_sqlite_with_nothing_configured(embedded, monkeypatch, tmp_path):
    env, data_dir, client = embedded
    password = demo_password(env)
    assert demo_password(env) == password  # the same demo sign-in on every start

    assert client.request("/healthz")[0] == 200
    status, _, body = client.request("/readyz")
    assert status == 200
    assert json.loads(body)["checks"] == {"database": True}  # no broker: tasks run eagerly

    sign_in(client, "admin", password)
    status, _, body = client.request("/api/v1/me")  # the browser session works on the API
    assert (status, json.loads(body)["username"]) == (200, "admin")

    token = manage(env, "create_api_token", "admin", "--scope", "write").stdout.strip()
    anonymous = Browser(client.base_url)
    status, _, body = anonymous.request("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert (status, json.loads(body)["username"]) == (200, "admin")

    assert "Audit chain intact" in manage(env, "audit_verify").stdout

    where = manage(
        env,
        "shell",
        "-c",
        "import json; from django.conf import settings; print(json.dumps(["
        "str(settings.DATABASES['default']['NAME']), "
        "str(settings.STORAGES['artifacts']['OPTIONS']['location'])]))",
    ).stdout
    database, artifacts = (Path(item) for item in json.loads(where.strip().splitlines()[-1]))
    assert database == data_dir.resolve() / "regent.sqlite3"
    assert database.is_file()
    assert artifacts.is_relative_to(data_dir.resolve())

    # A training script on the embedded default: tasks run in-process, so the version it
    # registers from its run is copied and verified before the call returns.
    mlflow_registers_and_loads(client.base_url, token, monkeypatch, tmp_path)


def mlflow_registers_and_loads(base_url: str, token: str, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", base_url)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    (model_dir / "weights.bin").write_bytes(b"\x01" * 5000)
    with mlflow.start_run() as run:
        mlflow.log_metric("auc", 0.9)
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        registered = mlflow.register_model(f"runs:/{run.info.run_id}/model", "embedded")
    assert (registered.version, registered.status) == ("1", "READY")
    client = mlflow.MlflowClient()
    assert client.get_model_version("embedded", "1").status == "READY"
    client.set_registered_model_alias("embedded", "champion", "1")
    assert client.get_model_version_by_alias("embedded", "champion").version == "1"
    fetched = Path(
        mlflow.artifacts.download_artifacts(
            "models:/embedded@champion", dst_path=str(tmp_path / "got")
        )
    )
    assert (fetched / "weights.bin").read_bytes() == b"\x01" * 5000
