"""Emails about promotion requests, sent at most once per recipient and event.

A `Notification` row (unique on request, recipient, kind, event) is created first and then
claimed by a conditional update; a task that runs twice, or two workers at once, find the
row already claimed or sent and send nothing. SMTP failures: temporary ones (4xx, refused
connection) put the row back for a retry with backoff; permanent ones (5xx) mark it failed
with the server's reply, shown on the request page.
"""

import logging
import smtplib
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.utils import timezone

from apps.approvals.access import approvers_of
from apps.approvals.links import link_issue
from apps.approvals.models import (
    Notification,
    NotificationStatus,
    PromotionRequest,
    PromotionStatus,
    StageAssignment,
)
from apps.approvals.selectors import metrics_comparison

logger = logging.getLogger(__name__)

REVIEW_REQUESTED = "review_requested"
DECISION = "decision"
ROLLBACK = "rollback"


class TemporaryEmailFailure(Exception):
    """Try again later (SMTP 4xx, connection refused or timed out)."""


def eligible_reviewers(promotion: PromotionRequest) -> list[Any]:
    excluded = {promotion.requested_by_id, promotion.version.created_by_id}
    return [user for user in approvers_of(promotion.stage) if user.pk not in excluded]


def _claim(promotion: PromotionRequest, recipient: Any, kind: str, event_key: str = "") -> bool:
    """True when this call owns the (only) send of this notification."""
    try:
        with transaction.atomic():
            notification, _ = Notification.objects.get_or_create(
                promotion=promotion, recipient=recipient, kind=kind, event_key=event_key
            )
    except IntegrityError:
        return False
    claimed = Notification.objects.filter(
        pk=notification.pk, status=NotificationStatus.PENDING
    ).update(status=NotificationStatus.SENDING, attempts=F("attempts") + 1)
    return claimed == 1


def _finish(promotion, recipient, kind: str, event_key: str, error: str = "", retry=False):
    status = NotificationStatus.SENT
    if error:
        status = NotificationStatus.PENDING if retry else NotificationStatus.FAILED
    Notification.objects.filter(
        promotion=promotion, recipient=recipient, kind=kind, event_key=event_key
    ).update(status=status, last_error=error[:2000], sent_at=timezone.now() if not error else None)


def _send(recipient: Any, subject: str, template: str, context: dict[str, Any]) -> None:
    context = {**context, "recipient": recipient, "base_url": settings.REGENT_BASE_URL}
    text = render_to_string(f"approvals/email/{template}.txt", context)
    html = render_to_string(f"approvals/email/{template}.html", context)
    message = EmailMultiAlternatives(subject, text, to=[recipient.email])
    message.attach_alternative(html, "text/html")
    message.send()


def _deliver(promotion, recipient, kind: str, event_key: str, build) -> None:
    """Claim, send, record; raise TemporaryEmailFailure for the task to retry."""
    if not recipient.email or not _claim(promotion, recipient, kind, event_key):
        return
    try:
        subject, template, context = build()
        _send(recipient, subject, template, context)
    except smtplib.SMTPRecipientsRefused as error:
        codes = [code for code, _ in error.recipients.values()]
        temporary = any(400 <= code < 500 for code in codes)
        reply = "; ".join(f"{code} {_text(message)}" for code, message in error.recipients.values())
        _finish(promotion, recipient, kind, event_key, reply, retry=temporary)
        if temporary:
            raise TemporaryEmailFailure(reply) from error
        return
    except smtplib.SMTPResponseException as error:
        temporary = 400 <= error.smtp_code < 500
        _finish(promotion, recipient, kind, event_key, _reply(error), retry=temporary)
        if temporary:
            raise TemporaryEmailFailure(_reply(error)) from error
        return
    except (OSError, smtplib.SMTPException) as error:
        _finish(promotion, recipient, kind, event_key, str(error) or repr(error), retry=True)
        raise TemporaryEmailFailure(str(error)) from error
    _finish(promotion, recipient, kind, event_key)


def _reply(error: smtplib.SMTPResponseException) -> str:
    return f"{error.smtp_code} {_text(error.smtp_error)}"


def _text(message: bytes | str) -> str:
    return message.decode(errors="replace") if isinstance(message, bytes) else str(message)


def notify_approvers(promotion_id: int) -> None:
    """Each eligible approver of a pending request gets a personal link, once."""
    promotion = _load(promotion_id)
    if promotion is None or promotion.status != PromotionStatus.PENDING:
        return
    failures = []
    for reviewer in eligible_reviewers(promotion):
        try:
            _deliver(promotion, reviewer, REVIEW_REQUESTED, "", _review_mail(promotion, reviewer))
        except TemporaryEmailFailure as error:
            failures.append(error)
    if failures:
        raise failures[0]


def _review_mail(promotion: PromotionRequest, reviewer: Any):
    def build():
        context = {
            "promotion": promotion,
            "comparison": metrics_comparison(promotion.version, promotion.stage.current_version),
            "link": link_issue(promotion, reviewer),
        }
        subject = (
            f"[Regent] Review: {promotion.version} → {promotion.stage.name} "
            f"(requested by {promotion.requested_by.get_username()})"
        )
        return subject, "review_requested", context

    return build


def notify_decision(promotion_id: int) -> None:
    """The requester learns the outcome of their request, once."""
    promotion = _load(promotion_id)
    if promotion is None or promotion.status not in (
        PromotionStatus.APPROVED,
        PromotionStatus.REJECTED,
    ):
        return

    def build():
        subject = f"[Regent] {promotion.version} → {promotion.stage.name}: {promotion.status}"
        context = {"promotion": promotion, "reviews": list(promotion.reviews.all())}
        return subject, "decision", context

    _deliver(promotion, promotion.requested_by, DECISION, "", build)


def notify_rollback(assignment_id: int) -> None:
    """Approvers of the stage hear that it was rolled back, once per rollback."""
    assignment = (
        StageAssignment.objects.select_related("stage__model", "version", "assigned_by")
        .filter(pk=assignment_id, is_rollback=True)
        .first()
    )
    if assignment is None:
        return
    promotion = (
        PromotionRequest.objects.filter(stage=assignment.stage).order_by("-created_at").first()
    )
    if promotion is None:
        return  # Notifications hang off a request; a stage never promoted has no audience.

    def build():
        subject = f"[Regent] {assignment.stage} rolled back to v{assignment.version.number}"
        return subject, "rollback", {"assignment": assignment}

    for approver in approvers_of(assignment.stage):
        _deliver(promotion, approver, ROLLBACK, str(assignment.pk), build)


def _load(promotion_id: int) -> PromotionRequest | None:
    return (
        PromotionRequest.objects.select_related(
            "version__model", "stage__current_version", "requested_by", "version__created_by"
        )
        .filter(pk=promotion_id)
        .first()
    )
