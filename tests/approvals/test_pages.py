"""Approval pages: inbox, request page and decisions, promotion form, stages, rollback, policy.

Personas (tests/approvals/conftest.py): owner alice, author bob (editor, pushes versions and
requests promotions), approvers erin and frank (viewers holding `approve_stage`), outsider dave.
"""

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.approvals.access import approver_users_of, set_approver
from apps.approvals.links import version_fingerprint
from apps.approvals.models import (
    Notification,
    NotificationStatus,
    PromotionRequest,
    PromotionStatus,
    Review,
    StagePolicy,
)
from apps.approvals.services import promotion_approve, promotion_request
from apps.audit.models import AuditEvent
from apps.registry.models import VersionStatus
from apps.registry.services import version_update
from tests.approvals.conftest import make_version

pytestmark = pytest.mark.django_db

INBOX = reverse("approvals:inbox")


def html(response) -> str:
    return response.content.decode()


def page_url(promotion: PromotionRequest, action: str = "detail") -> str:
    return reverse(f"approvals:promotion-{action}", args=[promotion.pk])


def stage_url(stage, page: str = "stage-detail") -> str:
    return reverse(f"approvals:{page}", args=[stage.model.name, stage.name])


def decision(promotion: PromotionRequest, **extra) -> dict:
    """What the page's decision form posts: the revision and version state it showed."""
    promotion.refresh_from_db()
    return {
        "revision": promotion.revision,
        "version_state": version_fingerprint(promotion.version),
        **extra,
    }


def count(action: str) -> int:
    return AuditEvent.objects.filter(action=action).count()


@pytest.fixture
def pending(author, v2, production):
    return promotion_request(actor=author, version=v2, stage=production, reason="AUC +0.03")


@pytest.fixture
def staging_history(author, approver1, v1, v2, staging):
    """v1 then v2 went into staging (quorum 1), so v1 is the rollback target."""
    for version in (v1, v2):
        promotion = promotion_request(actor=author, version=version, stage=staging)
        promotion_approve(promotion=promotion, reviewer=approver1, via="web")
    staging.refresh_from_db()
    return staging


# --- Request page ---------------------------------------------------------------------------


def test_request_page_reads_like_a_review(client, approver1, pending, v1, production):
    production.current_version = v1
    production.save()
    client.force_login(approver1)
    response = client.get(page_url(pending))
    assert response.status_code == 200
    body = html(response)
    assert "fraud-detector v2" in body and "production" in body and "AUC +0.03" in body
    assert "0 of 2" in body  # required approvals x of N
    assert "erin" in body and "frank" in body  # eligible reviewers, pending
    assert "Passed" in body and "Version is ready" in body  # checks (gates), live
    assert "v1 (current holder)" in body and "better" in body  # metrics against the holder
    assert page_url(pending, "approve") in body and page_url(pending, "reject") in body
    assert f'name="revision" value="{pending.revision}"' in body


def test_request_page_shows_files_with_sha256(client, approver1, pending, v2):
    v2.files.create(
        path="model.safetensors",
        path_key="model.safetensors",
        size=10,
        upload_sha256="a" * 64,
        sha256="b" * 64,
        storage_key="k/1",
    )
    client.force_login(approver1)
    body = html(client.get(page_url(pending)))
    assert "model.safetensors" in body and "b" * 64 in body


@pytest.mark.parametrize(
    ("who", "reason"),
    [("author", "cannot review their own"), ("owner", "not an approver of production")],
)
def test_no_decision_box_for_those_who_may_not_review(client, request, who, reason, pending):
    client.force_login(request.getfixturevalue(who))
    body = html(client.get(page_url(pending)))
    assert reason in body
    assert page_url(pending, "approve") not in body


def test_outsider_gets_404_everywhere(client, outsider, pending, production, v2):
    client.force_login(outsider)
    for url in (
        page_url(pending),
        stage_url(production),
        reverse("approvals:stage-list", args=["fraud-detector"]),
        reverse("approvals:promotion-create", args=["fraud-detector", v2.number]),
    ):
        assert client.get(url).status_code == 404, url
    for action in ("approve", "reject", "cancel"):
        response = client.post(page_url(pending, action), decision(pending, comment="x"))
        assert response.status_code == 404
    assert client.get(reverse("approvals:promotion-detail", args=[999999])).status_code == 404
    assert not Review.objects.exists()


def test_anonymous_is_sent_to_sign_in(client, pending):
    response = client.get(page_url(pending))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


# --- Decisions ------------------------------------------------------------------------------


