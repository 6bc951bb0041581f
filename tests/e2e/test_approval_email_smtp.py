"""Approval emails through a real SMTP server (SECURITY WF-13, EL-02, EL-10).

451 (try later): the task raises `TemporaryEmailFailure` for Celery to retry, the row goes
back to pending, and the next run sends it. 550 (rejected): the row is marked failed with
the server's reply, no exception (no retry storm), and the request page names the failure.
The link in the received mail, opened in Chromium: a scanner that clicks everything changes
nothing; the approver signs in, confirms, and the token never travels in a Referer.
"""

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.approvals import notifications
from apps.approvals.access import set_approver
from apps.approvals.models import (
    Notification,
    NotificationStatus,
    PromotionStatus,
    Review,
    ReviewLink,
    Stage,
)
from apps.approvals.notifications import TemporaryEmailFailure
from apps.approvals.services import promotion_request, stages_create_defaults
from apps.registry.access import grant_creator_ownership
from apps.registry.models import ModelVersion, RegisteredModel, VersionStatus
from tests.approvals.conftest import grant
from tests.conftest import PASSWORD, make_user
from tests.e2e.conftest import SMTP_REJECT, SMTP_TEMPFAIL, screenshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(db):
    return {name: make_user(name) for name in ("alice", "bob", "erin")}


@pytest.fixture
def pending(people):
    owner, author, approver = people["alice"], people["bob"], people["erin"]
    model = RegisteredModel.objects.create(name="churn", name_key="churn", created_by=owner)
    grant_creator_ownership(owner, model)
    grant(author, model, "editor")
    grant(approver, model, "viewer")
    stages_create_defaults(model)
    staging = Stage.objects.get(model=model, name="staging")
    set_approver(approver, staging, True)
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        status=VersionStatus.READY,
        created_by=author,
        metrics={"auc": 0.91},
        verified_at=timezone.now(),
    )
    return promotion_request(actor=author, version=version, stage=staging, reason="first")


def notification() -> Notification:
    return Notification.objects.get(kind=notifications.REVIEW_REQUESTED)


def test_review_email_reaches_the_server(smtp_server, people, pending):
    notifications.notify_approvers(pending.pk)
    [received] = smtp_server.messages
    assert received.rcpt_tos == [people["erin"].email]
    assert "churn/1" in received.message["Subject"]
    assert "/reviews/link/" in received.body("plain") and "/reviews/link/" in received.body("html")
    assert notification().status == NotificationStatus.SENT


def test_451_is_retried_then_sent(smtp_server, people, pending):
    smtp_server.respond_with(SMTP_TEMPFAIL, at="DATA")
    with pytest.raises(TemporaryEmailFailure, match="451"):
        notifications.notify_approvers(pending.pk)
    row = notification()
    assert row.status == NotificationStatus.PENDING and row.attempts == 1
    assert row.last_error.startswith("451")
    assert smtp_server.messages == []

    smtp_server.respond_with(None, at="DATA")
    notifications.notify_approvers(pending.pk)  # the retry
    notifications.notify_approvers(pending.pk)  # and a duplicate delivery of it
    assert len(smtp_server.messages) == 1
    row = notification()
    assert row.status == NotificationStatus.SENT and row.attempts == 2


def test_550_marks_the_notification_failed_and_shows_it(client, smtp_server, people, pending):
    smtp_server.respond_with(SMTP_REJECT, at="DATA")
    notifications.notify_approvers(pending.pk)  # no exception: a permanent failure
    row = notification()
    assert row.status == NotificationStatus.FAILED
    assert row.last_error == SMTP_REJECT
    smtp_server.respond_with(None, at="DATA")
    notifications.notify_approvers(pending.pk)  # never re-sent on its own
    assert smtp_server.messages == []
    client.force_login(people["bob"])  # the requester sees it on the request page
    page = client.get(reverse("approvals:promotion-detail", args=[pending.pk]))
    assert "Email to <strong>erin</strong> failed — 550 5.7.1 Rejected" in page.content.decode()


def test_550_at_rcpt_is_permanent_too(smtp_server, pending):
    smtp_server.respond_with(SMTP_REJECT, at="RCPT")
    notifications.notify_approvers(pending.pk)
    assert notification().status == NotificationStatus.FAILED


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_emailed_link_in_a_browser(
    browser, page, console_errors, live_server, settings, smtp_server, people, pending, monkeypatch
):
    from types import SimpleNamespace

    from apps.approvals import tasks

    monkeypatch.setattr(tasks, "notify_decision_task", SimpleNamespace(delay=lambda pk: None))
    settings.REGENT_BASE_URL = live_server.url
    notifications.notify_approvers(pending.pk)
    [received] = smtp_server.messages
    link = re.search(r"(http://\S+/reviews/link/\S+/)", received.body("plain"))[1]
    token = link.rstrip("/").rsplit("/", 1)[1]

    # A scanner: fresh browser, no session, waits for the network, clicks every button.
    scanner = browser.new_context().new_page()
    scanner.goto(link)
    scanner.wait_for_load_state("networkidle")
    assert "Sign in to review" in scanner.content()
    assert not scanner.query_selector("meta[http-equiv]")
    for button in scanner.query_selector_all("main button, main input[type=submit]"):
        button.click()
    scanner.context.close()
    assert not Review.objects.exists() and ReviewLink.objects.get().used_at is None

    # The approver: signs in from the link, comes back to the confirmation, approves.
    sent: list[tuple[str, str]] = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("referer", ""))))
    page.goto(link)
    assert token not in page.url
    page.click("main a:has-text('Sign in')")
    page.fill("input[name=username]", "erin")
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("main button[type=submit]")
    assert page.url.endswith("/reviews/link/")
    page.fill("textarea[name=comment]", "Checked the holdout numbers.")
    with page.expect_navigation():
        page.click("button[value=approve]")
    screenshot(page, "approval-link-approved")
    assert page.url.endswith(f"/reviews/{pending.pk}/")
    assert "Your review is recorded" in page.content()
    review = Review.objects.get()
    assert (review.reviewer.username, review.via) == ("erin", "email")
    pending.refresh_from_db()
    assert pending.status == PromotionStatus.APPROVED  # staging needs one approval
    for url, referer in sent:
        assert token not in referer, url
        assert token not in url or url == link, url
    assert console_errors == []
