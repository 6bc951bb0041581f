"""registry_site.db: the health check of a reused connection costs no round trip, and still
notices a session the server has ended."""

import time

import pytest
from django.db import connection, connections

pytestmark = pytest.mark.django_db


@pytest.fixture
def spare():
    """A second connection to the test database, outside the test's transaction."""
    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    yield wrapper
    wrapper.close()


def backend_pid(wrapper) -> int:
    with wrapper.connection.cursor() as cursor:
        return cursor.execute("SELECT pg_backend_pid()").fetchone()[0]


def last_state_change(pid: int):
    """When the backend `pid` last started or finished a statement, seen from the test's
    own connection."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT state_change FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone()[0]


def test_the_backend_is_ours_and_still_postgresql():
    assert connection.settings_dict["ENGINE"] == "registry_site.db"
    assert connection.vendor == "postgresql"


def test_an_idle_connection_is_usable_without_a_query(spare):
    pid = backend_pid(spare)
    before = last_state_change(pid)
    assert spare.is_usable()
    assert last_state_change(pid) == before  # nothing was sent


def test_a_notification_does_not_make_it_unusable(spare):
    with spare.connection.cursor() as cursor:
        cursor.execute("LISTEN regent_probe")
    other = connections.create_connection("default")
    try:
        other.ensure_connection()
        with other.connection.cursor() as cursor:
            cursor.execute("NOTIFY regent_probe, 'hello'")
        other.connection.commit()
    finally:
        other.close()
    time.sleep(0.2)  # the notification reaches the idle socket
    assert spare.is_usable()


def test_a_session_the_server_ended_is_noticed_and_replaced(spare):
    pid = backend_pid(spare)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 10
    while spare.is_usable():
        assert time.monotonic() < deadline, "a terminated session still looked usable"
        time.sleep(0.05)
    spare.health_check_enabled, spare.health_check_done = True, False
    spare.close_if_health_check_failed()  # what Django runs before a request reuses it
    assert spare.connection is None
    spare.ensure_connection()
    assert backend_pid(spare) != pid


def test_long_statements_are_converted_once_and_run_as_psycopg_would(monkeypatch):
    from psycopg._queries import PostgresQuery
    from psycopg.adapt import Transformer

    from registry_site.db import base

    base._long_query2pg.cache_clear()
    columns = ", ".join(f"%s AS c{n}" for n in range(60))  # > 50 parameters
    sql = f"SELECT {columns} -- {'x' * 4096}"  # and > 4 KiB
    values = list(range(60))

    with connection.cursor() as cursor:
        assert cursor.cursor._query_cls is base.StatementQuery
        for _ in range(3):
            cursor.execute(sql, values)
            assert list(cursor.fetchone()) == values
    info = base._long_query2pg.cache_info()
    assert (info.misses, info.hits) == (1, 2)

    transformer = Transformer(connection.connection)
    ours, psycopgs = base.StatementQuery(transformer), PostgresQuery(transformer)
    ours.convert(sql, values)
    psycopgs.convert(sql, values)
    assert ours.query == psycopgs.query and ours.params == psycopgs.params


def test_short_statements_stay_with_psycopgs_own_cache():
    from registry_site.db import base

    base._long_query2pg.cache_clear()
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s", [1])
    assert base._long_query2pg.cache_info().currsize == 0
