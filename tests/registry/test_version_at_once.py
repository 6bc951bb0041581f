"""A version without parents is created in one statement on PostgreSQL: the model row's
number checked and bumped, the version inserted, its events appended (registry.services
`_create_version_at_once`); a stale number, an archived model or waiting webhooks take the
paths that keep numbers gapless and deliveries atomic."""

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.audit.models import AuditChainHead, AuditEvent, WebhookDelivery
from apps.audit.selectors import audit_verify_chain
from apps.registry.models import ModelVersion, RegisteredModel
from apps.registry.services import model_archive, model_create, version_create
from registry_site.api_errors import Conflict
from tests.audit.test_record_many import hook
from tests.conftest import run_concurrently

EXTERNAL = "Files stay at the MLflow source."


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_a_version_is_one_statement(alice):
    model = model_create(actor=alice, name="churn")

    with CaptureQueriesContext(connection) as queries:
        version = version_create(
            actor=alice, model=model, source={"uri": "s3://b/m"}, external_reason=EXTERNAL
        )

    assert len(queries.captured_queries) == 1  # and no BEGIN or COMMIT
    stored = ModelVersion.objects.get(pk=version.pk)
    assert stored.number == version.number == 1
    assert stored.status == "ready" and stored.sealed_at == stored.created_at
    assert RegisteredModel.objects.get(pk=model.pk).last_version_number == 1
    created, ready = AuditEvent.objects.filter(model_id=model.pk).order_by("id")[1:]
    assert (created.action, ready.action) == ("version.created", "version.ready")
    assert created.target_id == ready.target_id == str(version.pk)
    assert created.target_label == "churn/1" and created.changes["after"]["version"] == 1
    assert AuditChainHead.objects.get().hash == ready.hash
    assert audit_verify_chain().ok


@pytest.mark.django_db(transaction=True)
def test_a_stale_number_is_read_again_and_numbers_stay_gapless(alice):
    model = model_create(actor=alice, name="churn")
    stale = RegisteredModel.objects.get(pk=model.pk)
    version_create(actor=alice, model=model)  # 1, through the up-to-date instance

    second = version_create(actor=alice, model=stale)  # expected 1 first: read again

    assert second.number == 2 and stale.last_version_number == 2
    assert list(ModelVersion.objects.order_by("number").values_list("number", flat=True)) == [
        1,
        2,
    ]
    assert AuditEvent.objects.filter(action="version.created").count() == 2
    assert audit_verify_chain().ok


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("in_transaction", [False, True])
def test_an_archived_model_refuses_and_nothing_changes(alice, in_transaction):
    model = model_create(actor=alice, name="churn")
    stale = RegisteredModel.objects.get(pk=model.pk)
    model_archive(actor=alice, model=model)
    head = AuditChainHead.objects.get().hash

    if in_transaction:
        with pytest.raises(Conflict, match="archived"), transaction.atomic():
            version_create(actor=alice, model=stale)
    else:
        with pytest.raises(Conflict, match="archived"):
            version_create(actor=alice, model=stale)

    assert not ModelVersion.objects.exists()
    assert AuditChainHead.objects.get().hash == head
    assert RegisteredModel.objects.get(pk=model.pk).last_version_number == 0


@pytest.mark.django_db(transaction=True)
def test_waiting_webhooks_take_the_locked_path_and_get_their_deliveries(alice):
    model = model_create(actor=alice, name="churn")
    hook(alice, model=model, events=("version.created", "version.ready"))

    version = version_create(
        actor=alice, model=model, source={"uri": "s3://b/m"}, external_reason=EXTERNAL
    )

    assert version.number == 1 and ModelVersion.objects.count() == 1
    deliveries = WebhookDelivery.objects.order_by("id")
    assert [d.event_type for d in deliveries] == ["version.created", "version.ready"]
    events = AuditEvent.objects.filter(action__startswith="version.").order_by("id")
    assert [d.event_id for d in deliveries] == [str(e.pk) for e in events]
    assert audit_verify_chain().ok


@pytest.mark.django_db(transaction=True)
def test_concurrent_versions_of_one_model_are_numbered_without_gaps(alice):
    model = model_create(actor=alice, name="churn")
    writers, per_writer = 6, 4

    def write(_: int) -> None:
        mine = RegisteredModel.objects.get(pk=model.pk)
        for _ in range(per_writer):
            version_create(actor=alice, model=mine)

    assert run_concurrently(writers, write) == [None] * writers
    total = writers * per_writer
    numbers = sorted(ModelVersion.objects.values_list("number", flat=True))
    assert numbers == list(range(1, total + 1))
    assert RegisteredModel.objects.get(pk=model.pk).last_version_number == total
    report = audit_verify_chain()
    assert report.ok and AuditEvent.objects.filter(action="version.created").count() == total
