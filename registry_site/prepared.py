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
from django.db.models import ForeignKey, Model, QuerySet
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
        compiled = self._compiled_for(connection, using, shape)
        if compiled is None:
            return list(self.build(shape, **values))
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, self._bind(compiled, connection, values))
            rows = cursor.fetchall()
        return [_instance(compiled, list(row), connection, using) for row in rows]

    def bound_sql(
        self, shape: tuple, using: str = "default", **values: Any
    ) -> tuple[str, list[Any]] | None:
        """The SQL and parameters of this read, for a statement to embed as a subquery;
        None where it is not compiled (SQLite, an unpreparable shape)."""
        connection = connections[using]
        compiled = self._compiled_for(connection, using, shape)
        if compiled is None:
            return None
        return compiled.sql, self._bind(compiled, connection, values)

    def _compiled_for(self, connection: Any, using: str, shape: tuple) -> "_Compiled | None":
        if connection.vendor != "postgresql":
            # The embedded default (SQLite) binds some values differently: plain ORM there.
            return None
        compiled = self._compiled.get((using, shape))
        if compiled is None and (using, shape) not in self._plain:
            try:
                compiled = self._compile(using, shape)
            except UnpreparableQuery:
                # A shape that does not use every value (a superuser's ignores user_id) or
                # transforms one: it runs as a plain queryset, every time.
                self._plain.add((using, shape))
        return compiled

    @staticmethod
    def _bind(compiled: "_Compiled", connection: Any, values: dict[str, Any]) -> list[Any]:
        params = list(compiled.params)
        for position, (name, kind) in compiled.slots.items():
            value = _adapt(values[name], connection)
            params[position] = value if type(value) is kind else kind(value)
        return params

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
        # incl. OneToOneField; `insert_together` looks only at these for parents
        self.foreign_keys = {field for field in self.fields if isinstance(field, ForeignKey)}
        # rows (0: UNNEST) → statement; (before, taken) → insert_after's statement
        self._sql: dict[Any, str] = {}

    def insert(
        self, objs: list[Model], using: str = "default", now: datetime | None = None
    ) -> list[Model]:
        """Insert `objs` in one statement. Their auto_now(_add) fields all get `now` (one
        moment for the whole call; the current time if not given)."""
        if not objs:
            return objs
        self.stamp(objs, now or timezone.now())
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

    def insert_after(
        self,
        obj: Model,
        before: str,
        before_params: list[Any],
        taken: dict[str, str],
        using: str = "default",
        now: datetime | None = None,
    ) -> bool:
        """Run `before` (a statement with RETURNING, e.g. an UPDATE that takes a number) and
        insert `obj` with the fields of `taken` ({attname: returned column}) from its row,
        in one statement. False, and nothing inserted, when `before` returns no row. On
        SQLite: two statements."""
        self.stamp([obj], now or timezone.now())
        connection = connections[using]
        with connection.cursor() as cursor:
            if connection.vendor != "postgresql":
                cursor.execute(before, before_params)
                row = cursor.fetchone()
                if row is None:
                    return False
                names = [column[0] for column in cursor.description]
                for attname, column in taken.items():
                    setattr(obj, attname, row[names.index(column)])
                self.insert([obj], using=using, now=now)
                return True
            shape = (before, tuple(taken.items()))
            sql = self._sql.get(shape) or self._compile_after(connection, before, taken)
            values = [
                field.get_db_prep_save(getattr(obj, field.attname), connection)
                for field in self.fields
                if field.attname not in taken
            ]
            cursor.execute(sql, [*before_params, *values])
            row = cursor.fetchone()
        if row is None:
            return False
        obj.pk, *returned = row
        for attname, value in zip(taken, returned, strict=True):
            setattr(obj, attname, value)
        obj._state.adding, obj._state.db = False, using
        return True

    def _compile_after(self, connection: Any, before: str, taken: dict[str, str]) -> str:
        quote = connection.ops.quote_name
        columns = ", ".join(quote(field.column) for field in self.fields)
        values = ", ".join(
            f"before.{quote(taken[field.attname])}" if field.attname in taken else "%s"
            for field in self.fields
        )
        returned = ", ".join(quote(self.model._meta.get_field(attname).column) for attname in taken)
        pk = quote(self.model._meta.pk.column)
        sql = (
            f"WITH before AS ({before}) INSERT INTO {quote(self.model._meta.db_table)}"  # noqa: S608
            f" ({columns}) SELECT {values} FROM before RETURNING {pk}, {returned}"
        )
        self._sql[(before, tuple(taken.items()))] = sql
        return sql

    def stamp(self, objs: list[Model], now: datetime) -> None:
        for obj in objs:
            for field in self.stamped:
                setattr(obj, field.attname, now)

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


