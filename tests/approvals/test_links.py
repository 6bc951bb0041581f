"""Email approval links: SECURITY EL-01…EL-13 against the link views.

The emailed URL `/reviews/link/<token>/` only checks the signature, parks the token in the
session and redirects to the tokenless `/reviews/link/`; deciding needs the bound approver's
signed-in session and a CSRF-protected POST there.
"""

import logging
import re
import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth.tokens import default_token_generator
from django.core import signing
from django.db import connections
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import User
from apps.approvals import notifications, tasks
from apps.approvals.access import set_approver
from apps.approvals.link_views import SESSION_KEY
from apps.approvals.links import SALT, link_issue
from apps.approvals.logging import RedactReviewLinks
from apps.approvals.models import PromotionRequest, PromotionStatus, Review, ReviewLink
from apps.approvals.services import (
    promotion_approve,
    promotion_cancel,
    promotion_request,
    promotions_expire,
)
from apps.audit.models import AuditEvent
from apps.registry.services import version_update
from tests.conftest import PASSWORD, make_user

pytestmark = pytest.mark.django_db

CONFIRM = "/reviews/link/"
LOGIN = reverse("accounts:login")


def html(response) -> str:
    return response.content.decode()


def link_path(promotion: PromotionRequest, user) -> str:
    url = link_issue(promotion, user)
    assert url.startswith(settings.REGENT_BASE_URL + "/reviews/link/")
    return url.removeprefix(settings.REGENT_BASE_URL)


def without_csrf(response) -> str:
    """The page minus the per-response masked CSRF token (of the sign-out form)."""
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", html(response))


def token_of(path: str) -> str:
    return path.removeprefix("/reviews/link/").rstrip("/")


def open_link(client: Client, path: str):
    """Follow the email link as a browser does: redirect to the tokenless page."""
    response = client.get(path)
    assert response.status_code == 302 and response["Location"] == CONFIRM
    return client.get(CONFIRM)


def snapshot(promotion: PromotionRequest) -> tuple:
    promotion.refresh_from_db()
    return (
        promotion.status,
        promotion.revision,
        Review.objects.count(),
        ReviewLink.objects.filter(used_at__isnull=False).count(),
        AuditEvent.objects.count(),
    )


@pytest.fixture
def pending(author, v2, production):
    return promotion_request(actor=author, version=v2, stage=production, reason="AUC +0.03")


@pytest.fixture
def path(pending, approver1) -> str:
    """approver1's personal link to the pending production request."""
    return link_path(pending, approver1)


@pytest.fixture
def erin(client, approver1, path) -> Client:
    """approver1 signed in, with the link opened (token parked in the session)."""
    client.force_login(approver1)
    assert open_link(client, path).status_code == 200
    return client


@pytest.fixture
def no_broker(monkeypatch):
    """Decisions enqueue emails on commit: record them instead of publishing to Redis."""
    sent: list[tuple[str, int]] = []
    for name in ("notify_approvers_task", "notify_decision_task", "notify_rollback_task"):
        fake = SimpleNamespace(delay=lambda pk, name=name: sent.append((name, pk)))
        monkeypatch.setattr(tasks, name, fake)
    return sent


# --- The happy path -------------------------------------------------------------------------


def test_link_from_the_email_approves_after_confirmation(
    client, mailoutbox, approver1, pending, no_broker
):
    notifications.notify_approvers(pending.pk)
    mail = next(m for m in mailoutbox if m.to == [approver1.email])
    url = re.search(r"http://testserver(/reviews/link/\S+/)", mail.body)[1]
    client.force_login(approver1)
    page = open_link(client, url)
    body = html(page)
    assert page.status_code == 200
    assert "Promote fraud-detector v2" in body and "AUC +0.03" in body
    assert 'name="decision" value="approve"' in body and 'value="reject"' in body
    assert token_of(url) not in body
    response = client.post(CONFIRM, {"decision": "approve", "comment": "lgtm"})
    assert response.status_code == 303
    assert response["Location"] == reverse("approvals:promotion-detail", args=[pending.pk])
    review = Review.objects.get()
    assert (review.reviewer, review.via, review.comment) == (approver1, "email", "lgtm")
    assert ReviewLink.objects.get(approver=approver1).used_at is not None
    assert SESSION_KEY not in client.session
    assert "Your review is recorded" in html(client.get(response["Location"]))