def test_approve_via_web_then_quorum_moves_the_stage(client, approver1, approver2, pending):
    client.force_login(approver1)
    response = client.post(page_url(pending, "approve"), decision(pending, comment="lgtm"))
    assert response.status_code == 302 and response["Location"] == page_url(pending)
    review = Review.objects.get()
    assert (review.reviewer, review.via, review.comment) == (approver1, "web", "lgtm")
    client.force_login(approver2)
    client.post(page_url(pending, "approve"), decision(pending))
    pending.refresh_from_db()
    assert pending.status == PromotionStatus.APPROVED
    assert pending.stage.current_version_id == pending.version_id
    assert count("promotion.reviewed") == 2 and count("promotion.approved") == 1
    body = html(client.get(page_url(pending)))
    assert "approved" in body and "lgtm" in body  # the conversation


def test_author_is_refused_by_separation_of_duties(client, author, pending):
    client.force_login(author)
    response = client.post(page_url(pending, "approve"), decision(pending))
    assert response.status_code == 403
    assert "cannot review their own promotion" in html(response)
    assert not Review.objects.exists() and count("promotion.reviewed") == 0


def test_non_approver_is_refused(client, owner, pending):
    client.force_login(owner)
    response = client.post(page_url(pending, "approve"), decision(pending))
    assert response.status_code == 403
    assert "not an approver" in html(response)
    assert not Review.objects.exists()


def test_changed_request_is_refused_with_409(client, approver1, pending):
    form = decision(pending, comment="looked fine at the time")
    PromotionRequest.objects.filter(pk=pending.pk).update(revision=F("revision") + 1)
    client.force_login(approver1)
    response = client.post(page_url(pending, "approve"), form)
    assert response.status_code == 409
    body = html(response)
    assert "changed since you opened it" in body
    assert "looked fine at the time" in body  # the comment is kept for a second try
    assert not Review.objects.exists()


def test_version_edit_after_loading_is_refused_with_409(client, author, approver1, pending, v2):
    form = decision(pending)
    version_update(actor=author, version=v2, description="Actually trained on last week's data")
    client.force_login(approver1)
    response = client.post(page_url(pending, "approve"), form)
    assert response.status_code == 409 and not Review.objects.exists()


def test_missing_revision_is_400(client, approver1, pending):
    client.force_login(approver1)
    response = client.post(page_url(pending, "approve"), {"comment": "lgtm"})
    assert response.status_code == 400 and not Review.objects.exists()


def test_double_submit_records_one_review(client, approver1, pending):
    client.force_login(approver1)
    form = decision(pending)
    assert client.post(page_url(pending, "approve"), form).status_code == 302
    response = client.post(page_url(pending, "approve"), form)
    assert response.status_code == 409 and "already reviewed" in html(response)
    assert Review.objects.count() == 1


def test_reject_needs_a_comment(client, approver1, pending):
    client.force_login(approver1)
    response = client.post(page_url(pending, "reject"), decision(pending, comment="  "))
    assert response.status_code == 400 and not Review.objects.exists()
    response = client.post(page_url(pending, "reject"), decision(pending, comment="AUC leak"))
    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.status == PromotionStatus.REJECTED
    assert count("promotion.rejected") == 1


def test_decision_on_closed_request_is_409(client, approver1, author, pending):
    form = decision(pending)
    client.force_login(author)
    assert client.post(page_url(pending, "cancel")).status_code == 302
    client.force_login(approver1)
    response = client.post(page_url(pending, "approve"), form)
    assert response.status_code == 409 and not Review.objects.exists()


def test_cancel_by_requester_only(client, approver1, author, pending):
    client.force_login(approver1)
    assert client.post(page_url(pending, "cancel")).status_code == 403
    client.force_login(author)
    response = client.post(page_url(pending, "cancel"))
    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.status == PromotionStatus.CANCELLED
    assert count("promotion.cancelled") == 1


def test_get_on_decision_urls_is_405(client, approver1, pending):
    client.force_login(approver1)
    assert client.get(page_url(pending, "approve")).status_code == 405
    assert not Review.objects.exists()


def test_failed_emails_are_shown_to_requester_and_owners_only(
    client, owner, author, approver1, approver2, pending
):
    Notification.objects.create(
        promotion=pending,
        recipient=approver1,
        kind="review_requested",
        status=NotificationStatus.FAILED,
        last_error="550 5.1.1 Mailbox unavailable",
    )
    for user, sees in ((author, True), (owner, True), (approver2, False)):
        client.force_login(user)
        body = html(client.get(page_url(pending)))
        assert ("Email to <strong>erin</strong> failed — 550 5.1.1" in body) is sees, user


def test_closed_request_shows_recorded_checks(client, author, approver1, pending):
    PromotionRequest.objects.filter(pk=pending.pk).update(
        status=PromotionStatus.CANCELLED,
        gate_results=[
            {"gate": "ready", "passed": True, "message": "Recorded gate.", "details": {}}
        ],
    )
    client.force_login(approver1)
    body = html(client.get(page_url(pending)))
    assert "Recorded gate." in body and "As recorded" in body
    assert page_url(pending, "approve") not in body