@dataclass(frozen=True)
class InsertStep:
    """The rows one `PreparedInsert` adds as part of `insert_together`.

    A row may point (by a foreign key set to the instance) at a row of an earlier step. When
    that step inserts several rows, `key` names a column whose value tells them apart.
    """

    insert: PreparedInsert
    objs: list[Model]
    key: str | None = None


def insert_together(*steps: InsertStep, using: str = "default") -> None:
    """Insert rows of several models, children pointing at parents inserted alongside, in
    one statement (one round trip): each step is a data-modifying CTE, and a foreign key to
    an earlier step's row reads that row's new key from the CTE's RETURNING. Primary keys
    come back as with `PreparedInsert.insert`; every auto_now(_add) field gets one moment.
    On SQLite the steps run one after the other."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        insert_one_by_one(steps, using)
        return
    plan = TogetherPlan(steps, connection)
    sql = _together_sql.get(plan.shape) or _compile_together(plan)
    with connection.cursor() as cursor:
        cursor.execute(sql, plan.params)
        plan.assign_keys(cursor.fetchall(), using)


def insert_one_by_one(steps: tuple[InsertStep, ...], using: str = "default") -> None:
    """`insert_together` where the database cannot chain data-modifying CTEs (SQLite)."""
    now = timezone.now()
    for step in steps:
        for obj in step.objs:
            obj._prepare_related_fields_for_save(operation_name="insert_together")
        step.insert.insert(step.objs, using=using, now=now)


class TogetherPlan:
    """The CTEs of `insert_together` for these steps (PostgreSQL), for a statement that may
    do more with the new rows (see `apps.audit.services.insert_and_record`).

    `shape` identifies the SQL (cache it by that); `params` are its parameters, in order;
    `ctes()` and `selects()` are the statement's parts (`sN AS (…)` and `SELECT N, key FROM
    sN`); `key_of(obj)` is an SQL expression for the new key of a row inserted here, and
    `assign_keys(rows)` sets the keys from the rows the selects returned. `connection` is a
    database wrapper (`connections[alias]`), not `django.db.connection`: that proxy looks the
    wrapper up on every attribute read, several times for each value bound.
    """

    def __init__(self, steps: tuple[InsertStep, ...], connection: Any) -> None:
        now = timezone.now()
        for step in steps:
            step.insert.stamp(step.objs, now)
        self.steps = steps
        self.connection = connection
        self.owner = {id(obj): index for index, step in enumerate(steps) for obj in step.objs}
        self.links: list[tuple[Model, str, Model]] = []
        self.shape, self.params = _together_shape(steps, self.owner, self.links, connection)

    gate = "s0"  # the first step's CTE: the rows everything else hangs on

    def inserts(self, obj: Any) -> bool:
        return id(obj) in self.owner

    def step_of(self, obj: Any) -> int | None:
        return self.owner.get(id(obj))

    def key_of(self, obj: Model) -> tuple[str, list[Any]]:
        """An SQL expression for `obj`'s new key, and its parameters."""
        index = self.owner[id(obj)]
        return _together_value(index, self.steps, self.connection.ops.quote_name), (
            [] if self.steps[index].key is None else [getattr(obj, self.steps[index].key)]
        )

    def ctes(self) -> list[str]:
        return self._parts()[0]

    def selects(self, padding: int = 0) -> list[str]:
        """`SELECT N, key FROM sN` per step that returns keys, with `padding` NULL columns
        after the key (to share a UNION with wider rows)."""
        return [select.format(pad=", NULL" * padding) for select in self._parts()[1]]

    def _parts(self) -> tuple[list[str], list[str]]:
        quote = self.connection.ops.quote_name
        ctes, selects = [], []
        for index, (step, (*_, rows)) in enumerate(zip(self.steps, self.shape, strict=True)):
            model = step.insert.model
            pk = quote(model._meta.pk.column)
            values = ", ".join(
                "(" + ", ".join(_together_value(marker, self.steps, quote) for marker in row) + ")"
                for row in rows
            )
            columns = ", ".join(quote(field.column) for field in step.insert.fields)
            returning = [pk] + ([quote(step.key)] if step.key else [])
            sql = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES {values}"  # noqa: S608 (names from the models)
            if step.insert.ignore_conflicts:
                sql += " ON CONFLICT DO NOTHING"
            sql += " RETURNING " + ", ".join(returning)
            ctes.append(f"s{index} AS ({sql})")
            if not step.insert.ignore_conflicts:
                selects.append(f"SELECT {index}, {pk}{{pad}} FROM s{index}")  # noqa: S608
        return ctes, selects

    def assign_keys(self, returned: list[tuple], using: str = "default") -> None:
        """Set the new keys from (step index, key) rows, each step's in its VALUES order,
        and copy each parent's key to its children, as save() would."""
        keys: dict[int, list[Any]] = {}
        for index, key in returned:
            keys.setdefault(index, []).append(key)
        for index, step in enumerate(self.steps):
            for obj, key in zip(step.objs, keys.get(index, []), strict=False):
                obj.pk = key
            for obj in step.objs:
                obj._state.adding, obj._state.db = False, using
        for child, attname, parent in self.links:
            setattr(child, attname, parent.pk)


class AfterPlan:
    """One row inserted only if a statement before it returns a row, as CTEs (PostgreSQL):
    `before AS (<before>), s0 AS (INSERT … SELECT <values> FROM before RETURNING key)`.
    E.g. a version inserted only if the UPDATE of its model's counter found the model as
    expected. The interface of `TogetherPlan` (a wrapper as `connection`, as there), for
    `apps.audit.services.record_inserted`.
    """

    gate = "s0"

    def __init__(
        self,
        insert: PreparedInsert,
        obj: Model,
        before: str,
        before_params: list[Any],
        connection: Any,
        now: datetime | None = None,
    ) -> None:
        insert.stamp([obj], now or timezone.now())
        self.insert, self.obj, self.before, self.connection = insert, obj, before, connection
        self.shape = ("after", insert.model._meta.label, before)
        self.params = [
            *before_params,
            *(
                field.get_db_prep_save(getattr(obj, field.attname), connection)
                for field in insert.fields
            ),
        ]

    def inserts(self, obj: Any) -> bool:
        return obj is self.obj

    def step_of(self, obj: Any) -> int | None:
        return 0 if obj is self.obj else None

    def key_of(self, obj: Model) -> tuple[str, list[Any]]:
        return f"(SELECT {self._pk} FROM s0)", []  # noqa: S608 (our names)

    @property
    def _pk(self) -> str:
        return self.connection.ops.quote_name(self.insert.model._meta.pk.column)

    def ctes(self) -> list[str]:
        quote = self.connection.ops.quote_name
        columns = ", ".join(quote(field.column) for field in self.insert.fields)
        values = ", ".join(["%s"] * len(self.insert.fields))
        table = quote(self.insert.model._meta.db_table)
        return [
            f"before AS ({self.before})",
            f"s0 AS (INSERT INTO {table} ({columns}) SELECT {values} FROM before"  # noqa: S608
            f" RETURNING {self._pk})",
        ]

    def selects(self, padding: int = 0) -> list[str]:
        return [f"SELECT 0, {self._pk}{', NULL' * padding} FROM s0"]  # noqa: S608 (our names)

    def assign_keys(self, returned: list[tuple], using: str = "default") -> None:
        for _, key in returned:
            self.obj.pk = key
            self.obj._state.adding, self.obj._state.db = False, using


# Per PreparedInsert field of each row: None (a plain value) or the index of the step whose
# new key it takes (matched on that step's key column when it has several rows).
_together_sql: dict[tuple, str] = {}


def _together_shape(
    steps: tuple[InsertStep, ...],
    owner: dict[int, int],
    links: list[tuple[Model, str, Model]],
    connection: Any,
) -> tuple[tuple, list[Any]]:
    """The statement's shape and parameters; `links` gets (child, attname, parent) for each
    foreign key that points at a row inserted alongside."""
    shape, params = [], []
    for step in steps:
        rows = []
        foreign_keys = step.insert.foreign_keys
        for obj in step.objs:
            markers = []
            for field in step.insert.fields:
                parent = _inserted_parent(obj, field, owner) if field in foreign_keys else None
                if parent is None:
                    markers.append(None)
                    params.append(field.get_db_prep_save(getattr(obj, field.attname), connection))
                    continue
                index, parent_obj = parent
                links.append((obj, field.attname, parent_obj))
                markers.append(index)
                key = steps[index].key
                if key is not None:
                    params.append(getattr(parent_obj, key))
            rows.append(tuple(markers))
        insert = step.insert
        shape.append((insert.model._meta.label, insert.ignore_conflicts, step.key, tuple(rows)))
    return tuple(shape), params


def _inserted_parent(obj: Model, field: Any, owner: dict[int, int]) -> tuple[int, Model] | None:
    if not field.is_cached(obj):
        return None
    parent = field.get_cached_value(obj)
    index = owner.get(id(parent))
    return None if index is None else (index, parent)


def _compile_together(plan: TogetherPlan) -> str:
    statement = "WITH " + ", ".join(plan.ctes()) + " " + " UNION ALL ".join(plan.selects())
    _together_sql[plan.shape] = statement
    return statement


def _together_value(marker: int | None, steps: tuple[InsertStep, ...], quote: Any) -> str:
    if marker is None:
        return "%s"
    parent = steps[marker]
    pk = quote(parent.insert.model._meta.pk.column)
    if parent.key is None:
        return f"(SELECT {pk} FROM s{marker})"  # noqa: S608 (our names)
    return f"(SELECT {pk} FROM s{marker} WHERE {quote(parent.key)} = %s)"  # noqa: S608
