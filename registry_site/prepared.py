"""Hot single-row reads compiled to SQL once, instead of on every request.

Building and compiling a queryset with a few subqueries costs milliseconds of Python on every
call, several times what PostgreSQL takes to answer it. A `Prepared` read builds its queryset
once per process and shape, with sentinels standing for the per-call values, keeps the SQL
and the compiler's column layout, and afterwards only binds the new values and turns the row
into instances the way Django's own ModelIterable does (select_related objects and
annotations included). The SQL still comes from the ORM, so the access rules keep one
definition (`apps.registry.access`).

A shape is whatever changes the SQL besides the values (e.g. superuser or not, the action);
the caller names it. PostgreSQL only: on the embedded default (SQLite) the queryset simply
runs. Every sentinel must reach the SQL unchanged as a parameter: a shape where one does not
(a lookup that transforms its value, such as `iexact`; a value the shape does not use, such as
a superuser's id) is never compiled and runs as a plain queryset every time. A migrate (or a
test flush) recreates rows such as permissions whose ids a shape may have baked in, so
post_migrate forgets every prepared shape.
"""

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators
from django.db.models.signals import post_migrate
from django.utils import timezone

_sentinel_numbers = itertools.count(1)


def sentinel_int() -> int:
    """An integer for a sentinel (unique per call; within a 32-bit column's range, which
    Django checks at compile time). Only constants of the same query must differ from it."""
    return 2_000_000_000 + next(_sentinel_numbers)


def sentinel_datetime() -> datetime:
    """A moment for a sentinel, unique per call."""
    return datetime(1901, 1, 1, tzinfo=UTC) + timedelta(microseconds=next(_sentinel_numbers))


def sentinel_text() -> str:
    """A string no real value takes (control characters around a unique number)."""
    return f"\x1fprepared-{next(_sentinel_numbers)}\x1f"


class UnpreparableQuery(ValueError):
    """A value does not reach the SQL as a parameter unchanged (unused, or transformed)."""


@dataclass(frozen=True)
class _Compiled:
    sql: str
    params: tuple[Any, ...]
    slots: dict[int, tuple[str, type]]  # parameter position → (value name, its type)
    model: type[Model]
    init_list: list[str]
    fields_start: int
    fields_end: int
    populators: list[Any]
    annotations: dict[str, int]
    converters: list[tuple[int, tuple[list[Callable], Any]]]


class Prepared:
    """One read: `build(**values)` returns the queryset; `one(shape, **values)` runs it."""

    def __init__(self, build: Callable[..., QuerySet], **sentinels: Any) -> None:
        self.build = build
        self.sentinels = sentinels  # name → the sentinel used while compiling
        self._compiled: dict[tuple, _Compiled] = {}
        self._plain: set[tuple] = set()
        self._lock = threading.Lock()
        _every.append(self)

    def one(self, shape: tuple, using: str = "default", **values: Any) -> Any:
        """The first row as an instance, or None. `values` has one entry per sentinel."""
        rows = self.all(shape, using, **values)
        return rows[0] if rows else None

    def all(self, shape: tuple, using: str = "default", **values: Any) -> list[Any]:
        """Every row as an instance. `values` has one entry per sentinel."""
        connection = connections[using]
        if connection.vendor != "postgresql":
            # The embedded default (SQLite) binds some values differently: plain ORM there.
            return list(self.build(shape, **values))
        compiled = self._compiled.get((using, shape))
        if compiled is None and (using, shape) not in self._plain:
            try:
                compiled = self._compile(using, shape)
            except UnpreparableQuery:
                # A shape that does not use every value (a superuser's ignores user_id) or
                # transforms one: it runs as a plain queryset, every time.
                self._plain.add((using, shape))
        if compiled is None:
            return list(self.build(shape, **values))
        params = list(compiled.params)
        for position, (name, kind) in compiled.slots.items():
            value = _adapt(values[name], connection)
            params[position] = value if type(value) is kind else kind(value)
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            rows = cursor.fetchall()
        return [_instance(compiled, list(row), connection, using) for row in rows]

    def _compile(self, using: str, shape: tuple) -> _Compiled:
        with self._lock:
            queryset = self.build(shape, **self.sentinels)
            compiler = queryset.query.get_compiler(using=using)
            sql, params = compiler.as_sql()
            # Drivers' typed wrappers count (psycopg's Int4 for an integer column): the value
            # bound later is wrapped the same way.
            connection = connections[using]
            slots = {
                position: (name, type(value))
                for position, value in enumerate(params)
                for name, sentinel in self.sentinels.items()
                if isinstance(value, type(adapted := _adapt(sentinel, connection)))
                and value == adapted
            }
            missing = set(self.sentinels) - {name for name, _ in slots.values()}
            if missing:
                raise UnpreparableQuery(f"Values {sorted(missing)} do not reach the SQL unchanged.")
            select, klass_info = compiler.select, compiler.klass_info
            fields = klass_info["select_fields"]
            converters = compiler.get_converters([s[0] for s in select[: compiler.col_count]])
            compiled = _Compiled(
                sql=sql,
                params=tuple(params),
                slots=slots,
                model=klass_info["model"],
                init_list=[f[0].target.attname for f in select[fields[0] : fields[-1] + 1]],
                fields_start=fields[0],
                fields_end=fields[-1] + 1,
                populators=get_related_populators(klass_info, select, using),
                annotations=dict(compiler.annotation_col_map or {}),
                converters=list(converters.items()),
            )
            self._compiled[(using, shape)] = compiled
            return compiled

    def forget(self) -> None:
        with self._lock:
            self._compiled.clear()
            self._plain.clear()


