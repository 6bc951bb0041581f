"""The promotion state machine: quorum, separation of duties, gates, rollback, expiry."""

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from apps.approvals.models import (
    PromotionRequest,
    PromotionStatus,
    Review,
    Stage,
    StageAssignment,
)
from apps.approvals.services import (
    policy_update,
    promotion_approve,
    promotion_cancel,
    promotion_reject,
    promotion_request,
    promotions_expire,
    stage_rollback,
)
from apps.audit.models import AuditEvent
from apps.audit.selectors import audit_verify_chain
from apps.registry.models import VersionStatus
from registry_site.api_errors import ApiError
from tests.approvals.conftest import make_version

pytestmark = pytest.mark.django_db


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("id").values_list("action", flat=True))


def test_two_approvals_move_production(author, approver1, approver2, v1, production):
    promotion = promotion_request(actor=author, version=v1, stage=production, reason="ship it")
    promotion_approve(promotion=promotion, reviewer=approver1, comment="lgtm", via="web")
    promotion.refresh_from_db()
    assert promotion.status == PromotionStatus.PENDING
    promotion_approve(promotion=promotion, reviewer=approver2, via="api")
    promotion.refresh_from_db()
    production.refresh_from_db()
    assert promotion.status == PromotionStatus.APPROVED
    assert production.current_version == v1
    assignment = StageAssignment.objects.get(stage=production)
    assert assignment.promotion == promotion and assignment.assigned_by == approver2
    assert actions() == [
        "promotion.requested",
        "promotion.reviewed",
        "promotion.reviewed",
        "promotion.approved",
        "stage.changed",
    ]


@pytest.mark.parametrize("who", ["author", "requester", "superuser_author"])
def test_separation_of_duties(who, owner, author, approver1, v1, production, django_user_model):
    requester = owner if who != "requester" else approver1
    promotion = promotion_request(actor=requester, version=v1, stage=production)
    reviewer = {"author": author, "requester": approver1, "superuser_author": author}[who]
    if who == "superuser_author":
        author.is_superuser = True
        author.save()
    with pytest.raises(ApiError) as error:
        promotion_approve(promotion=promotion, reviewer=reviewer, via="web")
    assert error.value.status == 403 and error.value.code == "separation_of_duties"
    assert not Review.objects.exists()


def test_non_approver_is_refused(author, owner, v1, production):
    promotion = promotion_request(actor=author, version=v1, stage=production)
    with pytest.raises(ApiError) as error:
        promotion_approve(promotion=promotion, reviewer=owner, via="web")
    assert error.value.code == "not_an_approver"


def test_superuser_without_approver_role_is_refused(author, v1, production, superuser):
    promotion = promotion_request(actor=author, version=v1, stage=production)
    with pytest.raises(ApiError) as error:
        promotion_approve(promotion=promotion, reviewer=superuser, via="web")
    assert error.value.code == "not_an_approver"


def test_approve_twice_is_409(author, approver1, v1, production):
    promotion = promotion_request(actor=author, version=v1, stage=production)
    promotion_approve(promotion=promotion, reviewer=approver1, via="web")
    with pytest.raises(ApiError) as error:
        promotion_approve(promotion=promotion, reviewer=approver1, via="email")
    assert error.value.status == 409
    assert Review.objects.count() == 1


def test_reject_needs_a_comment_and_one_rejection_rejects(author, approver1, v1, production):
    promotion = promotion_request(actor=author, version=v1, stage=production)
    with pytest.raises(ApiError) as error:
        promotion_reject(promotion=promotion, reviewer=approver1, comment="  ", via="web")
    assert error.value.status == 400
    promotion_reject(promotion=promotion, reviewer=approver1, comment="too slow", via="web")
    promotion.refresh_from_db()
    assert promotion.status == PromotionStatus.REJECTED
    assert Stage.objects.get(pk=production.pk).current_version is None


@pytest.mark.parametrize("status", [VersionStatus.PENDING, VersionStatus.FAILED])
def test_unready_version_fails_the_gate(fraud_model, author, production, status):
    version = make_version(fraud_model, author, 1, status=status)
    with pytest.raises(ApiError) as error:
        promotion_request(actor=author, version=version, stage=production)
    assert error.value.status == 409 and error.value.code == "gate_failed"
    assert error.value.details["gates"][0]["gate"] == "ready"
    assert not PromotionRequest.objects.exists()
    assert not AuditEvent.objects.exists()


