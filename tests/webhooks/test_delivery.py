"""Fan-out and delivery: outbox rows in the event's transaction, signed POSTs to a real
receiver, retries with backoff, idempotence, the sweep.

Tasks are never eager here: tests call the delivery function or the task function directly,
as a worker would, and capture the on-commit enqueueing.
"""

import json
import logging
import socket
import threading
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.approvals.access import set_approver
from apps.approvals.models import Stage, StagePolicy
from apps.approvals.services import promotion_reject, promotion_request, stage_rollback
from apps.audit import tasks, webhook_delivery
from apps.audit.models import AuditEvent, DeliveryStatus, WebhookDelivery
from apps.audit.services import audit_record
from apps.audit.webhook_delivery import (
    MAX_ATTEMPTS,
    backoff,
    webhook_deliver,
    webhook_sweep,
)
from apps.audit.webhook_services import webhook_redeliver, webhook_update
from apps.registry.models import ModelVersion, VersionStatus
from apps.registry.services import version_create
from tests.conftest import make_user
from tests.webhooks.conftest import make_webhook

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("allow_private")]

ALL_EVENTS = [
    "version.created",
    "version.ready",
    "version.failed",
    "promotion.requested",
    "promotion.approved",
    "promotion.rejected",
    "stage.changed",
    "stage.rolled_back",
]


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float | None]]:
    """Every delivery the code asked Celery to send: (delivery id, countdown)."""
    sent: list[tuple[int, float | None]] = []

    def apply_async(args: tuple, countdown: float | None = None, **kwargs: Any) -> None:
        sent.append((args[0], countdown))

    monkeypatch.setattr(tasks.deliver_webhook_task, "apply_async", apply_async)
    return sent


def ready_version(model: Any, author: Any, number: int) -> ModelVersion:
    model.last_version_number = number
    model.save(update_fields=["last_version_number"])
    return ModelVersion.objects.create(
        model=model,
        number=number,
        status=VersionStatus.READY,
        created_by=author,
        verified_at=timezone.now(),
    )


def only_delivery() -> WebhookDelivery:
    (delivery,) = WebhookDelivery.objects.all()
    return delivery


# --- Fan-out: one outbox row per subscribed endpoint, in the event's transaction ---------------


def test_event_creates_one_delivery_enqueued_after_commit(
    owner, ml_model, receiver, enqueued, django_capture_on_commit_callbacks
):
    webhook, _ = make_webhook(owner, receiver.url, ["version.created"], ml_model)
    with django_capture_on_commit_callbacks(execute=True):
        version = version_create(actor=owner, model=ml_model)
        assert WebhookDelivery.objects.count() == 1  # written inside the transaction
        assert enqueued == []  # …and sent only after commit

    delivery = only_delivery()
    event = AuditEvent.objects.get(action="version.created")
    assert delivery.webhook == webhook
    assert delivery.event_id == str(event.pk)
    assert delivery.event_type == "version.created"
    assert delivery.status == DeliveryStatus.PENDING
    assert enqueued == [(delivery.pk, None)]
    assert delivery.payload["type"] == "version.created"
    assert delivery.payload["data"] == {
        "model": "fraud-detector",
        "version": version.number,
        "stage": None,
        "status": "pending",
        "actor": "alice",
        "url": "http://testserver/models/fraud-detector/versions/1/",
    }


def test_rolled_back_change_leaves_no_delivery_and_enqueues_nothing(
    owner, ml_model, receiver, enqueued, django_capture_on_commit_callbacks
):
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        version_create(actor=owner, model=ml_model)
        raise RuntimeError("the caller's transaction fails after the event")
    assert not WebhookDelivery.objects.exists()
    assert enqueued == []


def test_only_subscribed_active_webhooks_of_the_model_or_global_get_it(
    owner, superuser, ml_model, other_model, receiver
):
    mine, _ = make_webhook(owner, receiver.url, ["version.created"], ml_model)
    make_webhook(owner, receiver.url, ["version.created"], other_model)
    make_webhook(owner, receiver.url, ["version.ready"], ml_model)  # another event
    disabled, _ = make_webhook(owner, receiver.url, ["version.created"], ml_model)
    webhook_update(actor=owner, webhook=disabled, active=False)
    everywhere, _ = make_webhook(superuser, receiver.url, ["version.created"], None)

    version_create(actor=owner, model=ml_model)

    assert {d.webhook_id for d in WebhookDelivery.objects.all()} == {mine.pk, everywhere.pk}