# --- Inbox ----------------------------------------------------------------------------------


def test_inbox_per_persona(client, author, approver1, approver2, outsider, pending):
    client.force_login(approver1)
    assert f"#{pending.pk}" in html(client.get(INBOX))  # waiting for erin
    client.force_login(author)
    assert f"#{pending.pk}" not in html(client.get(INBOX))  # bob may not review it
    assert f"#{pending.pk}" in html(client.get(INBOX + "?tab=mine"))
    client.force_login(outsider)
    for tab in ("waiting", "mine", "decided"):
        assert f"#{pending.pk}" not in html(client.get(f"{INBOX}?tab={tab}"))
    client.force_login(approver1)
    client.post(page_url(pending, "reject"), decision(pending, comment="no"))
    assert f"#{pending.pk}" not in html(client.get(INBOX))
    client.force_login(approver2)
    assert f"#{pending.pk}" not in html(client.get(INBOX))  # closed: no longer waiting
    body = html(client.get(INBOX + "?tab=decided"))
    assert f"#{pending.pk}" in body and "rejected" in body


def _inbox_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        for tab in ("waiting", "mine", "decided"):
            assert client.get(f"{INBOX}?tab={tab}").status_code == 200
    return len(queries)


def test_inbox_queries_do_not_grow_with_requests(
    client, fraud_model, author, approver1, production
):
    client.force_login(approver1)
    for number in (1, 2):
        version = make_version(fraud_model, author, number)
        promotion_request(actor=author, version=version, stage=production)
    few = _inbox_queries(client)
    for number in range(3, 9):
        version = make_version(fraud_model, author, number)
        promotion = promotion_request(actor=author, version=version, stage=production)
        promotion_approve(promotion=promotion, reviewer=approver1, via="web")
    assert _inbox_queries(client) <= few


# --- Asking for a promotion -----------------------------------------------------------------


def test_promote_form_previews_checks_and_creates(client, author, v2, production):
    url = reverse("approvals:promotion-create", args=["fraud-detector", v2.number])
    client.force_login(author)
    body = html(client.get(url + "?stage=production"))
    assert "Checks, stage by stage" in body and "Version is ready" in body
    response = client.post(url, {"stage": "production", "reason": "better AUC"})
    promotion = PromotionRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == page_url(promotion)
    assert (promotion.stage, promotion.reason, promotion.requested_by) == (
        production,
        "better AUC",
        author,
    )
    assert count("promotion.requested") == 1


def test_promote_refusals(client, fraud_model, author, approver1, v2):
    url = reverse("approvals:promotion-create", args=["fraud-detector", v2.number])
    client.force_login(approver1)  # a viewer: may see, may not request
    assert client.post(url, {"stage": "production"}).status_code == 403
    client.force_login(author)
    assert client.post(url, {"stage": "nowhere"}).status_code == 400
    unready = make_version(fraud_model, author, 3, status=VersionStatus.VERIFYING)
    url = reverse("approvals:promotion-create", args=["fraud-detector", unready.number])
    response = client.post(url, {"stage": "production"})
    assert response.status_code == 409 and "not ready" in html(response)
    assert not PromotionRequest.objects.exists()


# --- Stages and rollback --------------------------------------------------------------------


def test_stage_page_history_and_holder_at(client, approver1, staging_history, v1, v2):
    client.force_login(approver1)
    response = client.get(stage_url(staging_history))
    body = html(response)
    assert response.status_code == 200
    assert "Roll back to v1" in body and "request #" in body
    now = timezone.now().replace(microsecond=0)
    staging_history.history.filter(version=v1).update(
        started_at=now - timedelta(hours=2), ended_at=now - timedelta(hours=1)
    )
    staging_history.history.filter(version=v2).update(started_at=now - timedelta(hours=1))
    at = (now - timedelta(minutes=90)).strftime("%Y-%m-%dT%H:%M")
    body = html(client.get(stage_url(staging_history) + f"?at={at}"))
    assert "<strong><a" in body and "v1</a></strong>" in body
    body = html(client.get(stage_url(staging_history) + "?at=1999-01-01T00:00"))
    assert "the stage was empty" in body
    assert client.get(stage_url(staging_history) + "?at=yesterday").status_code == 400


def test_rollback_via_page(client, approver1, author, staging_history, v1):
    url = stage_url(staging_history, "stage-rollback")
    client.force_login(author)  # an editor, not an approver of staging
    assert client.post(url, {"reason": "bad"}).status_code == 403
    client.force_login(approver1)
    assert client.post(url, {"reason": ""}).status_code == 400
    response = client.post(url, {"reason": "v2 doubles latency"})
    assert response.status_code == 302
    staging_history.refresh_from_db()
    assert staging_history.current_version == v1
    assert count("stage.rolled_back") == 1
    body = html(client.get(stage_url(staging_history)))
    assert "rollback" in body and "v2 doubles latency" in body