def test_stage_already_held_is_409(author, approver1, v1, staging):
    promotion = promotion_request(actor=author, version=v1, stage=staging)
    promotion_approve(promotion=promotion, reviewer=approver1, via="web")
    with pytest.raises(ApiError) as error:
        promotion_request(actor=author, version=v1, stage=staging)
    assert error.value.status == 409


def test_metric_gate_names_the_numbers(owner, author, approver1, fraud_model, staging, v2):
    policy_update(
        actor=owner,
        stage=staging,
        required_approvals=1,
        metric_gates=[{"metric": "auc", "op": ">=", "against": "holder"}],
    )
    promotion_approve(
        promotion=promotion_request(actor=author, version=v2, stage=staging),
        reviewer=approver1,
        via="web",
    )
    worse = make_version(fraud_model, author, 3, auc=0.80)
    with pytest.raises(ApiError) as error:
        promotion_request(actor=author, version=worse, stage=staging)
    gate = error.value.details["gates"][0]
    assert gate["gate"] == "metric:auc"
    assert gate["details"]["value"] == 0.80 and gate["details"]["bound"] == 0.93


def test_stage_order_gate(owner, author, approver1, approver2, v1, staging, production):
    policy_update(actor=owner, stage=production, requires_stage="staging")
    with pytest.raises(ApiError) as error:
        promotion_request(actor=author, version=v1, stage=production)
    assert error.value.details["gates"][0]["gate"] == "stage_order"
    promotion_approve(
        promotion=promotion_request(actor=author, version=v1, stage=staging),
        reviewer=approver1,
        via="web",
    )
    assert promotion_request(actor=author, version=v1, stage=production).status == "pending"


def test_documentation_gate(owner, author, v1, production):
    policy_update(
        actor=owner,
        stage=production,
        required_card_sections=["Intended use", "Ethical considerations"],
    )
    with pytest.raises(ApiError) as error:
        promotion_request(actor=author, version=v1, stage=production)
    assert error.value.details["gates"][0]["details"]["missing_sections"] == [
        "Ethical considerations"
    ]


def test_quorum_supersedes_other_requests(author, approver1, v1, v2, staging):
    first = promotion_request(actor=author, version=v1, stage=staging)
    second = promotion_request(actor=author, version=v2, stage=staging)
    promotion_approve(promotion=second, reviewer=approver1, via="web")
    first.refresh_from_db()
    assert first.status == PromotionStatus.SUPERSEDED
    with pytest.raises(ApiError) as error:
        promotion_approve(promotion=first, reviewer=approver1, via="web")
    assert error.value.status == 409


def test_duplicate_pending_request_is_409(author, v1, production):
    promotion_request(actor=author, version=v1, stage=production)
    with pytest.raises(ApiError) as error:
        promotion_request(actor=author, version=v1, stage=production)
    assert error.value.status == 409
    assert PromotionRequest.objects.count() == 1


def test_cancel_by_requester_or_owner_only(owner, author, approver1, outsider, v1, production):
    promotion = promotion_request(actor=author, version=v1, stage=production)
    with pytest.raises(ApiError) as error:
        promotion_cancel(promotion=promotion, actor=approver1)
    assert error.value.status == 403
    promotion_cancel(promotion=promotion, actor=owner)
    with pytest.raises(ApiError) as error:
        promotion_approve(promotion=promotion, reviewer=approver1, via="web")
    assert error.value.status == 409


