"""`audit_record_many`: several events in one append, linked and ordered as if one by one."""

import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connections, transaction
from django.test.utils import CaptureQueriesContext

from apps.audit.chain import GENESIS_HASH, event_hash
from apps.audit.models import AuditChainHead, AuditEvent, Webhook, WebhookDelivery
from apps.audit.selectors import audit_verify_chain
from apps.audit.services import APPEND_BATCH, AuditEntry, audit_record, audit_record_many
from apps.registry.models import ModelVersion
from apps.registry.services import model_create, version_create


def entries(*actions: str) -> list[AuditEntry]:
    return [AuditEntry(action, changes={"n": index}) for index, action in enumerate(actions)]


@pytest.mark.django_db
def test_events_are_chained_in_the_order_given(alice):
    first = audit_record(actor=alice, action="test.before")
    events = audit_record_many(actor=alice, entries=entries("test.one", "test.two", "test.three"))
    assert [event.action for event in events] == ["test.one", "test.two", "test.three"]
    assert events[0].prev_hash == first.hash
    assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash
    assert [event.pk for event in events] == sorted(event.pk for event in events)
    assert events[0].at <= events[1].at <= events[2].at
    stored = list(AuditEvent.objects.order_by("id").values_list("action", "hash"))
    assert stored[1:] == [(event.action, event.hash) for event in events]
    report = audit_verify_chain()
    assert report.ok and report.events_checked == 4 and report.head_hash == events[2].hash


@pytest.mark.django_db
def test_the_first_event_links_to_the_genesis(alice):
    events = audit_record_many(actor=alice, entries=entries("test.one", "test.two"))
    assert events[0].prev_hash == GENESIS_HASH
    assert audit_verify_chain().ok


@pytest.mark.django_db
def test_one_statement_appends_a_batch(alice, django_assert_num_queries):
    audit_record(actor=alice, action="test.before")
    # Head row, hashing and INSERT in one statement; no webhook action: no look-up.
    with django_assert_num_queries(1) as queries:
        events = audit_record_many(
            actor=alice, entries=entries("test.one", "test.two", "test.three")
        )
    assert queries.captured_queries[0]["sql"].startswith("WITH forms AS (SELECT ARRAY[")
    assert AuditChainHead.objects.get().hash == events[-1].hash
    assert AuditChainHead.objects.get().prev_hash == events[0].prev_hash
    assert audit_verify_chain().ok


@pytest.mark.django_db
def test_postgresql_hashes_exactly_as_the_python_chain(alice):
    awkward = 'naïve 🚀 "quoted" back\\slash\nnew line \u2028 tab\t NUL\x00 ß→SS 1e100'
    events = audit_record_many(
        actor=alice,
        entries=[
            AuditEntry("test.awkward", changes={"after": {awkward: [awkward, 1, 2.5, None]}}),
            AuditEntry("test.plain"),
        ],
        actor_name=awkward.replace("\x00", ""),  # only `changes` is cleaned of NUL
    )
    stored = AuditEvent.objects.order_by("id")
    assert [event.hash for event in events] == list(stored.values_list("hash", flat=True))
    fields = stored.values()[0]
    assert event_hash(events[0].prev_hash, fields) == events[0].hash
    assert audit_verify_chain().ok


@pytest.mark.django_db
def test_a_rewound_head_row_cannot_fork_the_chain(alice):
    first, _ = audit_record_many(actor=alice, entries=entries("test.one", "test.two"))
    AuditChainHead.objects.update(hash=first.hash)  # the next event would claim first again
    with pytest.raises(IntegrityError), transaction.atomic():
        audit_record(actor=alice, action="test.fork")
    assert AuditEvent.objects.count() == 2
    report = audit_verify_chain()  # the events are intact; the head row is named
    assert not report.ok and report.events_checked == 2 and "head row" in report.message


@pytest.mark.django_db
def test_verification_names_a_head_row_that_does_not_hold_the_last_hash(alice):
    audit_record_many(actor=alice, entries=entries("test.one", "test.two"))
    AuditChainHead.objects.update(hash="f" * 64)
    report = audit_verify_chain()
    assert not report.ok and report.events_checked == 2
    assert report.message.startswith("the head row (audit_auditchainhead)")
    with pytest.raises(CommandError, match="BROKEN at the head row"):
        call_command("audit_verify")
    AuditChainHead.objects.all().delete()  # the documented repair
    assert audit_verify_chain().ok
    audit_record(actor=alice, action="test.after")
    assert audit_verify_chain().ok


@pytest.mark.django_db
def test_a_missing_head_row_is_seeded_from_the_last_event(alice):
    _, second = audit_record_many(actor=alice, entries=entries("test.one", "test.two"))
    AuditChainHead.objects.all().delete()  # as on a database flushed, or restored without it
    third = audit_record(actor=alice, action="test.three")
    assert third.prev_hash == second.hash
    assert AuditChainHead.objects.get().hash == third.hash
    assert audit_verify_chain().ok


