"""Settings from the environment, start-up failures, probes and security headers."""

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from registry_site.env import env_bool, env_int, env_list, env_str
from tests.conftest import bearer

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT = 60


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def environment(**overrides: str) -> dict[str, str]:
    """The suite's environment without any secret key, plus `overrides`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"SECRET_KEY", "SECRET_KEY_FILE", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    env.update(overrides)
    return env


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- Start-up -------------------------------------------------------------------------------


def test_missing_secret_key_stops_startup_with_one_sentence():
    result = manage(environment(DEBUG="0"), "check")

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert "SECRET_KEY" in last_line
    assert last_line.endswith(".")
    assert last_line.count(". ") == 0  # one sentence


def test_malformed_setting_stops_startup_naming_the_variable():
    result = manage(environment(DEBUG="maybe", SECRET_KEY="x" * 60), "check")

    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, "True 2"), ("0", "None None")],
)
def test_postgresql_prepared_statements_are_on_unless_turned_off(raw, expected):
    env = environment(SECRET_KEY="x" * 60, DATABASE_URL="postgres://regent@db.invalid/regent")
    env.pop("DATABASE_PREPARED_STATEMENTS", None)
    if raw is not None:
        env["DATABASE_PREPARED_STATEMENTS"] = raw
    show = (
        "from django.conf import settings; options = settings.DATABASES['default']['OPTIONS']; "
        "print(options.get('server_side_binding'), options.get('prepare_threshold'))"
    )
    result = manage(env, "shell", "-c", show)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected


def test_production_settings_pass_the_deploy_checks():
    env = environment(
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(64),
        REGENT_BASE_URL="https://regent.example.com",
        ALLOWED_HOSTS="regent.example.com",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/regent",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/15",
    )

    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


# --- Environment helpers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("Yes", True), (" on ", True), ("0", False), ("off", False)],
)
def test_env_bool_reads_the_usual_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("REGENT_TEST_FLAG", raw)

    assert env_bool("REGENT_TEST_FLAG") is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "tru"])
def test_env_bool_rejects_anything_else(monkeypatch, raw):
    monkeypatch.setenv("REGENT_TEST_FLAG", raw)

    with pytest.raises(SystemExit):
        env_bool("REGENT_TEST_FLAG")


def test_env_bool_and_int_defaults_when_unset(monkeypatch):
    monkeypatch.delenv("REGENT_TEST_VALUE", raising=False)
    monkeypatch.delenv("REGENT_TEST_VALUE_FILE", raising=False)

    assert env_bool("REGENT_TEST_VALUE", default=True) is True
    assert env_int("REGENT_TEST_VALUE", 7) == 7
    assert env_str("REGENT_TEST_VALUE") is None


@pytest.mark.parametrize("raw", ["12abc", "1.5", "ten", "0x10"])
def test_env_int_rejects_non_integers(monkeypatch, raw):
    monkeypatch.setenv("REGENT_TEST_COUNT", raw)

    with pytest.raises(SystemExit):
        env_int("REGENT_TEST_COUNT", 1)


def test_env_int_reads_integers_and_treats_empty_as_unset(monkeypatch):
    monkeypatch.setenv("REGENT_TEST_COUNT", "42")
    assert env_int("REGENT_TEST_COUNT", 1) == 42
    monkeypatch.setenv("REGENT_TEST_COUNT", "")
    assert env_int("REGENT_TEST_COUNT", 1) == 1


def test_file_variant_is_read_and_wins(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-the-file\n")
    monkeypatch.setenv("REGENT_TEST_SECRET", "from-the-variable")
    monkeypatch.setenv("REGENT_TEST_SECRET_FILE", str(secret))

    assert env_str("REGENT_TEST_SECRET") == "from-the-file"


def test_file_variant_feeds_the_typed_readers(monkeypatch, tmp_path):
    (tmp_path / "flag").write_text("yes\n")
    (tmp_path / "count").write_text("3\n")
    monkeypatch.setenv("REGENT_TEST_FLAG_FILE", str(tmp_path / "flag"))
    monkeypatch.setenv("REGENT_TEST_COUNT_FILE", str(tmp_path / "count"))

    assert env_bool("REGENT_TEST_FLAG") is True
    assert env_int("REGENT_TEST_COUNT", 0) == 3


def test_env_list_splits_on_commas_and_drops_blanks(monkeypatch):
    monkeypatch.setenv("REGENT_TEST_HOSTS", " a.example.com, b.example.com,, ")

    assert env_list("REGENT_TEST_HOSTS", []) == ["a.example.com", "b.example.com"]
    assert env_list("REGENT_TEST_UNSET_HOSTS", ["default"]) == ["default"]


# --- Probes ---------------------------------------------------------------------------------


def test_healthz_answers_without_touching_anything(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_database_and_broker(client):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": True, "broker": True}}


@pytest.mark.django_db
def test_readyz_is_503_when_the_broker_is_down(client, settings, monkeypatch):
    dead_broker = f"redis://127.0.0.1:{closed_port()}/0"
    settings.CELERY_BROKER_URL = dead_broker
    # Celery reads CELERY_BROKER_URL from the environment before its own configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", dead_broker)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": True, "broker": False},
    }


# --- Security headers -----------------------------------------------------------------------

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def assert_security_headers(response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


@pytest.mark.django_db
def test_html_pages_carry_the_security_headers(client):
    response = client.get("/admin/login/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert_security_headers(response)


@pytest.mark.django_db
def test_api_responses_carry_the_security_headers(client, write_token):
    response = client.get("/api/v1/me", **bearer(write_token))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    assert_security_headers(response)