def test_reject_through_the_link_needs_a_comment(erin, pending, no_broker):
    response = erin.post(CONFIRM, {"decision": "reject", "comment": ""})
    assert response.status_code == 400 and not Review.objects.exists()
    assert ReviewLink.objects.get().used_at is None
    response = erin.post(CONFIRM, {"decision": "reject", "comment": "leaks the label"})
    assert response.status_code == 303
    pending.refresh_from_db()
    assert pending.status == PromotionStatus.REJECTED
    assert Review.objects.get().via == "email"


def test_sign_in_round_trip_keeps_the_link(approver1, path):
    browser = Client()
    page = browser.get(path, follow=True)
    assert page.status_code == 200 and "Sign in to review" in html(page)
    assert "next=%2Freviews%2Flink%2F" in html(page)
    response = browser.post(
        f"{LOGIN}?next={CONFIRM}",
        {"username": approver1.username, "password": PASSWORD, "next": CONFIRM},
    )
    assert response.status_code == 302 and response["Location"] == CONFIRM
    page = browser.get(CONFIRM)
    assert page.status_code == 200 and 'value="approve"' in html(page)


def test_confirmation_page_has_no_auto_submit(erin):
    body = html(erin.get(CONFIRM))
    assert "http-equiv" not in body.lower()
    scripts = re.findall(r"<script\b[^>]*>", body)
    assert all("src=" in tag for tag in scripts)  # no inline script (CSP: script-src 'self')
    assert re.search(r'<form method="post" action="/reviews/link/"', body)


# --- EL-01 scanner pre-fetch ----------------------------------------------------------------


def test_el01_get_and_head_without_cookies_change_nothing(approver1, pending, path, no_broker):
    before = snapshot(pending)
    for _ in range(3):
        for method in ("get", "head"):
            scanner = Client(HTTP_USER_AGENT="HeadlessChrome/120.0")
            response = getattr(scanner, method)(path)
            assert response.status_code == 302
            followed = getattr(scanner, method)(CONFIRM)
            assert followed.status_code == 200  # "Sign in to review", nothing to click
            assert getattr(Client(), method)(CONFIRM).status_code == 404  # no cookie kept
    assert snapshot(pending) == before
    human = Client()
    human.force_login(approver1)
    open_link(human, path)
    assert human.post(CONFIRM, {"decision": "approve"}).status_code == 303


def test_el02_anonymous_post_cannot_act(path, pending):
    scanner = Client(enforce_csrf_checks=True)
    scanner.get(path, follow=True)
    token = scanner.cookies.get("csrftoken")
    data = {"decision": "approve", "csrfmiddlewaretoken": token.value if token else ""}
    assert scanner.post(CONFIRM, data).status_code == 403
    assert not Review.objects.exists()


def test_post_without_csrf_is_refused(approver1, path):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(approver1)
    open_link(browser, path)
    assert browser.post(CONFIRM, {"decision": "approve"}).status_code == 403
    assert not Review.objects.exists() and ReviewLink.objects.get().used_at is None


# --- EL-03 replay ---------------------------------------------------------------------------


def test_el03_second_post_is_410(approver1, pending, path, no_broker):
    first, second = Client(), Client()
    for browser in (first, second):
        browser.force_login(approver1)
        open_link(browser, path)
    assert first.post(CONFIRM, {"decision": "approve"}).status_code == 303
    response = second.post(CONFIRM, {"decision": "approve"})
    assert response.status_code == 410 and "already used" in html(response)
    assert Review.objects.count() == 1
    assert AuditEvent.objects.filter(action="promotion.reviewed").count() == 1
    assert first.post(CONFIRM, {"decision": "approve"}).status_code == 404  # token gone
    assert Review.objects.count() == 1


# --- EL-04 expiry ---------------------------------------------------------------------------


