"""The whole approval story with real parts (issue "Done when", item 8; SECURITY EL-02, EL-10).

A version goes from request to production with two approvals — one from the link in a real
email, one from the reviews inbox — while its author's own approval is refused; production
is then rolled back in one action; the inbox, the stage history, the emails and the audit
log all tell the same story.

Real parts: Chromium through Playwright against `live_server`; a real `celery worker`
subprocess (Redis broker, the test database) sends every email of the story to an aiosmtpd
server. Only the queue name is redirected, to the test worker's: the approval tasks'
`.delay` becomes `apply_async(queue=worker.queue)`.

Set-up goes through the services, quietly (its own tasks are dropped, never published, and
the versions are verified in this process): alice owns
"fraud-detector", bob (editor) registers v1 and v2 with a file each, erin and frank (viewers)
approve production, and v1 already holds production so that a rollback has a target.
"""

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import Browser, Page, Request

from apps.accounts.models import User
from apps.accounts.services import role_grant
from apps.approvals import notifications
from apps.approvals import tasks as approval_tasks
from apps.approvals.links import version_fingerprint
from apps.approvals.models import (
    Notification,
    NotificationStatus,
    PromotionRequest,
    PromotionStatus,
    Review,
    ReviewLink,
    Stage,
    StageAssignment,
)
from apps.approvals.services import approver_set, promotion_approve, promotion_request
from apps.audit.context import Via
from apps.audit.models import AuditEvent
from apps.audit.selectors import audit_verify_chain
from apps.registry import tasks as registry_tasks
from apps.registry.artifacts import artifact_upload, version_seal, version_verify
from apps.registry.models import ModelVersion, RegisteredModel, VersionStatus
from apps.registry.services import model_create, version_create
from tests.conftest import PASSWORD, make_user
from tests.e2e.conftest import (
    PAGE_TIMEOUT_MS,
    VIEWPORT,
    CeleryWorker,
    ReceivedMessage,
    SmtpServer,
    _record_console_error,
    _test_failed,
    _try_screenshot,
    sign_in,
    wait_until,
)
from tests.e2e.conftest import screenshot as save_screenshot

MODEL = "fraud-detector"
MAIL_TIMEOUT = 20.0
SHOT = "approval-story"
OWN_REVIEW_REFUSED = "Authors and requesters cannot review their own promotion."
ERIN_COMMENT = "Holdout AUC is up and the drift report is clean."
FRANK_COMMENT = "Shadow traffic matches; ship it."
ROLLBACK_REASON = "False positives doubled on the EU card traffic."
# What a mail scanner "clicks": anything that looks like it might act.
CLICKABLE = (
    "button, input[type=submit], input[type=button], input[type=image], input[type=reset], "
    "[role=button]"
)
STORY_ACTIONS = ("promotion.", "stage.", "approval_link.")
ROUTED_TASKS = (
    approval_tasks.notify_approvers_task,
    approval_tasks.notify_decision_task,
    approval_tasks.notify_rollback_task,
    registry_tasks.version_verify_task,
)


@dataclass
class Cast:
    alice: User
    bob: User
    erin: User
    frank: User
    model: RegisteredModel
    production: Stage
    v1: ModelVersion
    v2: ModelVersion
    v1_request: PromotionRequest


# --- Browser contexts for each person -------------------------------------------------------


@pytest.fixture
def open_page(
    browser: Browser, console_errors: list[str], request: pytest.FixtureRequest
) -> Iterator[Callable[[str], Page]]:
    """`open_page(name)`: a page in a fresh context (its own cookies), console errors
    recorded with the test's; screenshots of every such page if the test fails."""
    pages: dict[str, Page] = {}

    def open_(name: str) -> Page:
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        context.set_default_navigation_timeout(PAGE_TIMEOUT_MS)
        page = context.new_page()
        page.on("console", lambda message: _record_console_error(message, console_errors))
        page.on("pageerror", lambda error: console_errors.append(f"pageerror {name}: {error}"))
        pages[name] = page
        return page

    try:
        yield open_
    finally:
        for name, page in pages.items():
            if _test_failed(request.node):
                _try_screenshot(page, f"{request.node.name}-{name}-failed")
            page.context.close()


