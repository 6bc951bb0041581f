"""The production web server's settings (registry_site.serve) and the WSGI entry point."""

import logging

import pytest
from granian.constants import Interfaces
from granian.log import LogLevels

from apps.approvals.logging import RedactReviewLinks
from registry_site import serve, wsgi
from registry_site.serve import ConfigError, server_options


def test_defaults_serve_regent_over_wsgi_on_port_8000(monkeypatch):
    monkeypatch.setattr(serve, "_cpus", lambda: 2)
    options = server_options({})
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
def test_one_process_per_two_cpus_between_one_and_four(monkeypatch, cpus, workers):
    monkeypatch.setattr(serve, "_cpus", lambda: cpus)
    assert server_options({})["workers"] == workers


def test_every_setting_comes_from_its_variable():
    options = server_options(
        {
            "PORT": "9000",
            "WEB_HOST": "::",
            "WEB_WORKERS": "3",
            "WEB_CONCURRENCY": "7",
            "WEB_THREADS": "16",
            "WEB_BACKLOG": "2048",
            "WEB_GRACEFUL_TIMEOUT": "5",
            "WEB_MAX_RSS_MIB": "512",
            "WEB_ACCESS_LOG": "1",
            "WEB_LOG_LEVEL": "DEBUG",
        }
    )
    assert (options["address"], options["port"]) == ("::", 9000)
    assert (options["workers"], options["blocking_threads"], options["backlog"]) == (3, 16, 2048)
    assert (options["workers_kill_timeout"], options["workers_max_rss"]) == (5, 512)
    assert options["log_access"] is True
    assert options["log_level"] is LogLevels.debug


def test_web_concurrency_is_the_fallback_for_workers():
    assert server_options({"WEB_CONCURRENCY": "3"})["workers"] == 3


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("WEB_THREADS", "0"),
        ("WEB_THREADS", "eight"),
        ("WEB_WORKERS", "-1"),
        ("PORT", "80a"),
        ("WEB_BACKLOG", "10"),
        ("WEB_MAX_RSS_MIB", "1.5"),
        ("WEB_ACCESS_LOG", "maybe"),
        ("WEB_LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(name, raw):
    with pytest.raises(ConfigError, match=name):
        server_options({name: raw})


def test_main_stops_with_one_line_and_starts_nothing_on_a_bad_value(monkeypatch):
    monkeypatch.setenv("WEB_THREADS", "none")
    monkeypatch.setattr("granian.Granian", pytest.fail)  # must not be reached
    with pytest.raises(SystemExit, match="regent-web: WEB_THREADS must be a whole number"):
        serve.main()


def test_granian_logs_through_the_review_link_redaction():
    config = server_options({})["log_dictconfig"]
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
