"""Django's PostgreSQL backend, with a health check that sends nothing.

With persistent connections Django checks, before a request reuses one, that the server
still holds it (`CONN_HEALTH_CHECKS`): its own check runs `SELECT 1`, one round trip on
every request. A server that ends a session (a restart, `pg_terminate_backend`, an idle
timeout) sends an error and closes the socket, so an idle connection whose socket has
become readable has, most likely, been dropped: that is checked locally, and only then is
the input read to tell a dropped session from a harmless notice. A connection lost without
a word (a silent network partition) is not caught here; it fails its first query, and
Django discards it at the end of that request, as without health checks.
"""

import select

from django.db.backends.postgresql import base
from psycopg import Error, pq


class DatabaseWrapper(base.DatabaseWrapper):
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