def shot(page: Page, step: str) -> str:
    return str(save_screenshot(page, f"{SHOT}-{step}"))


# --- Set-up through the services --------------------------------------------------------------


def _version(bob: User, model: RegisteredModel, metrics: dict[str, float], data: bytes):
    version = version_create(
        actor=bob, model=model, description="Gradient-boosted trees.", metrics=metrics
    )
    artifact_upload(
        actor=bob,
        version=version,
        path="model.bin",
        stream=io.BytesIO(data),
        content_length=len(data),
    )
    version_seal(actor=bob, version=version)
    verified = version_verify(version_id=version.pk)
    assert verified.status == VersionStatus.READY, verified.status_reason
    return verified


def set_the_stage() -> Cast:
    """Model, roles, approvers, two verified versions; v1 already holds production."""
    alice, bob, erin, frank = (make_user(name) for name in ("alice", "bob", "erin", "frank"))
    model = model_create(actor=alice, name=MODEL, description="Card fraud scores.")
    role_grant(actor=alice, model=model, role="editor", user=bob)
    for approver in (erin, frank):
        role_grant(actor=alice, model=model, role="viewer", user=approver)
    production = Stage.objects.get(model=model, name="production")
    assert production.policy.required_approvals == 2
    for approver in (erin, frank):
        approver_set(actor=alice, stage=production, principal=approver, approve=True)
    v1 = _version(bob, model, {"auc": 0.91, "recall": 0.80}, b"v1 weights " * 100)
    v2 = _version(bob, model, {"auc": 0.93, "recall": 0.84}, b"v2 weights " * 100)
    first = promotion_request(actor=bob, version=v1, stage=production, reason="First model.")
    promotion_approve(promotion=first, reviewer=erin, comment="", via=Via.WEB)
    promotion_approve(promotion=first, reviewer=frank, comment="", via=Via.WEB)
    production.refresh_from_db()
    assert production.current_version_id == v1.pk
    return Cast(alice, bob, erin, frank, model, production, v1, v2, first)


