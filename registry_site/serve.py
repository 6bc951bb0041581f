"""Regent's production web server: `python -m registry_site.serve` (granian, WSGI).

| variable | default | meaning |
|---|---|---|
| `PORT` | `8000` | the port to listen on |
| `WEB_HOST` | `0.0.0.0` | the address to listen on (`::` for IPv6 too) |
| `WEB_WORKERS` (or `WEB_CONCURRENCY`) | CPUs ÷ 2, at least 1, at most 4 | processes |
| `WEB_THREADS` | `8` | threads per process running Django (WSGI is blocking) |
| `WEB_BACKLOG` | `1024` | connections the kernel queues per process |
| `WEB_GRACEFUL_TIMEOUT` | `30` | seconds a stopping process may finish its requests |
| `WEB_MAX_RSS_MIB` | off | restart a process that stays above this many MiB resident |
| `WEB_ACCESS_LOG` | off | `1`: log every request line (review links redacted) |
| `WEB_LOG_LEVEL` | `info` | granian's own log |

- **granian** serves HTTP/1.1 and HTTP/2 in Rust (hyper) and hands each request to Django
  in one of `WEB_THREADS` Python threads. A request on a new connection costs ~0.2 ms of
  server time, where gunicorn's gthread worker took ~0.45 ms (parsing, a thread hand-off and
  a callback back to its main loop, all in Python): bench/mlflow_api.py, docs/MLFLOW.md.
- **Streaming**: request bodies reach Django as a stream (uploads of any size in constant
  memory, chunked ones too: granian sets `wsgi.input_terminated`) and streamed responses are
  sent as they are produced, with backpressure.
- **TCP_NODELAY**: granian sets it on its listening sockets and Linux copies it to every
  accepted connection (checked with strace), so a kept-alive connection has no
  Nagle/delayed-ACK stall (the stock MLflow client keeps connections open).
- **workers**: one process per two CPUs: a process runs Python on one core at a time (the
  GIL) while its threads wait on PostgreSQL, storage and clients, and a database on the
  same machine needs the other core. With PostgreSQL elsewhere, `WEB_WORKERS` = CPUs.
  More than one process on Linux wants kernel ≥ 5.14 and `net.ipv4.tcp_migrate_req=1`
  (granian's note: otherwise a restarting process can drop connections queued to it).
- **threads**: 8, because a long upload or download holds its thread for its whole length.
  They start on demand and stop after 10 idle minutes (granian's maximum), so a quiet
  site keeps few database connections.
- A process that dies is started again; `SIGTERM` stops taking connections and lets
  requests in flight finish for `WEB_GRACEFUL_TIMEOUT` seconds.
- The process environment never reaches the application as request data: see
  `registry_site.wsgi`.
"""

import os
from typing import Any

from granian.constants import Interfaces
from granian.log import LogLevels

from apps.approvals.logging import FILTER_CONFIG as REVIEW_LINK_FILTER
from registry_site.env import env_bool, env_int, env_str, stop_startup

TARGET = "registry_site.wsgi:application"
IDLE_THREAD_SECONDS = 600

# granian's loggers, through the same review-link redaction as Django's (settings.LOGGING).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": REVIEW_LINK_FILTER,
    "formatters": {
        "generic": {"format": "[%(levelname)s] %(message)s"},
        "access": {"format": "%(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "filters": ["redact_review_links"],
        },
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "access",
            "stream": "ext://sys.stdout",
            "filters": ["redact_review_links"],
        },
    },
    "loggers": {
        "_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "granian.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}


def _at_least(name: str, default: int, minimum: int = 1) -> int:
    value = env_int(name, default)
    if value < minimum:
        stop_startup(f"{name} must be at least {minimum}, not {value}.")
    return value


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _log_level() -> LogLevels:
    raw = (env_str("WEB_LOG_LEVEL") or "info").strip().lower()
    try:
        return LogLevels(raw)
    except ValueError:
        names = ", ".join(level.value for level in LogLevels)
        stop_startup(f"WEB_LOG_LEVEL must be one of {names}, not {raw!r}.")


def server_options() -> dict[str, Any]:
    """granian's settings for Regent, from the WEB_* variables (table above); a bad value
    stops start-up with one line naming it (registry_site.env)."""
    default_workers = min(max(_cpus() // 2, 1), 4)
    max_rss = _at_least("WEB_MAX_RSS_MIB", 0, minimum=0)
    return {
        "target": TARGET,
        "interface": Interfaces.WSGI,
        "address": (env_str("WEB_HOST") or "").strip() or "0.0.0.0",  # noqa: S104
        "port": _at_least("PORT", 8000),
        "workers": _at_least("WEB_WORKERS", _at_least("WEB_CONCURRENCY", default_workers)),
        "blocking_threads": _at_least("WEB_THREADS", 8),
        "blocking_threads_idle_timeout": IDLE_THREAD_SECONDS,
        "backlog": _at_least("WEB_BACKLOG", 1024, minimum=128),
        "websockets": False,
        "respawn_failed_workers": True,
        "workers_kill_timeout": _at_least("WEB_GRACEFUL_TIMEOUT", 30),
        "workers_max_rss": max_rss or None,
        "log_level": _log_level(),
        "log_dictconfig": LOGGING,
        "log_access": env_bool("WEB_ACCESS_LOG"),
    }


def main() -> None:
    from granian import Granian

    Granian(**server_options()).serve()


if __name__ == "__main__":
    main()
