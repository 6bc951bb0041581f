"""registry_site.prepared: INSERTs compiled once, and query shapes that stay cheap when
PostgreSQL runs them as prepared statements with a generic plan."""

import re
from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from psycopg.sql import Literal

from apps.approvals.models import Stage, StagePolicy
from apps.mlflow_compat import selectors
from apps.registry.access import _owner_permission_ids
from apps.registry.models import (
    ModelVersion,
    RegisteredModel,
    RegisteredModelUserObjectPermission,
)
from apps.registry.services import model_create
from registry_site.prepared import InsertStep, PreparedInsert, insert_together

pytestmark = pytest.mark.django_db

STAGES = PreparedInsert(Stage)
MODELS = PreparedInsert(RegisteredModel)
GRANTS = PreparedInsert(RegisteredModelUserObjectPermission, ignore_conflicts=True)
POLICIES = PreparedInsert(StagePolicy)


def test_rows_get_their_keys_in_order_and_are_stored_as_given(alice):
    model = model_create(actor=alice, name="fraud")
    for count in (1, 3, PreparedInsert.MAX_VALUES_ROWS + 4):  # VALUES, then UNNEST
        stages = [Stage(model=model, name=f"s{count}-{i}", position=i) for i in range(count)]
        assert STAGES.insert(stages) is stages
        stored = dict(Stage.objects.filter(model=model).values_list("pk", "name"))
        assert [stored[stage.pk] for stage in stages] == [stage.name for stage in stages]
        assert all(not stage._state.adding and stage._state.db == "default" for stage in stages)
    assert Stage.objects.get(model=model, name="s3-2").position == 2


def test_one_statement_per_call_and_one_text_per_row_count(alice):
    model = model_create(actor=alice, name="fraud")
    inserter = PreparedInsert(Stage)
    for batch in range(3):
        with CaptureQueriesContext(connection) as queries:
            inserter.insert([Stage(model=model, name=f"b{batch}-{i}") for i in range(2)])
        assert len(queries) == 1
    assert list(inserter._sql) == [2]  # compiled once; later calls only bind values


def test_auto_now_fields_share_one_moment(alice):
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    model = RegisteredModel(name="churn", name_key="churn", created_by=alice)
    MODELS.insert([model], now=moment)
    stored = RegisteredModel.objects.get(pk=model.pk)
    assert stored.created_at == stored.updated_at == model.created_at == moment


def test_a_violated_constraint_is_djangos_integrity_error_and_stores_nothing(alice):
    model = model_create(actor=alice, name="fraud")
    before = Stage.objects.count()
    with pytest.raises(IntegrityError), transaction.atomic():
        STAGES.insert([Stage(model=model, name="canary"), Stage(model=model, name="canary")])
    assert Stage.objects.count() == before


def test_ignore_conflicts_keeps_existing_rows(alice, outsider):
    model = model_create(actor=alice, name="fraud")  # alice holds the owner grants already
    grants = [
        RegisteredModelUserObjectPermission(
            user=user, content_object=model, permission_id=permission_id
        )
        for user in (alice, outsider)
        for permission_id in _owner_permission_ids()
    ]
    GRANTS.insert(grants)
    held = RegisteredModelUserObjectPermission.objects.filter(content_object=model)
    assert held.filter(user=alice).count() == held.filter(user=outsider).count() == 3