def test_global_webhook_hears_every_model_a_model_webhook_only_its_own(
    owner, superuser, ml_model, other_model, receiver
):
    on_fraud, _ = make_webhook(owner, receiver.url, ["version.created"], ml_model)
    everywhere, _ = make_webhook(superuser, receiver.url, ["version.created"], None)
    version_create(actor=owner, model=ml_model)
    version_create(actor=owner, model=other_model)
    models_seen = {
        webhook: sorted(
            d.payload["data"]["model"] for d in WebhookDelivery.objects.filter(webhook=webhook)
        )
        for webhook in (on_fraud, everywhere)
    }
    assert models_seen == {
        on_fraud: ["fraud-detector"],
        everywhere: ["churn-predictor", "fraud-detector"],
    }


def test_unsubscribable_actions_never_look_for_webhooks(owner, ml_model, receiver):
    make_webhook(owner, receiver.url, ALL_EVENTS, ml_model)
    with CaptureQueriesContext(connection) as queries:
        audit_record(actor=owner, action="model.updated", target=ml_model)
    assert not any("audit_webhook" in query["sql"] for query in queries.captured_queries)
    assert not WebhookDelivery.objects.exists()


def test_verification_events_carry_the_outcome(owner, ml_model, receiver):
    make_webhook(owner, receiver.url, ["version.ready", "version.failed"], ml_model)
    ok = version_create(actor=owner, model=ml_model)
    bad = version_create(actor=owner, model=ml_model)
    for version, status in ((ok, VersionStatus.READY), (bad, VersionStatus.FAILED)):
        ModelVersion.objects.filter(pk=version.pk).update(status=status)
        version.status = status
        audit_record(actor=None, action=f"version.{status}", target=version)
    payloads = {d.event_type: d.payload for d in WebhookDelivery.objects.all()}
    assert payloads["version.ready"]["data"]["version"] == 1
    assert payloads["version.ready"]["data"]["status"] == "ready"
    assert payloads["version.failed"]["data"]["status"] == "failed"
    assert payloads["version.failed"]["data"]["actor"] == "system"


def test_promotion_and_stage_events_describe_the_stage(owner, ml_model, receiver):
    make_webhook(owner, receiver.url, ALL_EVENTS, ml_model)
    v1, v2 = ready_version(ml_model, owner, 1), ready_version(ml_model, owner, 2)
    staging = Stage.objects.get(model=ml_model, name="staging")
    StagePolicy.objects.filter(stage=staging).update(required_approvals=0)
    promotion_request(actor=owner, version=v1, stage=staging)
    promotion = promotion_request(actor=owner, version=v2, stage=staging)
    stage_rollback(stage=staging, actor=owner, reason="v2 misbehaves")

    types = list(WebhookDelivery.objects.order_by("pk").values_list("event_type", flat=True))
    assert types == [
        "promotion.requested",
        "promotion.approved",
        "stage.changed",
        "promotion.requested",
        "promotion.approved",
        "stage.changed",
        "stage.rolled_back",
    ]
    by_type = {d.event_type: d.payload["data"] for d in WebhookDelivery.objects.order_by("pk")}
    assert by_type["promotion.approved"] == {
        "model": "fraud-detector",
        "version": 2,
        "stage": "staging",
        "status": "approved",
        "actor": "alice",
        "promotion_id": promotion.pk,
        "url": f"http://testserver{promotion.get_absolute_url()}",
    }
    rolled_back = by_type["stage.rolled_back"]
    assert (rolled_back["version"], rolled_back["previous_version"]) == (1, 2)
    assert rolled_back["manifest_url"] == (
        "http://testserver/api/v1/models/fraud-detector/stages/staging/manifest"
    )
    assert rolled_back["status"] == "ready"


def test_rejection_is_an_event(owner, ml_model, receiver):
    make_webhook(owner, receiver.url, ["promotion.rejected"], ml_model)
    version = ready_version(ml_model, owner, 1)
    production = Stage.objects.get(model=ml_model, name="production")
    approver = make_user("erin")
    set_approver(approver, production, True)
    promotion = promotion_request(actor=owner, version=version, stage=production)
    promotion_reject(promotion=promotion, reviewer=approver, comment="not yet", via="api")
    data = only_delivery().payload["data"]
    assert (data["status"], data["actor"], data["stage"]) == ("rejected", "erin", "production")


# --- Sending: signed, verified by the documented recipe, exactly once --------------------------


