"""`insert_and_record`: rows and their audit events in one statement, which commits by itself
outside a transaction; `canonical_form_parts`, the form the database completes with a key."""

from datetime import UTC, datetime

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.approvals.models import Stage
from apps.audit.chain import GENESIS_HASH, canonical_form, canonical_form_parts
from apps.audit.models import AuditChainHead, AuditEvent, WebhookDelivery
from apps.audit.selectors import audit_verify_chain
from apps.audit.services import AuditEntry, audit_record, insert_and_record
from apps.registry.models import RegisteredModel
from apps.registry.services import model_create
from registry_site.api_errors import Conflict
from registry_site.prepared import InsertStep, PreparedInsert
from tests.audit.test_record_many import hook
from tests.conftest import run_concurrently

MODELS = PreparedInsert(RegisteredModel)
STAGES = PreparedInsert(Stage)


def fields(**overrides):
    return {
        "at": datetime(2026, 11, 26, 15, 0, 0, 123456, tzinfo=UTC),
        "actor_id": 7,
        "actor_name": "ålice",
        "action": "model.created",
        "target_type": "registry.registeredmodel",
        "target_id": "41",
        "target_label": 'naïve "quoted" 🚀\n',
        "model_id": 41,
        "changes": {"after": {"name": "x", "n": 1, "nested": {"b": [1, 2.5, None]}}},
        "via": "mlflow",
        "ip": "127.0.0.1",
        "user_agent": "mlflow-python-client/3.17.2",
        "request_id": "r" * 32,
        **overrides,
    }


@pytest.mark.parametrize(
    "keys",
    [{}, {"target_id": True}, {"model_id": False}, {"target_id": True, "model_id": False}],
)
def test_the_parts_joined_by_the_key_are_the_canonical_form(keys):
    parts = canonical_form_parts(fields(), keys)

    assert len(parts) == len(keys) + 1
    assert "41".join(parts) == canonical_form(fields())


def test_the_parts_hold_none_of_the_keyed_values():
    parts = canonical_form_parts(
        fields(target_id="None", model_id=None), {"target_id": True, "model_id": False}
    )

    assert "41".join(parts) == canonical_form(fields())
    assert "None" not in "".join(parts) and 'null,"request_id"' not in "".join(parts)


def model_rows(name: str, actor) -> tuple[RegisteredModel, list[InsertStep]]:
    model = RegisteredModel(name=name, name_key=name, created_by=actor)
    stages = [Stage(model=model, name="staging", position=1)]
    return model, [InsertStep(MODELS, [model]), InsertStep(STAGES, stages, key="name")]


def created(model, actor) -> AuditEntry:
    return AuditEntry("model.created", target=model, changes={"after": {"name": model.name}})


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_rows_and_event_are_one_statement(alice):
    before = audit_record(actor=alice, action="test.before")
    model, steps = model_rows("churn", alice)

    with CaptureQueriesContext(connection) as queries:
        [event] = insert_and_record(*steps, actor=alice, entries=[created(model, alice)])

    assert len(queries.captured_queries) == 1  # no BEGIN, no COMMIT: Django logs neither
    assert connection.get_autocommit() and not connection.in_atomic_block
    assert model.pk and steps[1].objs[0].model_id == model.pk
    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.target_id, stored.model_id) == (str(model.pk), model.pk)
    assert (event.target_id, event.model_id) == (str(model.pk), model.pk)
    assert stored.prev_hash == before.hash and stored.hash == event.hash
    assert AuditChainHead.objects.get().hash == event.hash
    assert audit_verify_chain().ok


@pytest.mark.django_db
def test_inside_a_transaction_a_refused_insert_leaves_it_usable(alice):
    model_create(actor=alice, name="churn")
    head = AuditChainHead.objects.get().hash
    events = AuditEvent.objects.count()

    with pytest.raises(Conflict):
        model_create(actor=alice, name="CHURN")

    # The savepoint rolled back the statement only: the test's transaction goes on.
    assert RegisteredModel.objects.count() == 1
    assert AuditEvent.objects.count() == events
    assert AuditChainHead.objects.get().hash == head
    assert audit_verify_chain().ok


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_a_refused_insert_changes_nothing(alice):
    model_create(actor=alice, name="churn")
    head = AuditChainHead.objects.get().hash

    with pytest.raises(Conflict):
        model_create(actor=alice, name="Churn")

    assert RegisteredModel.objects.count() == 1
    assert AuditEvent.objects.count() == 1
    assert AuditChainHead.objects.get().hash == head
    assert not Stage.objects.exclude(model__name="churn").exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("in_transaction", [False, True])
def test_a_missing_head_row_fails_the_statement_then_is_seeded(alice, in_transaction):
    first = audit_record(actor=alice, action="test.before")
    AuditChainHead.objects.all().delete()  # a restore without the row, say

    if in_transaction:
        with transaction.atomic():
            model = model_create(actor=alice, name="churn")
    else:
        model = model_create(actor=alice, name="churn")

    event = AuditEvent.objects.get(action="model.created")
    assert event.prev_hash == first.hash and event.model_id == model.pk
    assert AuditChainHead.objects.get().hash == event.hash
    assert RegisteredModel.objects.count() == 1
    assert audit_verify_chain().ok


@pytest.mark.django_db(transaction=True)
def test_the_first_event_of_a_new_log_links_to_the_genesis(alice):
    AuditChainHead.objects.all().delete()
    assert not AuditEvent.objects.exists()

    model_create(actor=alice, name="churn")

    assert AuditEvent.objects.get().prev_hash == GENESIS_HASH
    assert audit_verify_chain().ok


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_keep_the_chain_linear_even_when_seeding(alice):
    AuditChainHead.objects.all().delete()
    writers, per_writer = 6, 4

    def write(number: int) -> None:
        for index in range(per_writer):
            model_create(actor=alice, name=f"model-{number}-{index}")
            audit_record(actor=alice, action="test.single")

    assert run_concurrently(writers, write) == [None] * writers
    assert RegisteredModel.objects.count() == writers * per_writer
    report = audit_verify_chain()
    assert report.ok and report.events_checked == 2 * writers * per_writer
    created_models = AuditEvent.objects.filter(action="model.created")
    assert {e.model_id for e in created_models} == set(
        RegisteredModel.objects.values_list("pk", flat=True)
    )


@pytest.mark.django_db
def test_events_that_notify_webhooks_take_the_two_step_path(alice):
    model = model_create(actor=alice, name="churn")
    hook(alice, events=("stage.changed",))
    stage = Stage(model=model, name="canary", position=3)

    [event] = insert_and_record(
        InsertStep(STAGES, [stage]),
        actor=alice,
        entries=[AuditEntry("stage.changed", target=stage, model_id=model.pk)],
    )

    assert stage.pk and event.target_id == str(stage.pk) and event.model_id == model.pk
    assert WebhookDelivery.objects.get().event_id == str(event.pk)
    assert audit_verify_chain().ok


def test_a_field_holding_nul_cannot_be_marked():
    with pytest.raises(ValueError, match="NUL"):
        canonical_form_parts(fields(user_agent="\x00target_id\x00"), {"target_id": True})
