"""Approval emails: one per recipient and event, to the right people, with the right link.

Tasks call these functions; running them twice (a redelivered task) sends nothing twice.
SMTP failures against a real server are in tests/e2e/test_approval_email_smtp.py.
"""

import re

import pytest

from apps.approvals import notifications
from apps.approvals.models import Notification, NotificationStatus, ReviewLink
from apps.approvals.services import (
    promotion_approve,
    promotion_cancel,
    promotion_reject,
    promotion_request,
    stage_rollback,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def pending(author, v2, production):
    return promotion_request(actor=author, version=v2, stage=production, reason="AUC +0.03")


def recipients(mailoutbox) -> list[str]:
    return sorted(address for mail in mailoutbox for address in mail.to)


def test_review_request_goes_once_to_each_eligible_approver(
    mailoutbox, approver1, approver2, pending
):
    notifications.notify_approvers(pending.pk)
    notifications.notify_approvers(pending.pk)  # the task delivered twice
    assert recipients(mailoutbox) == [approver1.email, approver2.email]
    assert ReviewLink.objects.count() == 2  # one personal link each, none for the repeat
    mail = next(m for m in mailoutbox if m.to == [approver1.email])
    assert "fraud-detector/2" in mail.subject and "production" in mail.subject
    assert "AUC +0.03" in mail.body and "auc" in mail.body
    assert re.search(r"http://testserver/reviews/link/[^/\s]+/", mail.body)
    html, mimetype = mail.alternatives[0]
    assert mimetype == "text/html" and "/reviews/link/" in html
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}


def test_requester_and_author_are_not_asked(mailoutbox, author, approver1, approver2, v2, staging):
    # approver1 asks: they are the requester; bob authored the version. Only frank reviews.
    promotion = promotion_request(actor=approver1, version=v2, stage=staging)
    notifications.notify_approvers(promotion.pk)
    assert recipients(mailoutbox) == [approver2.email]
    assert author.email not in recipients(mailoutbox)


def test_closed_requests_get_no_review_email(mailoutbox, author, pending):
    promotion_cancel(promotion=pending, actor=author)
    notifications.notify_approvers(pending.pk)
    notifications.notify_approvers(999_999)  # a request that no longer exists
    assert mailoutbox == [] and not ReviewLink.objects.exists()


def test_approvers_without_email_are_skipped(mailoutbox, approver1, approver2, pending):
    approver1.email = ""
    approver1.save()
    notifications.notify_approvers(pending.pk)
    assert recipients(mailoutbox) == [approver2.email]


def test_decision_email_goes_once_to_the_requester(
    mailoutbox, author, approver1, approver2, pending
):
    promotion_approve(promotion=pending, reviewer=approver1, comment="lgtm", via="web")
    notifications.notify_decision(pending.pk)  # still pending: nothing to say yet
    assert mailoutbox == []
    promotion_approve(promotion=pending, reviewer=approver2, via="email")
    notifications.notify_decision(pending.pk)
    notifications.notify_decision(pending.pk)
    assert recipients(mailoutbox) == [author.email]
    [mail] = mailoutbox
    assert "approved" in mail.subject and "lgtm" in mail.body
    assert f"http://testserver/reviews/{pending.pk}/" in mail.body


def test_rejection_email_carries_the_reason(mailoutbox, author, approver1, pending):
    promotion_reject(promotion=pending, reviewer=approver1, comment="label leak", via="web")
    notifications.notify_decision(pending.pk)
    [mail] = mailoutbox
    assert mail.to == [author.email] and "rejected" in mail.subject
    assert "label leak" in mail.body


def test_rollback_email_goes_once_to_the_approvers(
    mailoutbox, author, approver1, approver2, v1, v2, staging
):
    for version in (v1, v2):
        promotion = promotion_request(actor=author, version=version, stage=staging)
        promotion_approve(promotion=promotion, reviewer=approver1, via="web")
    stage_rollback(stage=staging, actor=approver2, reason="v2 doubles latency")
    assignment = staging.history.get(ended_at__isnull=True)
    notifications.notify_rollback(assignment.pk)
    notifications.notify_rollback(assignment.pk)
    assert recipients(mailoutbox) == [approver1.email, approver2.email]
    mail = mailoutbox[0]
    assert "rolled back to v1" in mail.subject and "v2 doubles latency" in mail.body
    assert "http://testserver/models/fraud-detector/stages/staging/" in mail.body


def test_links_in_mail_use_the_configured_base_url(settings, mailoutbox, pending):
    settings.REGENT_BASE_URL = "https://regent.example.org"
    notifications.notify_approvers(pending.pk)
    for mail in mailoutbox:
        assert "https://regent.example.org/reviews/link/" in mail.body
        assert "testserver" not in mail.body + mail.alternatives[0][0]


def test_mail_content_is_escaped(mailoutbox, author, approver1, v2, staging):
    promotion = promotion_request(
        actor=author, version=v2, stage=staging, reason='<script>alert("x")</script>'
    )
    notifications.notify_approvers(promotion.pk)
    html = mailoutbox[0].alternatives[0][0]
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_failed_notification_status_is_recorded(mailoutbox, monkeypatch, approver1, pending):
    import smtplib

    def refuse(*args, **kwargs):
        raise smtplib.SMTPDataError(550, b"5.7.1 Rejected by policy")

    monkeypatch.setattr("django.core.mail.EmailMultiAlternatives.send", refuse)
    notifications.notify_approvers(pending.pk)  # permanent: no exception, no retry
    statuses = set(Notification.objects.values_list("status", "last_error"))
    assert statuses == {(NotificationStatus.FAILED, "550 5.7.1 Rejected by policy")}