@pytest.fixture
def cast(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Cast:
    """The set-up's own tasks (verify, v1's emails) are dropped, never published."""
    for task in ROUTED_TASKS:
        monkeypatch.setattr(task, "delay", lambda *args, **kwargs: None)
    return set_the_stage()


@pytest.fixture
def worker(
    cast: Cast,
    celery_worker_factory: Callable[..., CeleryWorker],
    smtp_server: SmtpServer,
    live_server: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> CeleryWorker:
    """A real worker that mails through `smtp_server` links to `live_server`; from now on
    the tasks the services enqueue on commit go to its queue (only the queue is changed)."""
    settings.REGENT_BASE_URL = live_server.url
    started = celery_worker_factory(
        extra_env={**smtp_server.worker_env, "REGENT_BASE_URL": live_server.url}
    )
    for task in ROUTED_TASKS:
        monkeypatch.setattr(task, "delay", _to_queue(task, started.queue))
    return started


def _to_queue(task: Any, queue: str) -> Callable[..., None]:
    def delay(*args: Any) -> None:
        task.apply_async(args, queue=queue)

    return delay


# --- Reading what happened ---------------------------------------------------------------------


def subject(message: ReceivedMessage) -> str:
    """The decoded subject. Django folds a long non-ASCII subject right after "Subject:",
    and the parser keeps that fold's space in front: strip it, as mail clients do."""
    return " ".join(str(message.message["Subject"]).split())


def mails_to(smtp: SmtpServer, user: User, subject_part: str = "") -> list[ReceivedMessage]:
    return [
        message
        for message in list(smtp.messages)
        if user.email in message.rcpt_tos and subject_part in subject(message)
    ]


def wait_for_mail(smtp: SmtpServer, user: User, subject_part: str) -> ReceivedMessage:
    found = wait_until(lambda: mails_to(smtp, user, subject_part), timeout=MAIL_TIMEOUT)
    assert len(found) == 1, [subject(message) for message in found]
    return found[0]


def link_in(message: ReceivedMessage, base_url: str) -> str:
    links = re.findall(r"(https?://\S+/reviews/link/\S+/)", message.body("plain"))
    assert len(links) == 1, links
    assert links[0].startswith(f"{base_url}/reviews/link/")  # REGENT_BASE_URL, not a Host
    assert links[0] in message.body("html")
    return links[0]


def state(promotion: PromotionRequest) -> tuple[str, int]:
    promotion.refresh_from_db()
    return promotion.status, Review.objects.filter(promotion=promotion).count()


def holder(stage: Stage) -> int | None:
    stage.refresh_from_db()
    return stage.current_version.number if stage.current_version else None


def history_rows(page: Page) -> list[str]:
    rows = page.locator("section[aria-labelledby=history-heading] tbody tr")
    return [" ".join(text.split()) for text in rows.all_inner_texts()]


def csrf_cookie(page: Page) -> str:
    return next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")


def story_events(since_id: int) -> list[tuple[str, str, str]]:
    events = AuditEvent.objects.filter(id__gte=since_id).order_by("id")
    return [
        (event.action, event.actor_name, event.via)
        for event in events
        if event.action.startswith(STORY_ACTIONS)
    ]


# --- The story ---------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_request_to_production_and_back(
    cast: Cast,
    worker: CeleryWorker,
    smtp_server: SmtpServer,
    live_server: Any,
    signed_in_page: Callable[..., Page],
    open_page: Callable[[str], Page],
    console_errors: list[str],
):
    base = live_server.url
    erin, frank, bob = cast.erin, cast.frank, cast.bob
    stage_url = f"{base}{cast.production.get_absolute_url()}"

    # 1. bob asks for v2 → production; the worker emails both approvers, not bob.
    promotion = promotion_request(
        actor=bob, version=cast.v2, stage=cast.production, reason="Retrained on March data."
    )
    requested_event = AuditEvent.objects.get(
        action="promotion.requested", target_id=str(promotion.pk)
    )
    request_url = f"{base}{promotion.get_absolute_url()}"
    to_erin = wait_for_mail(smtp_server, erin, "Review:")
    to_frank = wait_for_mail(smtp_server, frank, "Review:")
    for received in (to_erin, to_frank):
        assert subject(received) == (f"[Regent] Review: {MODEL}/2 → production (requested by bob)")
        body = received.body("plain")
        assert "Retrained on March data." in body and "Approvals needed: 2" in body
        assert re.search(r"auc: 0\.93\d* vs 0\.91", body), body  # v2 against the holder v1
    assert mails_to(smtp_server, bob) == []  # the requester and author is never asked
    assert "notify_approvers_task" in worker.log()
    erin_link = link_in(to_erin, base)
    assert erin_link != link_in(to_frank, base)  # personal links
    erin_token = erin_link.rstrip("/").rsplit("/", 1)[1]
    erin_row = ReviewLink.objects.get(promotion=promotion, approver=erin)

    # 2. A mail scanner: no session, runs the page, clicks everything it can. Nothing moves.
    audit_before = AuditEvent.objects.count()
    scanner = open_page("scanner")
    scanner.on("dialog", lambda dialog: dialog.accept())  # and says yes to any confirm()
    posts: list[str] = []
    scanner.on("request", lambda r: posts.append(r.url) if r.method != "GET" else None)
    response = scanner.goto(erin_link)
    assert response is not None and response.ok
    scanner.wait_for_load_state("networkidle")
    scanner.wait_for_timeout(300)  # room for a delayed auto-submit, if there were one
    assert posts == []  # nothing submitted on its own
    assert erin_token not in scanner.url  # moved into the session, out of the address bar
    assert "Sign in to review" in scanner.content()
    assert scanner.locator("meta[http-equiv]").count() == 0
    assert scanner.locator("script:not([src])").count() == 0  # no inline (auto-submit) script
    assert scanner.locator("form[method=post], form[method=POST]").count() == 0
    shot(scanner, "1-scanner")
    clicked = _click_everything(scanner)
    scanner.wait_for_load_state("networkidle")
    assert state(promotion) == (PromotionStatus.PENDING, 0)
    erin_row.refresh_from_db()
    assert erin_row.used_at is None
    assert AuditEvent.objects.count() == audit_before
    assert all(url.startswith(base) for url in posts), (clicked, posts)

    # 3. bob cannot approve his own request: no decision box, and a forged POST is refused.
    bob_page = signed_in_page(bob)
    bob_page.goto(request_url)
    decision = bob_page.locator("section.decision-box")
    assert OWN_REVIEW_REFUSED in decision.inner_text()
    assert decision.locator("button", has_text="Approve").count() == 0
    shot(bob_page, "2-request-page-author")
    refused = bob_page.request.post(
        f"{base}{reverse('approvals:promotion-approve', args=[promotion.pk])}",
        form={
            "csrfmiddlewaretoken": csrf_cookie(bob_page),
            "revision": str(promotion.revision),
            "version_state": version_fingerprint(cast.v2),
            "comment": "LGTM",
        },
        headers={"Origin": base, "Referer": request_url},
        max_redirects=0,
    )
    assert refused.status == 403, refused.text()[:500]
    assert OWN_REVIEW_REFUSED in refused.text()
    assert state(promotion) == (PromotionStatus.PENDING, 0)
    assert not AuditEvent.objects.filter(action="promotion.reviewed", actor=bob).exists()

    # 4. erin opens the link from HER email, signs in through the login page, comes back to
    #    the confirmation page and approves. No request carries the token in a Referer.
    erin_page = open_page("erin")
    erin_requests: list[Request] = []
    erin_page.on("request", lambda r: erin_requests.append(r))
    opened = erin_page.goto(erin_link)
    assert opened is not None and opened.ok
    first_hop = opened.request.redirected_from
    assert first_hop is not None and first_hop.url == erin_link
    first_response = first_hop.response()
    assert first_response is not None
    assert first_response.header_value("referrer-policy") == "no-referrer"
    assert erin_token not in erin_page.url
    assert "Sign in to review" in erin_page.inner_text("main")  # no session yet: asked to
    erin_page.click("main a:has-text('Sign in')")
    erin_page.fill("input[name=username]", "erin")
    erin_page.fill("input[name=password]", PASSWORD)
    with erin_page.expect_navigation() as back_from_login:
        erin_page.click("main button[type=submit]")
    assert erin_page.url == f"{base}{reverse('approvals:link-confirm')}"  # back, tokenless
    confirm_response = back_from_login.value
    assert confirm_response is not None and confirm_response.ok
    assert confirm_response.header_value("referrer-policy") == "same-origin"
    assert erin_page.locator("h1").inner_text().startswith(f"Promote {MODEL} v2")
    assert "0 of 2 approvals so far" in erin_page.inner_text("main")
    assert erin_page.locator("meta[http-equiv]").count() == 0
    shot(erin_page, "3-confirmation-page")
    erin_page.fill("textarea[name=comment]", ERIN_COMMENT)
    with erin_page.expect_navigation():
        erin_page.click("button[value=approve]")
    assert erin_page.url == request_url
    assert "Your review is recorded. The request is pending." in erin_page.inner_text("main")
    assert state(promotion) == (PromotionStatus.PENDING, 1)  # production needs two
    erin_row.refresh_from_db()
    assert erin_row.used_at is not None
    assert holder(cast.production) == 1
    referers = [(r.url, r.all_headers().get("referer", "")) for r in erin_requests]
    assert any(referer for _, referer in referers), "no Referer recorded at all"
    for url, referer in referers:
        assert erin_token not in referer, (url, referer)
        assert erin_token not in url or url == erin_link, url

    # 5. frank signs in, finds it under "Waiting for me", approves from the request page.
    frank_page = sign_in(open_page("frank"), base, "frank", PASSWORD)
    frank_page.goto(f"{base}{reverse('approvals:inbox')}")
    current_tab = frank_page.locator("ul.tabs a[aria-current=page]")
    assert " ".join(current_tab.inner_text().split()) == "Waiting for me 1"
    row = frank_page.locator("table.inbox-table tbody tr")
    assert row.count() == 1
    assert f"#{promotion.pk}" in row.inner_text() and "1 / 2" in row.inner_text()
    shot(frank_page, "4-inbox-waiting")
    with frank_page.expect_navigation():
        row.locator(f"a:has-text('#{promotion.pk}')").click()
    assert frank_page.url == request_url
    reviewers = frank_page.locator("ul.reviewers").inner_text()
    assert re.search(r"erin\s+approved", reviewers) and re.search(r"frank\s+pending", reviewers)
    assert "via email" in frank_page.inner_text("section.timeline")
    shot(frank_page, "5-request-page-before-decision")
    frank_page.fill("section.decision-box textarea[name=comment]", FRANK_COMMENT)
    with frank_page.expect_navigation():
        frank_page.click("section.decision-box button:has-text('Approve')")
    assert frank_page.url == request_url
    assert "Your review is recorded. The request is approved." in frank_page.inner_text("main")
    assert state(promotion) == (PromotionStatus.APPROVED, 2)
    assert holder(cast.production) == 2
    timeline = frank_page.locator("section.timeline").inner_text()
    assert "erin" in timeline and ERIN_COMMENT in timeline and FRANK_COMMENT in timeline
    assert "v2 moved into production" in timeline

    frank_page.goto(stage_url)
    assert "Holds v2 since" in frank_page.inner_text("div.page-head")
    rows = history_rows(frank_page)
    assert len(rows) == 2, rows
    assert rows[0].startswith("v2 current") and f"frank request #{promotion.pk}" in rows[0]
    assert rows[1].startswith("v1 ") and f"request #{cast.v1_request.pk}" in rows[1]
    shot(frank_page, "6-stage-after-promotion")

    # 6. The worker tells bob: approved, with both reviews.
    decided = wait_for_mail(smtp_server, bob, "approved")
    assert subject(decided) == f"[Regent] {MODEL}/2 → production: approved"
    decided_body = decided.body("plain")
    assert f"- erin: approve — {ERIN_COMMENT}" in decided_body
    assert f"- frank: approve — {FRANK_COMMENT}" in decided_body
    assert f"{base}{promotion.get_absolute_url()}" in decided_body

    # 7. Rollback in one action: erin, an approver, from the stage page.
    erin_page.goto(stage_url)
    rollback = erin_page.locator("section[aria-labelledby=rollback-heading]")
    assert rollback.locator("h2").inner_text() == "Roll back to v1"
    rollback.locator("textarea[name=reason]").fill(ROLLBACK_REASON)
    with erin_page.expect_navigation():
        rollback.locator("button:has-text('Roll back to v1')").click()
    assert erin_page.url == stage_url
    assert "production rolled back to v1." in erin_page.inner_text("main")
    assert "Holds v1 since" in erin_page.inner_text("div.page-head")
    assert holder(cast.production) == 1
    rows = history_rows(erin_page)
    assert len(rows) == 3, rows
    assert rows[0].startswith("v1 current") and f"erin rollback {ROLLBACK_REASON}" in rows[0]
    assert rows[1].startswith("v2 ") and f"frank request #{promotion.pk}" in rows[1]
    assert rows[2].startswith("v1 ") and f"request #{cast.v1_request.pk}" in rows[2]
    shot(erin_page, "7-stage-after-rollback")
    for approver in (erin, frank):
        rolled = wait_for_mail(smtp_server, approver, "rolled back")
        assert subject(rolled) == f"[Regent] {MODEL}:production rolled back to v1"
        assert f"erin rolled {MODEL}:production back to v1." in rolled.body("plain")
        assert f"Reason: {ROLLBACK_REASON}" in rolled.body("plain")

    # 8. Everything tells the same story.
    frank_page.goto(f"{base}{reverse('approvals:inbox')}?tab=decided")
    decided_row = frank_page.locator("table.inbox-table tbody tr", has_text=f"#{promotion.pk}")
    assert "approved" in decided_row.inner_text() and "2 / 2" in decided_row.inner_text()
    frank_page.goto(f"{base}{reverse('approvals:inbox')}")
    assert "Nothing is waiting for you" in frank_page.inner_text("main")
    frank_page.goto(f"{base}{reverse('approvals:inbox')}?tab=decided")
    shot(frank_page, "8-inbox-decided")
    bob_page.goto(f"{base}{reverse('approvals:inbox')}?tab=mine")
    mine = bob_page.locator("table.inbox-table tbody tr", has_text=f"#{promotion.pk}")
    assert "approved" in mine.inner_text() and "2 / 2" in mine.inner_text()

    assert [(r.reviewer.username, r.decision, r.via) for r in promotion.reviews.order_by("at")] == [
        ("erin", "approve", Via.EMAIL),
        ("frank", "approve", Via.WEB),
    ]
    history = StageAssignment.objects.filter(stage=cast.production).order_by("started_at")
    assert [
        (a.version.number, a.promotion_id, a.is_rollback, a.reason, a.assigned_by.username)
        for a in history
    ] == [
        (1, cast.v1_request.pk, False, "", "frank"),
        (2, promotion.pk, False, "", "frank"),
        (1, None, True, ROLLBACK_REASON, "erin"),
    ]
    assert story_events(requested_event.pk) == [
        ("promotion.requested", "bob", Via.SYSTEM),
        ("promotion.reviewed", "erin", Via.EMAIL),
        ("promotion.reviewed", "frank", Via.WEB),
        ("promotion.approved", "frank", Via.WEB),
        ("stage.changed", "frank", Via.WEB),
        ("stage.rolled_back", "erin", Via.WEB),
    ]
    moved = AuditEvent.objects.filter(id__gt=requested_event.pk, action="stage.changed").get()
    assert moved.changes == {"before": {"version": 1}, "after": {"version": 2}}
    back = AuditEvent.objects.filter(id__gt=requested_event.pk, action="stage.rolled_back").get()
    assert back.changes["before"] == {"version": 2} and back.changes["after"] == {"version": 1}
    assert back.changes["reason"] == ROLLBACK_REASON
    chain = audit_verify_chain()
    assert chain.ok, chain

    # Exactly the story's mails, once each: 2 review requests, 1 decision, 2 rollbacks.
    assert sorted(
        (message.rcpt_tos[0], subject(message).split("] ", 1)[1])
        for message in smtp_server.messages
    ) == sorted(
        [
            (erin.email, f"Review: {MODEL}/2 → production (requested by bob)"),
            (frank.email, f"Review: {MODEL}/2 → production (requested by bob)"),
            (bob.email, f"{MODEL}/2 → production: approved"),
            (erin.email, f"{MODEL}:production rolled back to v1"),
            (frank.email, f"{MODEL}:production rolled back to v1"),
        ]
    )
    assert sorted(
        Notification.objects.filter(promotion=promotion).values_list(
            "recipient__username", "kind", "status"
        )
    ) == [
        ("bob", notifications.DECISION, NotificationStatus.SENT),
        ("erin", notifications.REVIEW_REQUESTED, NotificationStatus.SENT),
        ("erin", notifications.ROLLBACK, NotificationStatus.SENT),
        ("frank", notifications.REVIEW_REQUESTED, NotificationStatus.SENT),
        ("frank", notifications.ROLLBACK, NotificationStatus.SENT),
    ]
    log = worker.log()  # sent by the worker process, not by this one
    for task in ("notify_approvers_task", "notify_decision_task", "notify_rollback_task"):
        assert re.search(rf"apps\.approvals\.tasks\.{task}\[[^\]]+\] succeeded", log), task
    assert erin_token not in log
    assert console_errors == []


def _click_everything(page: Page, max_pages: int = 5) -> int:
    """Click every button-like element on the page, and on each page a click leads to."""
    clicked, seen = 0, set()
    while page.url not in seen and len(seen) < max_pages:
        seen.add(page.url)
        here = page.url
        for element in page.locator(CLICKABLE).all():
            if not element.is_visible():
                continue
            try:
                element.click(timeout=2_000)
            except Exception:  # detached or covered: a scanner moves on
                continue
            clicked += 1
            page.wait_for_load_state("networkidle")
            if page.url != here:
                break  # landed somewhere new: click everything there too
    return clicked