def test_expired_requests_close_once(author, approver1, v1, production):
    promotion = promotion_request(actor=author, version=v1, stage=production)
    PromotionRequest.objects.filter(pk=promotion.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(ApiError):
        promotion_approve(promotion=promotion, reviewer=approver1, via="web")
    assert promotions_expire() == 1
    assert promotions_expire() == 0
    promotion.refresh_from_db()
    assert promotion.status == PromotionStatus.EXPIRED
    assert actions().count("promotion.expired") == 1


def test_rollback_restores_the_previous_holder(author, approver1, owner, v1, v2, staging):
    for version in (v1, v2):
        promotion_approve(
            promotion=promotion_request(actor=author, version=version, stage=staging),
            reviewer=approver1,
            via="web",
        )
    with pytest.raises(ApiError) as error:
        stage_rollback(stage=staging, actor=approver1, reason="")
    assert error.value.status == 400
    with pytest.raises(ApiError) as error:
        stage_rollback(stage=staging, actor=author, reason="bad")
    assert error.value.status == 403
    stage_rollback(stage=staging, actor=approver1, reason="v2 drifts")
    staging.refresh_from_db()
    assert staging.current_version == v1
    latest = StageAssignment.objects.filter(stage=staging).order_by("-started_at").first()
    assert latest.is_rollback and latest.reason == "v2 drifts"
    assert actions()[-1] == "stage.rolled_back"
    assert audit_verify_chain().ok


def test_rollback_without_history_is_409(approver1, staging):
    with pytest.raises(ApiError) as error:
        stage_rollback(stage=staging, actor=approver1, reason="x")
    assert error.value.status == 409


def test_zero_approval_policy_moves_at_once(owner, author, v1, staging):
    policy_update(actor=owner, stage=staging, required_approvals=0)
    promotion = promotion_request(actor=author, version=v1, stage=staging)
    assert promotion.status == PromotionStatus.APPROVED
    staging.refresh_from_db()
    assert staging.current_version == v1


def test_policy_changes_are_owner_only_and_audited(owner, author, production):
    with pytest.raises(ApiError) as error:
        policy_update(actor=author, stage=production, required_approvals=1)
    assert error.value.status == 403
    policy_update(actor=owner, stage=production, required_approvals=3)
    event = AuditEvent.objects.get(action="policy.updated")
    assert event.changes == {
        "before": {"required_approvals": 2},
        "after": {"required_approvals": 3},
    }


def _race(calls) -> list:
    barrier = threading.Barrier(len(calls))
    outcomes: list = []

    def run(call):
        try:
            barrier.wait()
            outcomes.append(call())
        except ApiError as error:
            outcomes.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@pytest.mark.django_db(transaction=True)
def test_two_approvers_at_once_with_quorum_one(owner, author, approver1, approver2, v1, staging):
    promotion = promotion_request(actor=author, version=v1, stage=staging)
    outcomes = _race(
        [
            lambda: promotion_approve(promotion=promotion, reviewer=approver1, via="web"),
            lambda: promotion_approve(promotion=promotion, reviewer=approver2, via="api"),
        ]
    )
    assert sum(isinstance(outcome, ApiError) for outcome in outcomes) == 1
    assert StageAssignment.objects.filter(stage=staging).count() == 1
    assert actions().count("promotion.approved") == 1


@pytest.mark.django_db(transaction=True)
def test_approve_races_cancel(owner, author, approver1, v1, staging):
    promotion = promotion_request(actor=author, version=v1, stage=staging)
    _race(
        [
            lambda: promotion_approve(promotion=promotion, reviewer=approver1, via="web"),
            lambda: promotion_cancel(promotion=promotion, actor=author),
        ]
    )
    promotion.refresh_from_db()
    assert promotion.status in (PromotionStatus.APPROVED, PromotionStatus.CANCELLED)
    moved = StageAssignment.objects.filter(stage=staging).exists()
    assert moved == (promotion.status == PromotionStatus.APPROVED)


@pytest.mark.django_db(transaction=True)
def test_double_submit_by_one_reviewer(owner, author, approver1, v1, production):
    promotion = promotion_request(actor=author, version=v1, stage=production)
    outcomes = _race(
        [lambda: promotion_approve(promotion=promotion, reviewer=approver1, via="web")] * 2
    )
    assert sum(isinstance(outcome, ApiError) for outcome in outcomes) == 1
    assert Review.objects.count() == 1


def test_a_rolled_back_version_is_not_offered_again(author, approver1, v1, v2, staging):
    from apps.approvals.services import previous_holder

    for version in (v1, v2):
        promotion_approve(
            promotion=promotion_request(actor=author, version=version, stage=staging),
            reviewer=approver1,
            via="web",
        )
    assert previous_holder(staging) == v1
    stage_rollback(stage=staging, actor=approver1, reason="v2 drifts")
    assert previous_holder(staging) is None
    with pytest.raises(ApiError) as error:
        stage_rollback(stage=staging, actor=approver1, reason="undo")
    assert error.value.status == 409