def test_insert_together_links_children_to_parents_in_one_statement(alice):
    model = RegisteredModel(name="fraud", name_key="fraud", created_by=alice)
    stages = [Stage(model=model, name=name, position=i) for i, name in enumerate(["a", "b"])]
    policies = [
        StagePolicy(stage=stage, required_approvals=i + 1) for i, stage in enumerate(stages)
    ]
    grants = [
        RegisteredModelUserObjectPermission(user=alice, content_object=model, permission_id=pk)
        for pk in _owner_permission_ids()
    ]
    steps = [
        InsertStep(MODELS, [model]),
        InsertStep(GRANTS, grants),
        InsertStep(STAGES, stages, key="name"),  # several rows: children match on the name
        InsertStep(POLICIES, policies),
    ]
    with CaptureQueriesContext(connection) as queries:
        insert_together(*steps)
    assert len(queries) == 1
    assert RegisteredModel.objects.get(pk=model.pk).name == "fraud"
    stored = {stage.name: stage for stage in Stage.objects.filter(model=model)}
    assert {name: stage.pk for name, stage in stored.items()} == {s.name: s.pk for s in stages}
    assert {
        p.stage_id: p.required_approvals for p in StagePolicy.objects.filter(stage__model=model)
    } == {
        stages[0].pk: 1,
        stages[1].pk: 2,
    }
    assert [policy.stage_id for policy in policies] == [stage.pk for stage in stages]
    assert RegisteredModelUserObjectPermission.objects.filter(content_object=model).count() == 3
    assert model.created_at == model.updated_at is not None  # stamped, one moment


def test_insert_together_is_all_or_nothing(alice):
    model_create(actor=alice, name="fraud")
    copy = RegisteredModel(name="fraud", name_key="fraud", created_by=alice)
    stages = [Stage(model=copy, name="canary", position=0)]
    before = (RegisteredModel.objects.count(), Stage.objects.count())
    with pytest.raises(IntegrityError), transaction.atomic():
        insert_together(InsertStep(MODELS, [copy]), InsertStep(STAGES, stages))
    assert (RegisteredModel.objects.count(), Stage.objects.count()) == before


def test_insert_after_takes_a_value_from_the_statement_before(alice):
    model = model_create(actor=alice, name="fraud")
    table = connection.ops.quote_name(RegisteredModel._meta.db_table)
    bump = f"UPDATE {table} SET last_version_number = last_version_number + 1"
    bump += " WHERE id = %s AND archived_at IS NULL RETURNING last_version_number"
    versions = PreparedInsert(ModelVersion)
    taken = {"number": "last_version_number"}
    for expected in (1, 2):
        version = ModelVersion(model=model, created_by=alice)
        with CaptureQueriesContext(connection) as queries:
            assert versions.insert_after(version, bump, [model.pk], taken)
        assert len(queries) == 1
        assert (version.number, ModelVersion.objects.get(pk=version.pk).number) == (expected,) * 2
    RegisteredModel.objects.filter(pk=model.pk).update(archived_at=datetime.now(UTC))
    refused = ModelVersion(model=model, created_by=alice)
    assert not versions.insert_after(refused, bump, [model.pk], taken)
    assert refused.pk is None and model.versions.count() == 2


def _generic_plan(queryset) -> str:
    """EXPLAIN ANALYZE of `queryset` as a prepared statement forced onto its generic plan
    (what PostgreSQL may pick after five runs, not knowing the bound values)."""
    sql, params = queryset.query.get_compiler(using="default").as_sql()
    numbers = iter(range(1, len(params) + 1))
    statement = re.sub(r"%s", lambda _: f"${next(numbers)}", sql)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE generic_probe AS {statement}")
        values = ", ".join(Literal(value).as_string(connection.connection) for value in params)
        cursor.execute(f"EXPLAIN ANALYZE EXECUTE generic_probe({values})")
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE generic_probe")
    return plan


def test_a_model_lookup_probes_grants_and_stages_per_row_under_a_generic_plan(alice):
    """Before, the generic plan hashed every grant the caller holds and every stage of every
    model on each lookup: a get that grew with the registry."""
    # Enough rows that scanning every stage or grant is clearly the wrong plan.
    for index in range(300):
        model_create(actor=alice, name=f"model-{index}")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    shape = (False, "edit", True)
    queryset = selectors._model_query(shape, user_id=alice.pk, name_key="model-7", name="model-7")
    plan = _generic_plan(queryset)
    assert "rows=1 loops=1" in plan  # it found the model
    assert "hashed SubPlan" not in plan
    assert not re.search(r"Seq Scan on (approvals_stage|registry_registeredmodeluser)", plan)