def _adapt(value: Any, connection: Any) -> Any:
    """A value as the backend binds it: SQLite gets datetimes as text, PostgreSQL as is."""
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    return value


def _instance(compiled: _Compiled, row: list[Any], connection: Any, using: str) -> Model:
    """The row as ModelIterable would build it: converters, instance, related, annotations."""
    for position, (functions, expression) in compiled.converters:
        value = row[position]
        for function in functions:
            value = function(value, expression, connection)
        row[position] = value
    instance = compiled.model.from_db(
        using, compiled.init_list, row[compiled.fields_start : compiled.fields_end]
    )
    for populator in compiled.populators:
        populator.populate(row, instance)
    for name, position in compiled.annotations.items():
        setattr(instance, name, row[position])
    return instance


_every: list[Prepared] = []


def _forget_all(**kwargs: Any) -> None:
    for prepared in _every:
        prepared.forget()


post_migrate.connect(_forget_all, dispatch_uid="registry_site.prepared.forget")


class PreparedInsert:
    """Rows of one model inserted by a statement compiled once per process.

    Each call only stamps the auto_now(_add) fields, runs each field's `get_db_prep_save` and
    binds the values to a statement kept per number of rows: `VALUES (…), (…)` for a few rows
    (scalars are cheaper to send than arrays), PostgreSQL's UNNEST form beyond (one text for
    any number of rows, as Django's bulk_create does). Primary keys come back by RETURNING.
    As with bulk_create, no signals are sent and values must be plain values, not
    expressions. On SQLite this is bulk_create.
    """

    MAX_VALUES_ROWS = 8

    def __init__(self, model: type[Model], *, ignore_conflicts: bool = False) -> None:
        self.model = model
        self.ignore_conflicts = ignore_conflicts
        self.fields = [
            field
            for field in model._meta.concrete_fields
            if not (field.primary_key and field.db_returning) and not field.generated
        ]
        self.stamped = [
            field
            for field in self.fields
            if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)
        ]
        self._sql: dict[int, str] = {}  # rows (0: UNNEST) → statement

    def insert(
        self, objs: list[Model], using: str = "default", now: datetime | None = None
    ) -> list[Model]:
        """Insert `objs` in one statement. Their auto_now(_add) fields all get `now` (one
        moment for the whole call; the current time if not given)."""
        if not objs:
            return objs
        now = now or timezone.now()
        for obj in objs:
            for field in self.stamped:
                setattr(obj, field.attname, now)
        connection = connections[using]
        if connection.vendor != "postgresql":
            manager = self.model._base_manager.db_manager(using)
            return manager.bulk_create(objs, ignore_conflicts=self.ignore_conflicts)
        rows = [
            [
                field.get_db_prep_save(getattr(obj, field.attname), connection)
                for field in self.fields
            ]
            for obj in objs
        ]
        if len(rows) <= self.MAX_VALUES_ROWS:
            shape, params = len(rows), [value for row in rows for value in row]
        else:
            shape, params = 0, [list(column) for column in zip(*rows, strict=True)]
        sql = self._sql.get(shape) or self._compile(connection, shape)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            keys = [] if self.ignore_conflicts else cursor.fetchall()
        for obj, (key,) in zip(objs, keys, strict=False):
            obj.pk = key
        for obj in objs:
            obj._state.adding, obj._state.db = False, using
        return objs

    def _compile(self, connection: Any, rows: int) -> str:
        quote = connection.ops.quote_name
        columns = ", ".join(quote(field.column) for field in self.fields)
        if rows:
            row = "(" + ", ".join(["%s"] * len(self.fields)) + ")"
            source = "VALUES " + ", ".join([row] * rows)
        else:
            # Parameters (such as a varchar's length) dropped: varchar[] keeps values whole.
            arrays = ", ".join(
                f"(%s)::{field.db_type(connection).split('(')[0]}[]" for field in self.fields
            )
            source = f"SELECT * FROM UNNEST({arrays})"  # noqa: S608 (names from the model)
        sql = f"INSERT INTO {quote(self.model._meta.db_table)} ({columns}) {source}"
        if self.ignore_conflicts:
            sql += " ON CONFLICT DO NOTHING"
        else:
            sql += f" RETURNING {quote(self.model._meta.pk.column)}"
        self._sql[rows] = sql
        return sql
