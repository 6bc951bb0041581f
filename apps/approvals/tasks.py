"""Approval emails and the expiry sweep. Thin: ids in, reload, idempotent services."""

from celery import shared_task

from apps.approvals import notifications
from apps.approvals.notifications import TemporaryEmailFailure
from apps.approvals.services import promotions_expire

EMAIL_RETRY = {
    "autoretry_for": (TemporaryEmailFailure,),
    "retry_backoff": 30,
    "retry_backoff_max": 3600,
    "retry_jitter": True,
    "max_retries": 8,
    "acks_late": True,
}


@shared_task(**EMAIL_RETRY)
def notify_approvers_task(promotion_id: int) -> None:
    notifications.notify_approvers(promotion_id)


@shared_task(**EMAIL_RETRY)
def notify_decision_task(promotion_id: int) -> None:
    notifications.notify_decision(promotion_id)


@shared_task(**EMAIL_RETRY)
def notify_rollback_task(assignment_id: int) -> None:
    notifications.notify_rollback(assignment_id)


@shared_task(acks_late=True)
def expire_requests_task() -> int:
    return promotions_expire()
