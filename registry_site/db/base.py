"""Django's PostgreSQL backend, with a health check that sends nothing.

With persistent connections Django checks, before a request reuses one, that the server
still holds it (`CONN_HEALTH_CHECKS`): its own check runs `SELECT 1`, one round trip on
every request. A server that ends a session (a restart, `pg_terminate_backend`, an idle
timeout) sends an error and closes the socket, so an idle connection whose socket has
become readable has, most likely, been dropped: that is checked locally, and only then is
the input read to tell a dropped session from a harmless notice. A connection lost without
a word (a silent network partition) is not caught here; it fails its first query, and
Django discards it at the end of that request, as without health checks.

With server-side binding (`DATABASE_PREPARED_STATEMENTS`), cursors also remember how they
converted Regent's long statements; see `StatementQuery`.
"""

import select
from functools import lru_cache
from typing import Any

from django.db.backends.postgresql import base
from psycopg import Error, pq
from psycopg._queries import (
    MAX_CACHED_STATEMENT_LENGTH,
    MAX_CACHED_STATEMENT_PARAMS,
    PostgresQuery,
    _query2pg_nocache,
)

# Regent's compiled statements (registry_site.prepared, the audit append) are a few dozen
# texts per process; 256 holds them all beside any long ORM query that comes and goes.
_long_query2pg = lru_cache(maxsize=256)(_query2pg_nocache)


class StatementQuery(PostgresQuery):
    """psycopg remembers how it turned a query's %s placeholders into $1, $2… only for
    queries under 4 KiB and 50 parameters, and converts any longer one again on each run.
    Regent's hot writes are such statements — compiled once, run on every call (a new
    model with its grants, stages and audit event is ~5 KiB and ~60 parameters) — and the
    conversion cost ~0.1 ms each time. This keeps the long ones too, in a cache of its
    own, so ORM queries of one-off lengths cannot push out psycopg's own entries."""

    def convert(self, query: Any, vars: Any) -> None:
        if vars is None or not isinstance(query, str | bytes):
            return super().convert(query, vars)
        if len(query) <= MAX_CACHED_STATEMENT_LENGTH and len(vars) <= MAX_CACHED_STATEMENT_PARAMS:
            return super().convert(query, vars)
        query = self._ensure_bytes(query)
        converted = _long_query2pg(query, self._tx.encoding)
        self.query, self._want_formats, self._order, self._parts = converted
        self.dump(vars)
        return None


class ServerBindingCursor(base.ServerBindingCursor):
    _query_cls = StatementQuery


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        if params.get("cursor_factory") is base.ServerBindingCursor:
            params["cursor_factory"] = ServerBindingCursor
        return params

    def is_usable(self) -> bool:
        connection = self.connection
        if connection is None or connection.closed or connection.broken:
            return False
        pgconn = connection.pgconn
        if pgconn.transaction_status != pq.TransactionStatus.IDLE:
            return super().is_usable()  # mid-transaction: nothing to read ahead of a query
        try:
            poller = select.poll()
            poller.register(pgconn.socket, select.POLLIN)
            if not poller.poll(0):
                return True
            pgconn.consume_input()  # a notice or notification, or the server's goodbye
        except (OSError, ValueError, Error):
            return False
        return pgconn.status == pq.ConnStatus.OK
