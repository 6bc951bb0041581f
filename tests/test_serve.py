"""The production web server's settings (registry_site.serve) and the WSGI entry point."""

import logging

import pytest
from granian.constants import Interfaces
from granian.log import LogLevels

from apps.approvals.logging import RedactReviewLinks
from registry_site import serve, wsgi
from registry_site.serve import server_options

WEB_VARIABLES = (
    "PORT",
    "WEB_HOST",
    "WEB_WORKERS",
    "WEB_CONCURRENCY",
    "WEB_THREADS",
    "WEB_BACKLOG",
    "WEB_GRACEFUL_TIMEOUT",
    "WEB_MAX_RSS_MIB",
    "WEB_ACCESS_LOG",
    "WEB_LOG_LEVEL",
)


@pytest.fixture
def environ(monkeypatch):
    """No WEB_* variable set; `environ(NAME="value", ...)` sets some."""
    for name in WEB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)

    def set_variables(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_variables


def test_defaults_serve_regent_over_wsgi_on_port_8000(environ, monkeypatch):
    monkeypatch.setattr(serve, "_cpus", lambda: 2)
    options = server_options()
    assert options["target"] == "registry_site.wsgi:application"
    assert options["interface"] is Interfaces.WSGI
    assert (options["address"], options["port"]) == ("0.0.0.0", 8000)
    assert (options["workers"], options["blocking_threads"]) == (1, 8)
    assert options["websockets"] is False
    assert options["respawn_failed_workers"] is True
    assert options["workers_kill_timeout"] == 30
    assert options["workers_max_rss"] is None
    assert options["log_access"] is False
    assert options["log_level"] is LogLevels.info


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (2, 1), (4, 2), (8, 4), (64, 4)])
def test_one_process_per_two_cpus_between_one_and_four(environ, monkeypatch, cpus, workers):
    monkeypatch.setattr(serve, "_cpus", lambda: cpus)
    assert server_options()["workers"] == workers


def test_every_setting_comes_from_its_variable(environ):
    environ(
        PORT="9000",
        WEB_HOST="::",
        WEB_WORKERS="3",
        WEB_CONCURRENCY="7",
        WEB_THREADS="16",
        WEB_BACKLOG="2048",
        WEB_GRACEFUL_TIMEOUT="5",
        WEB_MAX_RSS_MIB="512",
        WEB_ACCESS_LOG="1",
        WEB_LOG_LEVEL="DEBUG",
    )
    options = server_options()
    assert (options["address"], options["port"]) == ("::", 9000)
    assert (options["workers"], options["blocking_threads"], options["backlog"]) == (3, 16, 2048)
    assert (options["workers_kill_timeout"], options["workers_max_rss"]) == (5, 512)
    assert options["log_access"] is True
    assert options["log_level"] is LogLevels.debug


def test_web_concurrency_is_the_fallback_for_workers(environ):
    environ(WEB_CONCURRENCY="3")
    assert server_options()["workers"] == 3


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("WEB_THREADS", "0", "WEB_THREADS must be at least 1, not 0."),
        ("WEB_THREADS", "eight", "WEB_THREADS must be an integer, not 'eight'."),
        ("WEB_WORKERS", "-1", "WEB_WORKERS must be at least 1, not -1."),
        ("PORT", "80a", "PORT must be an integer, not '80a'."),
        ("WEB_BACKLOG", "10", "WEB_BACKLOG must be at least 128, not 10."),
        ("WEB_MAX_RSS_MIB", "1.5", "WEB_MAX_RSS_MIB must be an integer, not '1.5'."),
        ("WEB_ACCESS_LOG", "maybe", "WEB_ACCESS_LOG must be a boolean"),
        ("WEB_LOG_LEVEL", "loud", "WEB_LOG_LEVEL must be one of critical, error"),
    ],
)
def test_a_bad_value_stops_start_up_with_one_line_naming_it(environ, capsys, name, raw, says):
    environ(**{name: raw})
    with pytest.raises(SystemExit):
        server_options()
    assert capsys.readouterr().err.startswith(f"Regent cannot start: {says}")


def test_main_starts_no_server_on_a_bad_value(environ, monkeypatch):
    environ(WEB_THREADS="none")
    monkeypatch.setattr("granian.Granian", pytest.fail)  # must not be reached
    with pytest.raises(SystemExit):
        serve.main()


def test_a_setting_can_come_from_a_file(environ, monkeypatch, tmp_path):
    (tmp_path / "threads").write_text("12\n")
    monkeypatch.setenv("WEB_THREADS_FILE", str(tmp_path / "threads"))
    assert server_options()["blocking_threads"] == 12


def test_granian_logs_through_the_review_link_redaction(environ):
    config = server_options()["log_dictconfig"]
    filter_factory = config["filters"]["redact_review_links"]["()"]
    assert filter_factory == "apps.approvals.logging.RedactReviewLinks"
    for handler in config["handlers"].values():
        assert handler["filters"] == ["redact_review_links"]
    assert {"_granian", "granian.access"} <= set(config["loggers"])
    # granian's access-log line: a format string with a mapping of atoms.
    record = logging.LogRecord(
        "granian.access", logging.INFO, "", 0, '"%(method)s %(path)s" %(status)d', None, None
    )
    record.args = {"method": "GET", "path": "/reviews/link/secret-token/", "status": 200}
    RedactReviewLinks().filter(record)
    assert record.getMessage() == '"GET /reviews/link/[redacted]" 200'


# --- The process environment stays out of request data ---------------------------------------


def test_process_variables_are_taken_out_of_the_request_environ():
    process = {"SECRET_KEY": "s3cret", "DATABASE_URL": "postgres://u:pw@db/regent", "PATH": "/bin"}
    environ = {**process, "REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_HOST": "regent"}
    assert wsgi.without_process_environment(environ, wsgi.ProcessEnvironment(process)) == {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "HTTP_HOST": "regent",
    }


def test_a_process_variable_named_like_a_header_leaves_only_when_the_request_did_not_send_it():
    process = {"HTTP_PROXY": "http://proxy:3128", "HTTP_HOST": "regent.example"}
    environ = {"HTTP_PROXY": "http://proxy:3128", "HTTP_HOST": "other.example"}
    # HTTP_PROXY holds the process's value: it came from the process, not from a client.
    stripped = wsgi.without_process_environment(environ, wsgi.ProcessEnvironment(process))
    assert stripped == {"HTTP_HOST": "other.example"}


def test_the_application_hands_django_an_environ_without_the_process_environment(monkeypatch):
    seen = {}

    def django_application(environ, start_response):
        seen.update(environ)
        return [b""]

    monkeypatch.setattr(wsgi, "django_application", django_application)
    process = wsgi.ProcessEnvironment({"SECRET_KEY": "s3cret"})
    monkeypatch.setattr(wsgi, "_process_environment", lambda: process)
    wsgi.application({"SECRET_KEY": "s3cret", "PATH_INFO": "/healthz"}, lambda *args: None)
    assert seen == {"PATH_INFO": "/healthz"}