def test_el04_link_expires_after_72_hours(client, approver1, pending, path):
    later = timezone.now() + timedelta(hours=72, seconds=1)
    with time_machine.travel(later, tick=False):
        client.force_login(approver1)
        before = snapshot(pending)
        response = client.get(path)
        assert response.status_code == 410 and "expired" in html(response)
        assert SESSION_KEY not in client.session
        session = client.session
        session[SESSION_KEY] = token_of(path)  # opened before, posted after expiry
        session.save()
        response = client.post(CONFIRM, {"decision": "approve"})
        assert response.status_code == 410 and "expired" in html(response)
    assert snapshot(pending) == before


def test_el04_link_row_expiry_is_checked_too(erin, pending):
    ReviewLink.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = erin.post(CONFIRM, {"decision": "approve"})
    assert response.status_code == 410 and not Review.objects.exists()


# --- EL-05 tampered tokens ------------------------------------------------------------------


def _swap_payload(token: str, **changes: int) -> str:
    """Keep the signature, change the payload (request/reviewer/link id)."""
    payload = signing.loads(token, salt=SALT)
    forged = signing.dumps({**payload, **changes}, salt=SALT, compress=True)
    return forged.split(":", 1)[0] + ":" + token.split(":", 1)[1]


def _tampered(token: str, approver) -> dict[str, str]:
    payload = signing.loads(token, salt=SALT)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    return {
        "flipped": flipped,
        "swapped_link": _swap_payload(token, l=payload["l"] + 1),
        "swapped_user": _swap_payload(token, u=payload["u"] + 1),
        "truncated": token[:-6],
        "empty": "",
        "garbage_10kb": "x" * 10_240,
        "other_salt": signing.dumps(payload, salt="regent.webhooks", compress=True),
        "other_key": signing.dumps(payload, salt=SALT, key="not-our-key", compress=True),
        "password_reset": default_token_generator.make_token(approver),
        "unicode": "é" * 20,
    }


def test_el05_every_tampered_token_gets_the_same_generic_page(client, approver1, path, pending):
    client.force_login(approver1)
    before = snapshot(pending)
    bodies = set()
    for name, token in _tampered(token_of(path), approver1).items():
        for url in (f"/reviews/link/{token}/", f"/reviews/link/{token}"):
            response = client.get(url)
            assert response.status_code == 404, (name, url[:60])
            assert "This link is not valid" in html(response)
            bodies.add(without_csrf(response))
        assert SESSION_KEY not in client.session
    assert len(bodies) == 1
    assert client.get("/reviews/link/a/b/c/").status_code == 404
    assert snapshot(pending) == before


def test_el05_tokenless_page_without_a_link_is_the_generic_page(client, approver1):
    client.force_login(approver1)
    for method in ("get", "post"):
        response = getattr(client, method)(CONFIRM)
        assert response.status_code == 404 and "This link is not valid" in html(response)


# --- EL-06 the link dies when the request or version changes --------------------------------


def _cancel(ctx):
    promotion_cancel(promotion=ctx.pending, actor=ctx.author)


def _supersede(ctx):
    other = promotion_request(actor=ctx.author, version=ctx.v1, stage=ctx.production)
    for reviewer in (ctx.approver1, ctx.approver2):
        promotion_approve(promotion=other, reviewer=reviewer, via="web")