def test_delivery_is_signed_and_verifies_with_the_docs_recipe(
    owner, ml_model, receiver, verify_webhook
):
    _, secret = make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    delivery = only_delivery()

    tasks.deliver_webhook_task(delivery.pk)

    (request,) = receiver.requests
    assert request.path == "/hook"
    assert verify_webhook(secret, request.headers, request.body)
    assert request.headers["webhook-id"] == f"evt_{delivery.event_id}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert json.loads(request.body) == delivery.payload
    # Tampering with anything signed breaks the signature.
    assert not verify_webhook(secret, request.headers, request.body + b" ")
    assert not verify_webhook("whsec_" + "A" * 32, request.headers, request.body)
    forged = {**request.headers, "webhook-id": "evt_999999"}
    assert not verify_webhook(secret, forged, request.body)

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert (delivery.attempts, delivery.response_code) == (1, 204)
    assert delivery.duration_ms is not None and delivery.delivered_at is not None


def test_docs_recipe_refuses_a_stale_timestamp(owner, ml_model, receiver, verify_webhook):
    _, secret = make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    webhook_deliver(only_delivery().pk)
    (request,) = receiver.requests
    with time_machine.travel(timezone.now() + timedelta(hours=1)):
        assert not verify_webhook(secret, request.headers, request.body)  # replayed later
        assert verify_webhook(secret, request.headers, request.body, tolerance=7200)


def test_task_run_twice_posts_once(owner, ml_model, receiver):
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    delivery = only_delivery()
    assert tasks.deliver_webhook_task(delivery.pk) == "succeeded"
    assert tasks.deliver_webhook_task(delivery.pk) is None
    assert receiver.hits == 1
    assert only_delivery().attempts == 1


def test_task_for_a_deleted_delivery_does_nothing(owner, ml_model, receiver):
    assert tasks.deliver_webhook_task(123456) is None
    assert receiver.hits == 0


def test_secret_is_never_logged(owner, ml_model, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    _, secret = make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    receiver.status = 500
    webhook_deliver(only_delivery().pk)
    assert caplog.records  # the attempt is logged…
    assert all(secret not in record.getMessage() for record in caplog.records)  # …not the key
    assert all(secret[6:] not in record.getMessage() for record in caplog.records)


# --- Failures: retries with backoff, then failed -----------------------------------------------


def test_failing_receiver_is_retried_with_backoff_then_failed(owner, ml_model, receiver):
    receiver.status = 500
    receiver.body = b"database is down"
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    delivery = only_delivery()
    waits = []
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            assert webhook_deliver(delivery.pk) is not None
            # Not due yet: a duplicate or early task sends nothing.
            assert webhook_deliver(delivery.pk) is None
            delivery.refresh_from_db()
            assert delivery.attempts == attempt
            assert (delivery.response_code, delivery.last_error) == (
                500,
                "HTTP 500: database is down",
            )
            if attempt < MAX_ATTEMPTS:
                assert delivery.status == DeliveryStatus.PENDING
                waits.append((delivery.next_attempt_at - timezone.now()).total_seconds())
                clock.shift(backoff(attempt))
    assert delivery.status == DeliveryStatus.FAILED
    assert receiver.hits == MAX_ATTEMPTS
    assert waits == [30, 60, 120, 240, 480, 960, 1920]
    assert webhook_deliver(delivery.pk) is None  # failed is final until a redeliver


def test_task_schedules_its_retry_to_match_the_row(owner, ml_model, receiver, monkeypatch):
    receiver.status = 503
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    delivery = only_delivery()
    scheduled = []

    def retry(countdown: float, **kwargs: Any) -> Exception:
        scheduled.append(countdown)
        return RuntimeError("retry scheduled")

    monkeypatch.setattr(tasks.deliver_webhook_task, "retry", retry)
    tasks.deliver_webhook_task.push_request(called_directly=False, is_eager=False, retries=0)
    try:
        with pytest.raises(RuntimeError, match="retry scheduled"):
            tasks.deliver_webhook_task.run(delivery.pk)
    finally:
        tasks.deliver_webhook_task.pop_request()
    assert len(scheduled) == 1 and 30 <= scheduled[0] <= 31


def test_connection_refused_is_a_retried_failure(owner, ml_model, receiver):
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    receiver.server.shutdown()
    receiver.server.server_close()
    webhook_deliver(only_delivery().pk)
    delivery = only_delivery()
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.response_code is None
    assert "cannot connect to 127.0.0.1" in delivery.last_error


def test_slow_receiver_is_cut_off_at_the_total_timeout(owner, ml_model, receiver, monkeypatch):
    monkeypatch.setattr(webhook_delivery, "TOTAL_TIMEOUT", 0.5)
    receiver.delay = 3
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    webhook_deliver(only_delivery().pk)
    delivery = only_delivery()
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.last_error == "no answer within 0.5 s"
    assert delivery.duration_ms < 2000


def test_large_error_answers_are_read_only_in_part(owner, ml_model, receiver):
    receiver.status = 500
    receiver.body = b"x" * (1024 * 1024)
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    webhook_deliver(only_delivery().pk)
    assert len(only_delivery().last_error) <= webhook_delivery.MAX_ERROR_CHARS


def test_disabled_webhook_fails_its_queued_deliveries(owner, ml_model, receiver):
    webhook, _ = make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    webhook_update(actor=owner, webhook=webhook, active=False)
    webhook_deliver(only_delivery().pk)
    delivery = only_delivery()
    assert (delivery.status, delivery.last_error) == ("failed", "the webhook is disabled")
    assert receiver.hits == 0


# --- Redeliver ---------------------------------------------------------------------------------


def test_redeliver_sends_the_same_event_again_with_a_fresh_signature(
    owner, ml_model, receiver, verify_webhook, enqueued, django_capture_on_commit_callbacks
):
    _, secret = make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    delivery = only_delivery()
    webhook_deliver(delivery.pk)
    with django_capture_on_commit_callbacks(execute=True):
        webhook_redeliver(actor=owner, delivery=delivery)
    assert enqueued[-1] == (delivery.pk, None)
    webhook_deliver(delivery.pk)
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert verify_webhook(secret, second.headers, second.body)
    assert only_delivery().attempts == 1  # a fresh series
    redelivered = AuditEvent.objects.get(action="webhook.redelivered")
    assert redelivered.changes["delivery"] == delivery.pk


# --- The sweep: lost messages and lapsed claims ------------------------------------------------


def test_broker_down_at_commit_then_the_sweep_relays(
    owner, ml_model, receiver, monkeypatch, django_capture_on_commit_callbacks, caplog
):
    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(tasks.deliver_webhook_task, "apply_async", broker_down)
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    with django_capture_on_commit_callbacks(execute=True):
        version = version_create(actor=owner, model=ml_model)  # the change still commits
    assert ModelVersion.objects.filter(pk=version.pk).exists()
    assert "the sweep will" in caplog.text
    delivery = only_delivery()
    assert delivery.status == DeliveryStatus.PENDING

    relayed: list[int] = []
    monkeypatch.setattr(
        tasks.deliver_webhook_task, "apply_async", lambda args, **kw: relayed.append(args[0])
    )
    assert webhook_sweep() == 0  # within the grace period its own task goes first
    with time_machine.travel(timezone.now() + timedelta(minutes=2)):
        assert webhook_sweep() == 1
    assert relayed == [delivery.pk]


def test_sweep_frees_a_claim_whose_worker_died(owner, ml_model, receiver, enqueued):
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    delivery = only_delivery()
    # A worker claimed it and was killed before recording anything.
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.DELIVERING,
        attempts=1,
        next_attempt_at=timezone.now() + webhook_delivery.CLAIM_LEASE,
    )
    webhook_sweep()  # the lease is still running
    assert only_delivery().status == DeliveryStatus.DELIVERING
    with time_machine.travel(timezone.now() + timedelta(minutes=5)):
        webhook_sweep()
        assert only_delivery().status == DeliveryStatus.PENDING
        assert enqueued == [(delivery.pk, None)]
        webhook_deliver(delivery.pk)
    assert only_delivery().status == DeliveryStatus.SUCCEEDED
    assert only_delivery().attempts == 2
    assert receiver.hits == 1


