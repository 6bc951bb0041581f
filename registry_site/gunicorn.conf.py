"""Production gunicorn settings: `gunicorn -c registry_site/gunicorn.conf.py registry_site.wsgi`.

Every value can be overridden from the environment (below) or on the command line, which
wins over this file (e.g. `-b 127.0.0.1:8000`, `-w 1`).

| variable | default | meaning |
|---|---|---|
| `PORT` | `8000` | listen on `0.0.0.0:$PORT` |
| `GUNICORN_BIND` | `0.0.0.0:$PORT` | full bind address(es), comma-separated |
| `GUNICORN_WORKERS` (or `WEB_CONCURRENCY`) | CPUs ÷ 2, at least 1, at most 4 | processes |
| `GUNICORN_THREADS` | `8` | threads per process (gthread) |
| `GUNICORN_KEEPALIVE` | `65` | seconds an idle keep-alive connection stays open |
| `GUNICORN_TIMEOUT` | `120` | seconds before a silent worker is restarted (see below) |
| `GUNICORN_GRACEFUL_TIMEOUT` | `30` | seconds a stopping worker may finish requests |
| `GUNICORN_MAX_REQUESTS` | `0` (off) | restart a worker after this many requests (+ jitter) |
| `GUNICORN_ACCESS_LOG` | off | `-` for stdout, or a file |
| `GUNICORN_LOG_LEVEL` | `info` | gunicorn's own log |
| `GUNICORN_CONTROL_SOCKET` | off | a path: enable gunicorn's control socket (`gunicornc`) there |

- **workers**: each is a process of ~65-85 MiB resident, much of it shared with the master
  (preloaded). One process per two CPUs: a process runs Python on one core at a time (the
  GIL) while its threads wait on PostgreSQL, storage and clients, and a database on the same
  machine needs the other core. With PostgreSQL elsewhere, `GUNICORN_WORKERS` = CPUs.
- **threads**: 8, because a long upload or download holds its thread for its whole length.
- **gthread**: one process handles `threads` requests at once, and HTTP keep-alive works
  (the sync worker closes every connection). Idle kept-alive connections wait in the
  worker's poller, not in a thread. The stock MLflow client and `requests` keep
  connections open; keep-alive spares them a TCP handshake per call.
- **timeout**: a gthread worker's heartbeat comes from its main loop, not from the
  request threads, so a one-hour upload does not trip it; it only catches a stuck process.
- **TCP_NODELAY**: without it, a response written in two pieces (headers, then body) waits
  for the client's delayed ACK — ~40 ms per request on a kept-alive connection. gunicorn
  sets it on its TCP listeners and Linux copies it to each accepted socket; `post_worker_init`
  below also sets it on every accepted client socket, so it holds on any platform and for
  any listener.
- **preload_app**: Django and every app are imported once in the master and the workers
  fork from it: start-up pays the imports once, and the workers share those pages. Code
  changes need a restart (`HUP` reloads the configuration, not the preloaded code). No
  database connection is opened at import, so none is shared across the fork.
- **control socket**: gunicorn ≥ 25 opens one by default at `~/.gunicorn/gunicorn.ctl`,
  the same path for every instance the user runs (a second one takes it over), and a
  way to resize or stop the server. Off unless `GUNICORN_CONTROL_SOCKET` names a path.
"""

import contextlib
import os
import socket
from typing import Any

TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


bind = [
    address.strip()
    for address in (os.environ.get("GUNICORN_BIND") or f"0.0.0.0:{_int('PORT', 8000)}").split(",")
    if address.strip()
]
worker_class = "gthread"
workers = _int("GUNICORN_WORKERS", _int("WEB_CONCURRENCY", min(max(_cpus() // 2, 1), 4)))
threads = _int("GUNICORN_THREADS", 8)
keepalive = _int("GUNICORN_KEEPALIVE", 65)  # above the usual 60 s idle timeout of proxies
timeout = _int("GUNICORN_TIMEOUT", 120)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
max_requests = _int("GUNICORN_MAX_REQUESTS", 0)
max_requests_jitter = max_requests // 10
preload_app = True
# The heartbeat file on tmpfs: a slow or full disk must not make the master kill workers.
# (gunicorn makes it with mkstemp and unlinks it at once: nothing to guess or hijack.)
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
proc_name = "regent-web"
control_socket_disable = not os.environ.get("GUNICORN_CONTROL_SOCKET")
if not control_socket_disable:
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]


class _NoDelayListener:
    """A listening socket whose `accept()` sets TCP_NODELAY on the client socket it returns."""

    def __init__(self, listener: Any) -> None:
        self._listener = listener

    def accept(self) -> tuple[socket.socket, Any]:
        client, address = self._listener.accept()
        if client.family in TCP_FAMILIES:
            # OSError: the client has already gone; the worker notices on its first read.
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listener, name)


def post_worker_init(worker: Any) -> None:
    """In each worker, after the fork and before it accepts: NODELAY on accepted sockets.

    gunicorn's sync and gthread workers accept through `worker.accept(listener)`, which
    calls `listener.accept()`; the worker registers `self.accept` with its poller only in
    `run()`, after this hook, so the wrapper below is the one it uses.
    """
    accept = getattr(worker, "accept", None)
    if accept is None:  # another worker type: the listener's own NODELAY still applies
        return

    def accept_nodelay(listener: Any) -> Any:
        return accept(_NoDelayListener(listener))

    worker.accept = accept_nodelay