def _expire(ctx):
    PromotionRequest.objects.filter(pk=ctx.pending.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert promotions_expire() == 1


def _past_expiry_before_the_sweep(ctx):
    PromotionRequest.objects.filter(pk=ctx.pending.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )


def _quorum_by_others(ctx):
    PromotionRequest.objects.filter(pk=ctx.pending.pk).update(required_approvals=1)
    promotion_approve(promotion=ctx.pending, reviewer=ctx.approver2, via="web")


def _edit_version(ctx):
    version_update(actor=ctx.author, version=ctx.v2, description="now with different data")


def _edit_tags(ctx):
    version_update(actor=ctx.author, version=ctx.v2, tags={"dataset": "2024-06"})


def _bump_revision(ctx):
    PromotionRequest.objects.filter(pk=ctx.pending.pk).update(revision=ctx.pending.revision + 1)


@pytest.mark.parametrize(
    ("mutate", "status", "text"),
    [
        (_cancel, 410, "closed: cancelled"),
        (_supersede, 410, "closed: superseded"),
        (_expire, 410, "closed: expired"),
        (_past_expiry_before_the_sweep, 410, "closed: expired"),
        (_quorum_by_others, 410, "closed: approved"),
        (_edit_version, 409, "changed after the email was sent"),
        (_edit_tags, 409, "changed after the email was sent"),
        (_bump_revision, 409, "changed after the email was sent"),
    ],
)
def test_el06_link_dies_when_things_change(
    request, erin, approver1, pending, no_broker, mutate, status, text
):
    names = ("author", "approver1", "approver2", "v1", "v2", "production")
    ctx = SimpleNamespace(pending=pending, **{n: request.getfixturevalue(n) for n in names})
    mutate(ctx)
    reviews = Review.objects.count()
    token = erin.session[SESSION_KEY]
    for method in ("get", "post"):
        session = erin.session
        session[SESSION_KEY] = token  # a dead link leaves the session: put it back to POST
        session.save()
        response = getattr(erin, method)(CONFIRM, {"decision": "approve"})
        assert response.status_code == status, method
        assert text in html(response)
    assert not Review.objects.filter(promotion=pending, reviewer=approver1).exists()
    assert Review.objects.count() == reviews
    assert ReviewLink.objects.filter(approver=approver1, used_at__isnull=False).count() == 0


# --- EL-07 wrong person ---------------------------------------------------------------------


@pytest.mark.parametrize("who", ["approver2", "outsider", "owner"])
def test_el07_link_of_another_reviewer_is_403(request, client, who, path, pending, no_broker):
    user = request.getfixturevalue(who)
    client.force_login(user)
    page = open_link(client, path)
    assert page.status_code == 403 and "belongs to another reviewer" in html(page)
    assert "fraud-detector" not in html(page)  # nothing about the request leaks
    response = client.post(CONFIRM, {"decision": "approve"})
    assert response.status_code == 403
    assert not Review.objects.exists() and ReviewLink.objects.get().used_at is None
    event = AuditEvent.objects.get(action="approval_link.denied")
    assert event.actor_name == user.username and token_of(path) not in str(event.changes)


def test_el07_other_approver_can_still_review_on_the_web(client, approver2, path, pending):
    from apps.approvals.links import version_fingerprint

    client.force_login(approver2)
    open_link(client, path)
    data = {"revision": pending.revision, "version_state": version_fingerprint(pending.version)}
    response = client.post(reverse("approvals:promotion-approve", args=[pending.pk]), data)
    assert response.status_code == 302 and Review.objects.get().reviewer == approver2


# --- EL-08 permission revoked after sending -------------------------------------------------


def test_el08_revoked_approver_is_refused(erin, approver1, production, pending, no_broker):
    from apps.approvals.services import ensure_can_review

    set_approver(approver1, production, False)
    with pytest.raises(Exception, match="not an approver"):
        ensure_can_review(pending, approver1)  # the same User instance, no stale cache
    response = erin.post(CONFIRM, {"decision": "approve"})
    assert response.status_code == 403 and "not an approver" in html(response)
    assert not Review.objects.exists()
    assert ReviewLink.objects.get().used_at is None  # rolled back with the refusal
    assert AuditEvent.objects.filter(action="approval_link.denied").count() == 1


def test_el08_removed_from_the_approver_team(client, approver1, fraud_model, production, pending):
    from django.contrib.auth.models import Group

    team = Group.objects.create(name="risk")
    set_approver(approver1, production, False)
    set_approver(team, production, True)
    approver1.groups.add(team)
    path = link_path(pending, approver1)
    client.force_login(approver1)
    assert open_link(client, path).status_code == 200
    approver1.groups.remove(team)
    assert client.post(CONFIRM, {"decision": "approve"}).status_code == 403
    assert not Review.objects.exists()


def test_el08_deactivated_approver_is_signed_out(erin, approver1, pending):
    approver1.is_active = False
    approver1.save()
    response = erin.post(CONFIRM, {"decision": "approve"})
    assert response.status_code == 403 and "Sign in to review" in html(response)
    assert not Review.objects.exists()


# --- EL-09 approve and reject raced ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_el09_approve_and_reject_raced(owner, author, approver1, approver2, v2, production):
    # (fixtures re-created under transaction=True: threads see committed rows)
    pending = promotion_request(actor=author, version=v2, stage=production)
    tabs = [Client(), Client()]
    tabs[0].force_login(approver1)
    open_link(tabs[0], link_path(pending, approver1))
    tabs[1].cookies = tabs[0].cookies  # two tabs, one session
    barrier = threading.Barrier(2)
    statuses: list[int] = []
    forms = [{"decision": "approve"}, {"decision": "reject", "comment": "no"}]

    def post(tab: Client, form: dict) -> None:
        try:
            barrier.wait(timeout=10)
            statuses.append(tab.post(CONFIRM, form).status_code)
        finally:
            connections.close_all()

    original = (tasks.notify_decision_task, tasks.notify_approvers_task)
    silent = SimpleNamespace(delay=lambda pk: None)
    tasks.notify_decision_task = tasks.notify_approvers_task = silent
    try:
        threads = [threading.Thread(target=post, args=pair) for pair in zip(tabs, forms)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        tasks.notify_decision_task, tasks.notify_approvers_task = original
    assert Review.objects.count() == 1
    assert sorted(statuses)[0] == 303 and sorted(statuses)[1] in (404, 409, 410)
    assert ReviewLink.objects.filter(used_at__isnull=False).count() == 1


# --- EL-10 the token never leaks ------------------------------------------------------------


def test_el10_headers_on_every_link_response(client, approver1, path, pending):
    token_urls = [client.get(path), client.get("/reviews/link/forged/")]
    tokenless = [client.get(CONFIRM)]
    client.force_login(approver1)
    token_urls.append(client.get(path))
    tokenless.append(client.get(CONFIRM))
    other = Client()
    other.force_login(make_user("mallory"))
    token_urls.append(other.get(path))
    tokenless.append(other.get(CONFIRM))  # 403 wrong person
    with time_machine.travel(timezone.now() + timedelta(hours=73), tick=False):
        token_urls.append(Client().get(path))  # 410 expired
    for response in token_urls:
        # The token is in this URL: no page it leads to may send it anywhere as a Referer.
        assert response["Referrer-Policy"] == "no-referrer", response.status_code
    for response in tokenless:
        # No token in this URL; same-origin keeps the POST's Origin header for CSRF.
        assert response["Referrer-Policy"] == "same-origin", response.status_code
    for response in token_urls + tokenless:
        assert "no-store" in response["Cache-Control"]
    assert [r.status_code for r in token_urls] == [302, 404, 302, 302, 410]
    assert [r.status_code for r in tokenless] == [200, 200, 403]


def test_el10_token_never_in_the_logs(client, caplog, approver1, path, pending, no_broker):
    caplog.handler.addFilter(RedactReviewLinks())  # as on the handlers configured in settings
    caplog.set_level(logging.DEBUG)
    token = token_of(path)
    client.force_login(approver1)
    client.get(path[:-10] + "tampered/")  # 404: django.request logs the path
    client.post(path)  # 405 on the token route
    open_link(client, path)
    client.post(CONFIRM, {"decision": "approve"})
    client.post(CONFIRM, {"decision": "approve"})  # 404: token gone
    assert "Not Found: /reviews/link/[redacted]" in caplog.text
    assert token not in caplog.text and token[:40] not in caplog.text
    for record in caplog.records:
        assert token[:40] not in record.getMessage()
    assert token[:40] not in str(list(AuditEvent.objects.values_list("changes", flat=True)))


def test_el10_settings_install_the_filter_on_every_handler():
    redactors = {
        name
        for name, spec in settings.LOGGING.get("filters", {}).items()
        if spec.get("()") in ("apps.approvals.logging.RedactReviewLinks", RedactReviewLinks)
    }
    assert redactors
    for name, handler in settings.LOGGING["handlers"].items():
        assert redactors & set(handler.get("filters", [])), name


def test_el10_filter_redacts_tuples_and_gunicorn_atoms():
    redact = RedactReviewLinks()
    record = logging.LogRecord(
        "gunicorn.access", logging.INFO, "", 0, '%(h)s "%(r)s" %(s)s', None, None
    )
    record.args = {"h": "10.0.0.1", "r": "GET /reviews/link/abc.def:ghi/ HTTP/1.1", "s": "302"}
    redact.filter(record)
    assert record.getMessage() == '10.0.0.1 "GET /reviews/link/[redacted] HTTP/1.1" 302'
    record = logging.LogRecord(
        "django.request", logging.WARNING, "", 0, "%s: %s", ("Not Found", "/reviews/link/x/"), None
    )
    redact.filter(record)
    assert record.getMessage() == "Not Found: /reviews/link/[redacted]"
    message = "GET /reviews/link/ 200 and %2Freviews%2Flink%2Fsecret"
    record = logging.LogRecord("x", logging.INFO, "", 0, message, None, None)
    redact.filter(record)
    assert record.getMessage() == "GET /reviews/link/ 200 and %2Freviews%2Flink%2F[redacted]"


# --- EL-11 secret rotation ------------------------------------------------------------------


def test_el11_old_links_work_while_the_old_key_is_a_fallback(approver1, pending, no_broker):
    with override_settings(SECRET_KEY="old-" + "k" * 50):
        path = link_path(pending, approver1)
    with override_settings(SECRET_KEY="new-" + "k" * 50, SECRET_KEY_FALLBACKS=[]):
        browser = Client()
        browser.force_login(approver1)
        assert browser.get(path).status_code == 404  # generic invalid page, no 500
    with override_settings(SECRET_KEY="new-" + "k" * 50, SECRET_KEY_FALLBACKS=["old-" + "k" * 50]):
        browser = Client()
        browser.force_login(approver1)
        assert open_link(browser, path).status_code == 200
        assert browser.post(CONFIRM, {"decision": "approve"}).status_code == 303
    assert Review.objects.get().via == "email"


# --- EL-12 links come from the configured base URL ------------------------------------------


def test_el12_foreign_host_is_refused(client, author, v2):
    client.force_login(author)
    url = reverse("approvals:promotion-create", args=["fraud-detector", v2.number])
    response = client.post(url, {"stage": "production"}, HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert not PromotionRequest.objects.exists()


def test_el12_links_use_regent_base_url_whatever_the_request_said(
    client, settings, mailoutbox, monkeypatch, author, v2, django_capture_on_commit_callbacks
):
    settings.REGENT_BASE_URL = "https://regent.example.org"
    monkeypatch.setattr(
        tasks, "notify_approvers_task", SimpleNamespace(delay=notifications.notify_approvers)
    )
    client.force_login(author)
    url = reverse("approvals:promotion-create", args=["fraud-detector", v2.number])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            url,
            {"stage": "production"},
            HTTP_HOST="localhost",
            HTTP_X_FORWARDED_HOST="evil.example",
        )
    assert response.status_code == 302
    assert len(mailoutbox) == 2
    for mail in mailoutbox:
        body = mail.body + mail.alternatives[0][0]
        assert "https://regent.example.org/reviews/link/" in body
        assert "evil.example" not in body and "localhost" not in body


# --- EL-13 the bound user's stored address only ---------------------------------------------


def test_el13_mail_goes_to_the_stored_address_only(mailoutbox, approver1, approver2, pending):
    for index, lookalike in enumerate(
        ["ERIN@example.com", "erin@example.com.", "erin+x@example.com", "er\u0131n@example.com"]
    ):
        User.objects.create_user(f"lookalike{index}", lookalike, PASSWORD)
    approver1.email = "Erin.Smith@Example.com"
    approver1.save()
    notifications.notify_approvers(pending.pk)
    assert sorted(tuple(mail.to) for mail in mailoutbox) == [
        ("Erin.Smith@Example.com",),
        ("frank@example.com",),
    ]
    for mail in mailoutbox:
        assert not mail.cc and not mail.bcc