def test_sweep_fails_a_lapsed_claim_that_was_the_last_attempt(owner, ml_model, receiver):
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    WebhookDelivery.objects.update(
        status=DeliveryStatus.DELIVERING,
        attempts=MAX_ATTEMPTS,
        next_attempt_at=timezone.now() - timedelta(minutes=1),
    )
    webhook_sweep()
    assert only_delivery().status == DeliveryStatus.FAILED


@pytest.mark.django_db(transaction=True)
def test_two_workers_at_once_send_once(owner, ml_model, receiver, enqueued):
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    delivery = only_delivery()
    barrier = threading.Barrier(4)
    results: list[Any] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(webhook_deliver(delivery.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(result is not None for result in results) == 1
    assert receiver.hits == 1
    assert only_delivery().attempts == 1


def test_a_silent_tls_server_is_cut_off_too(owner, ml_model, monkeypatch, resolve_to):
    monkeypatch.setattr(webhook_delivery, "TOTAL_TIMEOUT", 0.5)
    with socket.socket() as silent:  # accepts the connection, never answers the handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        resolve_to({"hooks.example.com": ["127.0.0.1"]})
        make_webhook(owner, f"https://hooks.example.com:{port}/", ["version.created"], ml_model)
        version_create(actor=owner, model=ml_model)
        webhook_deliver(only_delivery().pk)
    delivery = only_delivery()
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.duration_ms < 2000
    assert delivery.last_error in (
        "no answer within 0.5 s",
        "cannot connect to 127.0.0.1: timed out",
    )
