"""Background work for the audit log."""

import logging

from celery import shared_task

from apps.audit.selectors import audit_verify_chain
from apps.audit.services import audit_check_record

logger = logging.getLogger(__name__)


@shared_task(acks_late=True)
def audit_verify_task() -> bool:
    """The daily chain check: recompute the hash chain and remember the result.

    Safe to run twice or late: it only reads the chain and adds one `AuditCheck` row.
    """
    report = audit_verify_chain()
    audit_check_record(report)
    if not report.ok:
        logger.error(
            "Audit chain BROKEN at %s (%d events verified before it)",
            report.message,
            report.events_checked,
        )
    return report.ok


# --- Webhooks ----------------------------------------------------------------------------------
# Appended: the delivery task and its sweep (apps.audit.webhook_delivery does the work).


@shared_task(bind=True, acks_late=True, max_retries=None)
def deliver_webhook_task(self, delivery_id: int) -> str | None:
    """One attempt at a webhook delivery; a failed attempt schedules the next one.

    Idempotent: the attempt starts with a conditional claim of the row, so a duplicate
    message, a late retry or a run after success sends nothing. The row's `attempts` (not
    Celery's retry count) bounds the retries; the countdown matches its `next_attempt_at`,
    and the periodic sweep re-enqueues anything whose message was lost.
    """
    from apps.audit.webhook_delivery import retry_in_seconds, webhook_deliver

    delivery = webhook_deliver(delivery_id)
    countdown = retry_in_seconds(delivery)
    if countdown is not None and not (self.request.called_directly or self.request.is_eager):
        # +1 s: never wake before the row is due (the claim would skip it).
        raise self.retry(countdown=countdown + 1)
    return delivery.status if delivery is not None else None


@shared_task(acks_late=True)
def webhook_sweep_task() -> int:
    """Re-enqueue due webhook deliveries whose task was lost; free lapsed claims."""
    from apps.audit.webhook_delivery import webhook_sweep

    return webhook_sweep()