@pytest.mark.django_db
def test_external_version_with_webhooks_writes_both_events_and_their_deliveries(alice):
    model = model_create(actor=alice, name="fraud-detector")
    Webhook.objects.create(
        url="https://hooks.example.com/regent",
        secret="s" * 32,
        model=model,
        events=["version.created", "version.ready"],
        created_by=alice,
    )
    with CaptureQueriesContext(connections["default"]) as queries:
        version = version_create(actor=alice, model=model, external_reason="outside")
    lookups = [q for q in queries.captured_queries if 'FROM "audit_webhook"' in q["sql"]]
    # The one-statement attempt finds the webhook and fails as a whole; the locked path then
    # appends both events with one look-up, and their deliveries in the same transaction.
    assert len(lookups) == 2
    assert "audit_no_deliveries_due" in lookups[0]["sql"]
    about = AuditEvent.objects.filter(target_type="registry.modelversion", target_id=version.pk)
    created, ready = about.order_by("id")
    assert (created.action, created.changes["after"]["status"]) == ("version.created", "pending")
    assert (ready.action, ready.changes["reason"]) == ("version.ready", "outside")
    assert ready.prev_hash == created.hash
    stored = ModelVersion.objects.get(pk=version.pk)
    assert stored.status == "ready" and stored.external_artifacts
    assert stored.sealed_at == stored.created_at
    deliveries = WebhookDelivery.objects.order_by("id")
    # Each payload reports the status its own event left the version in.
    assert [(d.event_type, d.payload["data"]["status"]) for d in deliveries] == [
        ("version.created", "pending"),
        ("version.ready", "ready"),
    ]
    assert audit_verify_chain().ok


@pytest.mark.django_db
def test_a_rolled_back_append_leaves_no_event(alice):
    with pytest.raises(RuntimeError), transaction.atomic():
        audit_record_many(actor=alice, entries=entries("test.one", "test.two"))
        raise RuntimeError("the change failed after its audit rows were written")
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_chain_stays_linear_with_concurrent_batches_and_single_events(alice):
    writers, per_writer = 8, 5
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(batch: bool) -> None:
        try:
            barrier.wait()
            for _ in range(per_writer):
                with transaction.atomic():
                    if batch:
                        audit_record_many(actor=alice, entries=entries("test.a", "test.b"))
                    else:
                        audit_record(actor=alice, action="test.single")
        except BaseException as error:  # collected and re-raised in the main thread
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(n % 2 == 0,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    expected = (writers // 2) * per_writer * 3
    assert AuditEvent.objects.count() == expected
    report = audit_verify_chain()
    assert report.ok and report.events_checked == expected
    # A batch's two events are adjacent in the chain: nothing slips between them.
    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    for index, action in enumerate(actions):
        if action == "test.a":
            assert actions[index + 1] == "test.b"


def hook(alice, model=None, events=("version.created",), active=True) -> Webhook:
    return Webhook.objects.create(
        url="https://hooks.example.com/regent",
        secret="s" * 32,
        model=model,
        events=list(events),
        created_by=alice,
        active=active,
    )


@pytest.mark.django_db
def test_the_append_finds_the_webhooks_to_notify_in_the_same_statement(alice):
    fraud, churn = model_create(actor=alice, name="fraud"), model_create(actor=alice, name="churn")
    mine, everyone = hook(alice, fraud), hook(alice)
    hook(alice, churn)  # another model's
    hook(alice, fraud, events=("version.failed",))  # not this action
    hook(alice, fraud, active=False)
    entry = AuditEntry("version.created", target=fraud, model_id=fraud.pk)
    with CaptureQueriesContext(connections["default"]) as queries:
        (event,) = audit_record_many(actor=alice, entries=[entry])
    lookups = [q["sql"] for q in queries.captured_queries if '"audit_webhook"' in q["sql"]]
    assert len(lookups) == 1 and lookups[0].startswith("WITH forms AS")  # the append itself
    notified = WebhookDelivery.objects.filter(event_id=str(event.pk))
    assert sorted(notified.values_list("webhook_id", flat=True)) == sorted([mine.pk, everyone.pk])


@pytest.mark.django_db
def test_events_of_several_models_look_their_webhooks_up_apart(alice):
    fraud, churn = model_create(actor=alice, name="fraud"), model_create(actor=alice, name="churn")
    on_fraud, on_churn = hook(alice, fraud), hook(alice, churn)
    entries = [
        AuditEntry("version.created", target=fraud, model_id=fraud.pk),
        AuditEntry("version.created", target=churn, model_id=churn.pk),
    ]
    first, second = audit_record_many(actor=alice, entries=entries)
    sent = set(WebhookDelivery.objects.values_list("webhook_id", "event_id"))
    assert sent == {(on_fraud.pk, str(first.pk)), (on_churn.pk, str(second.pk))}
    assert audit_verify_chain().ok


@pytest.mark.django_db
def test_a_long_batch_is_appended_in_several_statements_still_in_order(alice):
    audit_record(actor=alice, action="test.before")  # seeds the head row after a flush
    actions = [f"test.n{index}" for index in range(APPEND_BATCH * 2 + 3)]
    with CaptureQueriesContext(connections["default"]) as queries:
        events = audit_record_many(actor=alice, entries=entries(*actions))
    assert len(queries) == 3
    stored = list(AuditEvent.objects.order_by("id").values_list("action", "hash"))
    assert stored[1:] == [(event.action, event.hash) for event in events]
    assert [event.action for event in events] == actions
    assert audit_verify_chain().ok
