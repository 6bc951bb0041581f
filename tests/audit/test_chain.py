"""The audit chain: append-only at the database, tamper-evident, linear under concurrency."""

import threading
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction

from apps.audit.chain import GENESIS_HASH
from apps.audit.models import AuditCheck, AuditEvent
from apps.audit.selectors import audit_verify_chain
from apps.audit.services import audit_record


def record_events(actor, count: int) -> list[AuditEvent]:
    return [
        audit_record(actor=actor, action="test.event", changes={"n": index, "score": 0.5 + index})
        for index in range(count)
    ]


def raw_sql(sql: str, params: list) -> None:
    """Change rows behind the application's back, as a database superuser could."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only")
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_append_only")


@pytest.mark.django_db
def test_events_form_a_chain(alice):
    events = record_events(alice, 3)
    assert events[0].prev_hash == GENESIS_HASH
    assert events[1].prev_hash == events[0].hash
    assert events[2].prev_hash == events[1].hash
    report = audit_verify_chain()
    assert report.ok and report.events_checked == 3 and report.head_hash == events[2].hash


@pytest.mark.django_db
def test_verify_command_reports_count(alice):
    record_events(alice, 4)
    out = StringIO()
    call_command("audit_verify", stdout=out)
    assert "intact: 4 events" in out.getvalue()
    assert AuditCheck.objects.get().ok


@pytest.mark.django_db
def test_update_is_refused_by_the_database(alice):
    event = record_events(alice, 1)[0]
    with pytest.raises(Exception, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="nothing.happened")
    with (
        pytest.raises(Exception, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("UPDATE audit_auditevent SET actor_name = 'mallory'")


@pytest.mark.django_db
def test_delete_is_refused_by_the_database(alice):
    event = record_events(alice, 1)[0]
    with pytest.raises(Exception, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("tamper", "broken_index"),
    [
        ("UPDATE audit_auditevent SET action = 'x.y' WHERE id = %s", 2),
        ("UPDATE audit_auditevent SET changes = '{\"n\": 99}' WHERE id = %s", 2),
        ("DELETE FROM audit_auditevent WHERE id = %s", 3),
    ],
    ids=["edited-field", "edited-json", "deleted-row"],
)
def test_tampering_is_named_by_audit_verify(alice, tamper, broken_index):
    events = record_events(alice, 5)
    raw_sql(tamper, [events[2].pk])
    with pytest.raises(CommandError, match=f"event #{events[broken_index].pk} "):
        call_command("audit_verify", stdout=StringIO())
    assert not AuditCheck.objects.get().ok


@pytest.mark.django_db
def test_swapped_rows_are_detected(alice):
    events = record_events(alice, 4)
    a, b = events[1], events[2]
    raw_sql("UPDATE audit_auditevent SET id = -1 WHERE id = %s", [a.pk])
    raw_sql("UPDATE audit_auditevent SET id = %s WHERE id = %s", [a.pk, b.pk])
    raw_sql("UPDATE audit_auditevent SET id = %s WHERE id = -1", [b.pk])
    report = audit_verify_chain()
    assert not report.ok and report.first_broken_id == a.pk


@pytest.mark.django_db
def test_forged_row_in_the_middle_is_detected(alice):
    events = record_events(alice, 3)
    raw_sql(
        "INSERT INTO audit_auditevent (id, at, actor_name, action, target_type, target_id,"
        " target_label, changes, via, user_agent, request_id, prev_hash, hash)"
        " VALUES (%s, now(), 'mallory', 'forged', '', '', '', '{}', 'web', '', '', %s, %s)",
        [events[0].pk * 1000 + 1, "f" * 64, "e" * 64],
    )
    report = audit_verify_chain()
    assert not report.ok


@pytest.mark.django_db
def test_values_round_trip_exactly(alice):
    """Numbers and text that PostgreSQL might respell still verify."""
    audit_record(
        actor=alice,
        action="test.values",
        changes={"big": 1e100, "tiny": 5e-324, "int": 2**70, "text": "a\x00b\r\n<script>é"},
    )
    assert audit_verify_chain().ok


@pytest.mark.django_db
def test_deleting_a_user_keeps_their_trail(alice):
    record_events(alice, 2)
    alice.delete()
    events = AuditEvent.objects.all()
    assert {event.actor_name for event in events} == {"alice"}
    assert audit_verify_chain().ok


@pytest.mark.django_db
def test_event_rolls_back_with_its_transaction(alice):
    with pytest.raises(RuntimeError), transaction.atomic():
        audit_record(actor=alice, action="test.rolled_back")
        raise RuntimeError("the change failed after its audit row was written")
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_chain_stays_linear_under_concurrent_writers(alice):
    writers, per_writer = 10, 5
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            barrier.wait()
            for _ in range(per_writer):
                with transaction.atomic():
                    audit_record(actor=alice, action="test.concurrent")
        except BaseException as error:  # collected and re-raised in the main thread
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert AuditEvent.objects.count() == writers * per_writer
    report = audit_verify_chain()
    assert report.ok and report.events_checked == writers * per_writer