def test_rollback_without_earlier_version_is_409(client, approver1, author, v1, staging):
    promotion = promotion_request(actor=author, version=v1, stage=staging)
    promotion_approve(promotion=promotion, reviewer=approver1, via="web")
    client.force_login(approver1)
    response = client.post(stage_url(staging, "stage-rollback"), {"reason": "oops"})
    assert response.status_code == 409


def test_stage_list_and_create(client, owner, approver1, fraud_model):
    url = reverse("approvals:stage-list", args=["fraud-detector"])
    client.force_login(approver1)
    body = html(client.get(url))
    assert "production" in body and "staging" in body and "Add stage" not in body
    create = reverse("approvals:stage-create", args=["fraud-detector"])
    assert client.post(create, {"name": "canary"}).status_code == 403
    client.force_login(owner)
    response = client.post(create, {"name": "canary"})
    assert response.status_code == 302
    assert fraud_model.stages.filter(name="canary").exists()


# --- Policy ---------------------------------------------------------------------------------


def test_policy_page_for_owners(client, owner, approver1, approver2, production):
    url = stage_url(production, "stage-policy")
    client.force_login(owner)
    body = html(client.get(url))
    assert "erin" in body and "Required approvals" in body
    response = client.post(
        url,
        {
            "required_approvals": "1",
            "request_ttl_hours": "48",
            "requires_stage": "staging",
            "metric_gates": "auc >= holder\nlatency_ms <= 20",
            "required_card_sections": "Intended use",
            "required_metadata": "metrics",
            "approver_users": "erin",
            "approver_groups": "",
        },
    )
    assert response.status_code == 302
    policy = StagePolicy.objects.get(stage=production)
    assert policy.required_approvals == 1 and policy.request_ttl_hours == 48
    assert policy.requires_stage.name == "staging"
    assert policy.requires_verified_files is False
    assert policy.metric_gates == [
        {"metric": "auc", "op": ">=", "against": "holder"},
        {"metric": "latency_ms", "op": "<=", "against": "threshold", "threshold": 20},
    ]
    assert list(approver_users_of(production)) == [approver1]
    assert count("policy.updated") == 1 and count("approver.revoked") == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metric_gates", "auc is high"),
        ("metric_gates", "auc >= nan"),
        ("approver_users", "nobody-by-that-name"),
        ("approver_users", "dave"),  # no role on the model: could never see the request
        ("required_approvals", "-1"),
        ("approver_groups", "no-such-team"),  # refused by the service, shown on the field
    ],
)
def test_policy_form_errors_are_400(client, owner, outsider, production, field, value):
    data = {"required_approvals": "2", "request_ttl_hours": "168", "approver_users": "erin"}
    data[field] = value
    client.force_login(owner)
    response = client.post(stage_url(production, "stage-policy"), data)
    assert response.status_code == 400
    assert count("policy.updated") == 0


def test_policy_refuses_a_stage_order_loop(client, owner, staging, production):
    from apps.approvals.services import policy_update

    policy_update(actor=owner, stage=production, requires_stage="staging")
    client.force_login(owner)
    data = {"required_approvals": "1", "request_ttl_hours": "168", "approver_users": "erin"}
    response = client.post(
        stage_url(staging, "stage-policy"), {**data, "requires_stage": "production"}
    )
    assert response.status_code == 400 and "a loop" in html(response)
    assert StagePolicy.objects.get(stage=staging).requires_stage is None


def test_policy_page_refuses_non_owners(client, approver1, author, outsider, production):
    url = stage_url(production, "stage-policy")
    for user, status in ((approver1, 403), (author, 403), (outsider, 404)):
        client.force_login(user)
        assert client.get(url).status_code == status
        assert client.post(url, {"required_approvals": "0"}).status_code == status
    assert StagePolicy.objects.get(stage=production).required_approvals == 2


def test_approver_granted_through_policy_sees_the_request(
    client, owner, author, fraud_model, pending, production
):
    from tests.approvals.conftest import grant
    from tests.conftest import make_user

    grace = make_user("grace")
    grant(grace, fraud_model, "viewer")
    client.force_login(owner)
    client.post(
        stage_url(production, "stage-policy"),
        {
            "required_approvals": "2",
            "request_ttl_hours": "168",
            "requires_verified_files": "on",
            "approver_users": "erin\nfrank\ngrace",
        },
    )
    client.force_login(grace)
    assert f"#{pending.pk}" in html(client.get(INBOX))
    set_approver(grace, production, False)
    assert f"#{pending.pk}" not in html(client.get(INBOX))
