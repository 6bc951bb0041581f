"""The approvals REST API: stages, promotions, reviews, rollback and policies, through tokens.

Personas (tests/approvals/conftest.py): `owner` alice owns fraud-detector; `author` bob is an
editor who pushed v1 and v2; `approver1` erin and `approver2` frank are viewers holding
`approve_stage` on both stages; `viewer` carol only views; `outsider` dave has no grant.
Every persona has a read-write token, so a refusal comes from the role, not the scope.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.accounts.models import TokenScope, User
from apps.accounts.services import token_create
from apps.approvals.access import approver_groups_of, approver_users_of, set_approver
from apps.approvals.models import (
    PromotionRequest,
    PromotionStatus,
    Review,
    Stage,
    StageAssignment,
    StagePolicy,
)
from apps.approvals.services import policy_update, promotion_approve, promotion_request
from apps.audit.models import AuditEvent
from apps.registry.models import RegisteredModel, VersionStatus
from registry_site.api import api as ninja_api
from tests.approvals.conftest import grant, make_version
from tests.conftest import bearer, make_user

pytestmark = pytest.mark.django_db

MODEL_URL = "/api/v1/models/fraud-detector"
STAGES_URL = f"{MODEL_URL}/stages"
PRODUCTION_URL = f"{STAGES_URL}/production"
STAGING_URL = f"{STAGES_URL}/staging"
PROMOTIONS_URL = "/api/v1/promotions"
NOT_FOUND = {"error": {"code": "not_found", "message": "Not found.", "details": {}}}


class Api:
    """A test client that speaks JSON with one read-write token per persona."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.tokens: dict[int, dict[str, str]] = {}

    def auth(self, user: User) -> dict[str, str]:
        if user.pk not in self.tokens:
            _, plaintext = token_create(user=user, name="tests", scope=TokenScope.WRITE)
            self.tokens[user.pk] = bearer(plaintext)
        return self.tokens[user.pk]

    def get(self, user: User, url: str, **params: Any) -> Any:
        return self.client.get(url, params, **self.auth(user))

    def post(self, user: User, url: str, data: Any = None) -> Any:
        if data is None:  # no body at all, as `curl -X POST` sends
            return self.client.generic("POST", url, b"", **self.auth(user))
        return self.client.post(url, data, content_type="application/json", **self.auth(user))

    def put(self, user: User, url: str, data: Any) -> Any:
        return self.client.put(url, data, content_type="application/json", **self.auth(user))


@pytest.fixture
def http(api_client: Client) -> Api:
    return Api(api_client)


@pytest.fixture
def viewer(fraud_model: RegisteredModel) -> User:
    user = make_user("carol")
    grant(user, fraud_model, "viewer")
    return user


def request_url(version: int) -> str:
    return f"{MODEL_URL}/versions/{version}/promotions"


def promotion_url(promotion: Any, action: str = "") -> str:
    pk = promotion["id"] if isinstance(promotion, dict) else promotion.pk
    return f"{PROMOTIONS_URL}/{pk}" + (f"/{action}" if action else "")


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("id").values_list("action", flat=True))


def decisions() -> list[str]:
    """The audit trail of the approvals app (token creation left out)."""
    return [action for action in actions() if not action.startswith("token.")]


def error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()["error"]
    assert body["code"] == code, body
    return body


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


# --- The whole flow ---------------------------------------------------------------------------


def test_request_approve_move_rollback_and_ask_the_past(http, author, approver1, approver2, v1, v2):
    with time_machine.travel(at(10), tick=False):
        response = http.post(author, request_url(1), {"stage": "production", "reason": "ship"})
    assert response.status_code == 201
    first = response.json()
    assert {key: first[key] for key in ("model", "version", "stage", "status")} == {
        "model": "fraud-detector",
        "version": 1,
        "stage": "production",
        "status": "pending",
    }
    assert (first["requested_by"], first["reason"]) == ("bob", "ship")
    assert (first["required_approvals"], first["approvals"], first["reviews"]) == (2, 0, [])
    assert first["gates"][0] == {
        "gate": "ready",
        "passed": True,
        "message": "Version is ready: every file verified.",
        "details": {},
    }
    assert first["created_at"].startswith("2026-03-10T12:00:00")
    assert first["expires_at"].startswith("2026-03-17T12:00:00")
    assert first["decided_at"] is None

    with time_machine.travel(at(10, 13), tick=False):
        response = http.post(approver1, promotion_url(first, "approve"), {"comment": "lgtm"})
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["approvals"]) == ("pending", 1)
    with time_machine.travel(at(10, 14), tick=False):
        response = http.post(approver2, promotion_url(first, "approve"))  # no body at all
    approved = response.json()
    assert (approved["status"], approved["approvals"]) == ("approved", 2)
    assert [
        (r["reviewer"], r["decision"], r["comment"], r["via"]) for r in approved["reviews"]
    ] == [
        ("erin", "approve", "lgtm", "api"),
        ("frank", "approve", "", "api"),
    ]
    assert approved["decided_at"].startswith("2026-03-10T14:00:00")

    with time_machine.travel(at(14, 9), tick=False):
        second = http.post(author, request_url(2), {"stage": "production"}).json()
        http.post(approver1, promotion_url(second, "approve"))
        http.post(approver2, promotion_url(second, "approve"))
    assert http.get(author, STAGES_URL).json() == {
        "staging": {"version": None, "since": None},
        "production": {"version": 2, "since": "2026-03-14T09:00:00Z"},
    }

    with time_machine.travel(at(15), tick=False):
        response = http.post(approver1, f"{PRODUCTION_URL}/rollback", {"reason": "v2 drifts"})
    assert response.status_code == 200
    stage = response.json()
    assert (stage["stage"], stage["version"], stage["since"]) == (
        "production",
        1,
        "2026-03-15T12:00:00Z",
    )
    assert stage["history"] == [
        {
            "version": 1,
            "from": "2026-03-15T12:00:00Z",
            "to": None,
            "by": "erin",
            "via_request": None,
            "rollback": True,
            "reason": "v2 drifts",
        },
        {
            "version": 2,
            "from": "2026-03-14T09:00:00Z",
            "to": "2026-03-15T12:00:00Z",
            "by": "frank",
            "via_request": second["id"],
            "rollback": False,
            "reason": "",
        },
        {
            "version": 1,
            "from": "2026-03-10T14:00:00Z",
            "to": "2026-03-14T09:00:00Z",
            "by": "frank",
            "via_request": first["id"],
            "rollback": False,
            "reason": "",
        },
    ]
    assert http.get(author, PRODUCTION_URL).json() == stage

    # "What was in production on 2026-03-14 at 14:00?"
    answer = http.get(author, PRODUCTION_URL, at="2026-03-14T14:00:00Z").json()
    assert answer == {
        "stage": "production",
        "at": "2026-03-14T14:00:00Z",
        "version": 2,
        "since": "2026-03-14T09:00:00Z",
        "until": "2026-03-15T12:00:00Z",
        "by": "frank",
        "via_request": second["id"],
        "approved_by": answer["approved_by"],
        "replaced": 1,
        "rollback": False,
    }
    assert len(answer["approved_by"]) == 2 and "frank" in answer["approved_by"]
    assert http.get(author, PRODUCTION_URL, at="2026-03-10T13:59:59Z").json()["version"] is None
    assert http.get(author, PRODUCTION_URL, at="2026-03-12T00:00:00Z").json()["version"] == 1
    assert http.get(author, PRODUCTION_URL, at="2026-03-16").json()["version"] == 1
    assert decisions() == [
        "promotion.requested",
        "promotion.reviewed",
        "promotion.reviewed",
        "promotion.approved",
        "stage.changed",
        "promotion.requested",
        "promotion.reviewed",
        "promotion.reviewed",
        "promotion.approved",
        "stage.changed",
        "stage.rolled_back",
    ]
    reviewed = AuditEvent.objects.filter(action="promotion.reviewed")
    assert set(reviewed.values_list("via", flat=True)) == {"api"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-14T14:00:00", "2026-03-14T14:00:00Z"),  # naive: UTC
        ("2026-03-14 14:00", "2026-03-14T14:00:00Z"),
        ("2026-03-14T15:00:00+01:00", "2026-03-14T14:00:00Z"),
        ("2026-03-14T15:00:00 01:00", "2026-03-14T14:00:00Z"),  # "+" decoded as a space
        ("2026-03-14T14:00:00z", "2026-03-14T14:00:00Z"),
        ("2026-03-14", "2026-03-14T00:00:00Z"),
    ],
)
def test_at_accepts_iso_moments(http, author, production, value, expected):
    response = http.get(author, PRODUCTION_URL, at=value)
    assert response.status_code == 200
    assert response.json() == {
        "stage": "production",
        "at": expected,
        "version": None,
        "since": None,
        "until": None,
        "by": None,
        "via_request": None,
        "approved_by": [],
        "replaced": None,
        "rollback": False,
    }


@pytest.mark.parametrize(
    "value", ["yesterday", "2026-13-01", "14:00", "", "2026-03-14T25:00", "0001-01-01T00:00+01:00"]
)
def test_malformed_at_is_422_naming_it(http, author, production, value):
    body = error(http.get(author, PRODUCTION_URL, at=value), 422, "invalid")
    assert "ISO 8601" in body["message"]
    assert body["details"]["errors"][0]["field"] == "at"


def test_history_limit(http, author, approver1, fraud_model, staging, owner):
    policy_update(actor=owner, stage=staging, required_approvals=0)
    for number in range(1, 5):
        version = make_version(fraud_model, author, number)
        promotion_request(actor=author, version=version, stage=staging)
    history = http.get(author, STAGING_URL, limit=2).json()["history"]
    assert [entry["version"] for entry in history] == [4, 3]
    assert http.get(author, STAGING_URL, limit=0).status_code == 422


# --- Requests --------------------------------------------------------------------------------


def test_zero_approval_policy_moves_at_once(http, owner, author, v1, staging):
    policy_update(actor=owner, stage=staging, required_approvals=0)
    response = http.post(author, request_url(1), {"stage": "staging"})
    assert response.status_code == 201
    assert response.json()["status"] == "approved"
    assert http.get(author, STAGES_URL).json()["staging"]["version"] == 1


@pytest.mark.parametrize("status", [VersionStatus.PENDING, VersionStatus.FAILED])
def test_request_for_an_unready_version_fails_the_ready_gate(
    http, fraud_model, author, production, status
):
    make_version(fraud_model, author, 1, status=status)
    body = error(http.post(author, request_url(1), {"stage": "production"}), 409, "gate_failed")
    [gate] = body["details"]["gates"]
    assert (gate["gate"], gate["passed"]) == ("ready", False)
    assert status in body["message"]
    assert not PromotionRequest.objects.exists()
    assert decisions() == []


def test_stage_already_held_is_409(http, author, approver1, v1, staging):
    first = http.post(author, request_url(1), {"stage": "staging"}).json()
    http.post(approver1, promotion_url(first, "approve"))
    body = error(http.post(author, request_url(1), {"stage": "staging"}), 409, "conflict")
    assert "already holds staging" in body["message"]
    assert PromotionRequest.objects.count() == 1


def test_duplicate_pending_request_is_409(http, author, v1, production):
    assert http.post(author, request_url(1), {"stage": "production"}).status_code == 201
    error(http.post(author, request_url(1), {"stage": "production"}), 409, "conflict")
    assert PromotionRequest.objects.count() == 1


def test_metric_gate_409_names_the_numbers(http, owner, author, approver1, fraud_model, v2):
    gate = {"metric": "auc", "op": ">=", "against": "holder"}
    assert http.put(owner, f"{STAGING_URL}/policy", {"metric_gates": [gate]}).status_code == 200
    first = http.post(author, request_url(2), {"stage": "staging"}).json()
    http.post(approver1, promotion_url(first, "approve"))
    make_version(fraud_model, author, 3, auc=0.80)
    body = error(http.post(author, request_url(3), {"stage": "staging"}), 409, "gate_failed")
    [failed] = body["details"]["gates"]
    assert failed["gate"] == "metric:auc"
    assert failed["details"] == {
        "metric": "auc",
        "op": ">=",
        "value": 0.80,
        "bound": 0.93,
        "against": "v2, the current holder",
    }
    assert "0.8" in body["message"] and "0.93" in body["message"]


def test_threshold_gate(http, owner, author, fraud_model):
    gate = {"metric": "auc", "op": ">", "against": "threshold", "threshold": 0.95}
    http.put(owner, f"{PRODUCTION_URL}/policy", {"metric_gates": [gate]})
    make_version(fraud_model, author, 1, auc=0.9)
    body = error(http.post(author, request_url(1), {"stage": "production"}), 409, "gate_failed")
    assert body["details"]["gates"][0]["details"]["bound"] == 0.95


def test_stage_order_409(http, owner, author, approver1, v1):
    http.put(owner, f"{PRODUCTION_URL}/policy", {"requires_stage": "staging"})
    body = error(http.post(author, request_url(1), {"stage": "production"}), 409, "gate_failed")
    [gate] = body["details"]["gates"]
    assert gate["gate"] == "stage_order"
    assert gate["details"] == {"required_stage": "staging"}
    first = http.post(author, request_url(1), {"stage": "staging"}).json()
    http.post(approver1, promotion_url(first, "approve"))
    assert http.post(author, request_url(1), {"stage": "production"}).status_code == 201


def test_unknown_stage_or_version_is_404(http, author, v1):
    for url, body in (
        (request_url(1), {"stage": "canary"}),
        (request_url(1), {"stage": "bad\x00name"}),
        (request_url(9), {"stage": "production"}),
    ):
        response = http.post(author, url, body)
        assert (response.status_code, response.json()) == (404, NOT_FOUND)


def test_stage_of_another_model_is_404(http, owner, author, fraud_model, v1):
    other = RegisteredModel.objects.create(name="churn", name_key="churn", created_by=owner)
    Stage.objects.create(model=other, name="canary")
    response = http.post(author, request_url(1), {"stage": "canary"})
    assert (response.status_code, response.json()) == (404, NOT_FOUND)


# --- Reviews ---------------------------------------------------------------------------------


@pytest.fixture
def pending(author, v1, production) -> PromotionRequest:
    return promotion_request(actor=author, version=v1, stage=production, reason="ship")


def test_author_cannot_approve(http, author, pending):
    body = error(http.post(author, promotion_url(pending, "approve")), 403, "separation_of_duties")
    assert body["message"] == "Authors and requesters cannot review their own promotion."
    assert not Review.objects.exists()
    assert "promotion.reviewed" not in decisions()


def test_requester_cannot_reject(http, approver1, approver2, v1, production):
    promotion = promotion_request(actor=approver1, version=v1, stage=production)
    url = promotion_url(promotion, "reject")
    error(http.post(approver1, url, {"comment": "no"}), 403, "separation_of_duties")
    assert http.post(approver2, url, {"comment": "no"}).status_code == 200


def test_non_approver_is_403(http, owner, viewer, pending):
    for user in (owner, viewer):
        body = error(http.post(user, promotion_url(pending, "approve")), 403, "not_an_approver")
        assert "production" in body["message"]
    assert not Review.objects.exists()


def test_approve_twice_is_409(http, approver1, pending):
    assert http.post(approver1, promotion_url(pending, "approve")).status_code == 200
    error(http.post(approver1, promotion_url(pending, "approve")), 409, "conflict")
    error(http.post(approver1, promotion_url(pending, "reject"), {"comment": "x"}), 409, "conflict")
    assert Review.objects.count() == 1


def test_reject_needs_a_comment(http, approver1, pending):
    url = promotion_url(pending, "reject")
    body = error(http.post(approver1, url, {"comment": "   "}), 400, "invalid")
    assert body["details"] == {"field": "comment"}
    body = error(http.post(approver1, url, {}), 422, "invalid")
    assert body["details"]["errors"][0]["field"] == "comment"
    assert not Review.objects.exists()
    response = http.post(approver1, url, {"comment": "latency regressed"})
    assert response.status_code == 200
    assert response.json()["status"] == "rejected"
    assert response.json()["reviews"][0]["decision"] == "reject"
    assert decisions()[-1] == "promotion.rejected"


def test_cancel_by_requester(http, author, approver1, pending):
    error(http.post(approver1, promotion_url(pending, "cancel")), 403, "forbidden")
    response = http.post(author, promotion_url(pending, "cancel"))
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert decisions()[-1] == "promotion.cancelled"
    error(http.post(author, promotion_url(pending, "cancel")), 409, "conflict")


def _cancel(promotion: PromotionRequest) -> None:
    PromotionRequest.objects.filter(pk=promotion.pk).update(status=PromotionStatus.CANCELLED)


def _expire(promotion: PromotionRequest) -> None:
    past = timezone.now() - timedelta(seconds=1)
    PromotionRequest.objects.filter(pk=promotion.pk).update(expires_at=past)


@pytest.mark.parametrize("action", ["approve", "reject"])
@pytest.mark.parametrize("state", ["cancelled", "expired", "superseded", "rejected", "approved"])
def test_deciding_a_closed_request_is_409(
    http, owner, author, approver1, approver2, v1, v2, production, action, state
):
    policy_update(actor=owner, stage=production, required_approvals=1)
    promotion = promotion_request(actor=author, version=v1, stage=production)
    if state == "cancelled":
        _cancel(promotion)
    elif state == "expired":
        _expire(promotion)
    elif state == "superseded":
        other = promotion_request(actor=author, version=v2, stage=production)
        promotion_approve(promotion=other, reviewer=approver2, via="web")
    elif state == "rejected":
        http.post(approver2, promotion_url(promotion, "reject"), {"comment": "no"})
    else:
        http.post(approver2, promotion_url(promotion, "approve"))
    before = (Review.objects.count(), decisions(), Stage.objects.get(pk=production.pk).since)
    body = error(
        http.post(approver1, promotion_url(promotion, action), {"comment": "x"}), 409, "conflict"
    )
    assert body["details"]["status"] == state
    assert (
        Review.objects.count(),
        decisions(),
        Stage.objects.get(pk=production.pk).since,
    ) == before
    assert http.get(approver1, promotion_url(promotion)).json()["status"] == state


def test_read_only_token_cannot_write(http, api_client, author, approver1, pending, owner):
    _, plaintext = token_create(user=approver1, name="reader", scope=TokenScope.READ)
    read_only = bearer(plaintext)
    for url, body in (
        (promotion_url(pending, "approve"), {}),
        (promotion_url(pending, "reject"), {"comment": "no"}),
        (promotion_url(pending, "cancel"), None),
        (request_url(1), {"stage": "staging"}),
        (f"{PRODUCTION_URL}/rollback", {"reason": "x"}),
        (STAGES_URL, {"name": "canary"}),
    ):
        response = api_client.post(url, body or {}, content_type="application/json", **read_only)
        assert response.status_code == 403, url
        assert response.json()["error"]["message"] == "This token is read-only."
    response = api_client.put(
        f"{PRODUCTION_URL}/policy", {}, content_type="application/json", **read_only
    )
    assert response.status_code == 403
    assert api_client.get(promotion_url(pending), **read_only).status_code == 200
    assert not Review.objects.exists()
    assert PromotionRequest.objects.get().status == PromotionStatus.PENDING


# --- Who may not see: one 404 for missing and hidden -----------------------------------------


def _endpoints(promotion_id: int, model: str = "fraud-detector") -> list[tuple[str, str, Any]]:
    stages = f"/api/v1/models/{model}/stages"
    promotion = f"{PROMOTIONS_URL}/{promotion_id}"
    return [
        ("get", stages, None),
        ("post", stages, {"name": "canary"}),
        ("get", f"{stages}/production", None),
        ("get", f"{stages}/production?at=2026-03-14", None),
        ("post", f"{stages}/production/rollback", {"reason": "x"}),
        ("get", f"{stages}/production/policy", None),
        ("put", f"{stages}/production/policy", {"required_approvals": 1}),
        ("post", f"/api/v1/models/{model}/versions/1/promotions", {"stage": "production"}),
        ("get", promotion, None),
        ("post", f"{promotion}/approve", {"comment": "x"}),
        ("post", f"{promotion}/reject", {"comment": "x"}),
        ("post", f"{promotion}/cancel", None),
    ]


def _call(http: Api, user: User, method: str, url: str, body: Any) -> Any:
    if method == "get":
        return http.client.get(url, **http.auth(user))
    if method == "put":
        return http.put(user, url, body)
    return http.post(user, url, body)


def test_outsider_gets_the_missing_model_404_everywhere(http, outsider, pending):
    snapshot = (decisions(), Review.objects.count(), Stage.objects.count())
    hidden = _endpoints(pending.pk)
    missing = _endpoints(pending.pk + 1000, model="no-such-model")
    for (method, url, body), (_, missing_url, _) in zip(hidden, missing, strict=True):
        response = _call(http, outsider, method, url, body)
        assert (response.status_code, response.json()) == (404, NOT_FOUND), url
        response = _call(http, outsider, method, missing_url, body)
        assert (response.status_code, response.json()) == (404, NOT_FOUND), missing_url
    assert (decisions(), Review.objects.count(), Stage.objects.count()) == snapshot
    assert http.get(outsider, PROMOTIONS_URL).json()["count"] == 0


def test_unknown_stage_is_404(http, owner):
    for suffix in ("canary", "canary/policy", "Production", "x" * 100):
        response = http.get(owner, f"{STAGES_URL}/{suffix}")
        assert (response.status_code, response.json()) == (404, NOT_FOUND)


def test_viewer_may_read_but_not_request_or_configure(http, viewer, v1, production):
    assert http.get(viewer, PRODUCTION_URL).status_code == 200
    assert http.get(viewer, f"{PRODUCTION_URL}/policy").status_code == 200
    error(http.post(viewer, request_url(1), {"stage": "production"}), 403, "forbidden")
    policy = {"required_approvals": 0}
    error(http.put(viewer, f"{PRODUCTION_URL}/policy", policy), 403, "forbidden")
    error(http.post(viewer, STAGES_URL, {"name": "canary"}), 403, "forbidden")
    error(http.post(viewer, f"{PRODUCTION_URL}/rollback", {"reason": "x"}), 403, "forbidden")
    assert StagePolicy.objects.get(stage=production).required_approvals == 2
    assert not PromotionRequest.objects.exists()


def test_editor_may_not_configure(http, author, production):
    error(http.put(author, f"{PRODUCTION_URL}/policy", {"required_approvals": 0}), 403, "forbidden")
    error(http.post(author, STAGES_URL, {"name": "canary"}), 403, "forbidden")


# --- Rollback --------------------------------------------------------------------------------


def test_rollback_rules(http, author, owner, approver1, v1, v2, staging):
    url = f"{STAGING_URL}/rollback"
    error(http.post(approver1, url, {"reason": "x"}), 409, "conflict")  # nothing to go back to
    for number in (1, 2):
        created = http.post(author, request_url(number), {"stage": "staging"}).json()
        http.post(approver1, promotion_url(created, "approve"))
    body = error(http.post(approver1, url, {"reason": " "}), 400, "invalid")
    assert body["details"] == {"field": "reason"}
    error(http.post(approver1, url, {}), 422, "invalid")
    error(http.post(author, url, {"reason": "mine"}), 403, "forbidden")
    response = http.post(owner, url, {"reason": "owner says so"})
    assert response.status_code == 200
    assert response.json()["version"] == 1
    assert StageAssignment.objects.filter(stage=staging, is_rollback=True).count() == 1
    assert decisions()[-1] == "stage.rolled_back"


# --- Stages ----------------------------------------------------------------------------------


def test_owner_adds_a_stage(http, owner, fraud_model):
    response = http.post(owner, STAGES_URL, {"name": "canary"})
    assert response.status_code == 201
    assert response.json() == {"stage": "canary", "version": None, "since": None, "history": []}
    assert list(http.get(owner, STAGES_URL).json()) == ["staging", "production", "canary"]
    assert http.get(owner, f"{STAGES_URL}/canary/policy").json()["required_approvals"] == 1
    assert decisions()[-1] == "stage.created"
    error(http.post(owner, STAGES_URL, {"name": "canary"}), 409, "already_exists")
    body = error(http.post(owner, STAGES_URL, {"name": "Bad Name"}), 400, "invalid")
    assert body["details"] == {"field": "name"}
    assert Stage.objects.filter(model=fraud_model).count() == 3


# --- Policies --------------------------------------------------------------------------------


def test_policy_get(http, viewer, production, staging, owner):
    team = Group.objects.create(name="risk-leads")
    set_approver(team, production, True)
    policy_update(actor=owner, stage=production, requires_stage="staging")
    assert http.get(viewer, f"{PRODUCTION_URL}/policy").json() == {
        "required_approvals": 2,
        "request_ttl_hours": 168,
        "requires_stage": "staging",
        "metric_gates": [],
        "required_card_sections": [],
        "required_metadata": [],
        "requires_verified_files": True,
        "approvers": {"users": ["erin", "frank"], "groups": ["risk-leads"]},
    }


def test_policy_put_applies_a_subset_and_approver_sets(http, owner, approver2, production):
    team = Group.objects.create(name="risk-leads")
    gina = make_user("gina")
    url = f"{PRODUCTION_URL}/policy"
    before = http.get(owner, url).json()
    body = {
        "required_approvals": 3,
        "metric_gates": [{"metric": "auc", "op": ">=", "against": "holder"}],
        "approvers": {"users": ["erin", "gina"], "groups": ["risk-leads"]},
    }
    response = http.put(owner, url, body)
    assert response.status_code == 200
    after = response.json()
    assert after == {
        **before,
        "required_approvals": 3,
        "metric_gates": [{"metric": "auc", "op": ">=", "against": "holder", "threshold": None}],
        "approvers": {"users": ["erin", "gina"], "groups": ["risk-leads"]},
    }
    assert list(approver_users_of(production)) == [User.objects.get(username="erin"), gina]
    assert list(approver_groups_of(production)) == [team]
    event = AuditEvent.objects.get(action="policy.updated")
    assert event.changes == {
        "before": {"required_approvals": 2, "metric_gates": []},
        "after": {
            "required_approvals": 3,
            "metric_gates": [{"metric": "auc", "op": ">=", "against": "holder"}],
        },
    }
    approvers = AuditEvent.objects.filter(action__startswith="approver.").order_by("id")
    assert [(event.action, event.changes["principal"]) for event in approvers] == [
        ("approver.granted", "user:gina"),
        ("approver.revoked", "user:frank"),
        ("approver.granted", "group:risk-leads"),
    ]
    assert decisions()[-4:] == [
        "policy.updated",
        "approver.granted",
        "approver.revoked",
        "approver.granted",
    ]
    # What a GET returns can be sent back as it is: nothing changes, nothing is audited.
    count = len(decisions())
    assert http.put(owner, url, after).json() == after
    assert len(decisions()) == count
    # A list left out is unchanged; an empty list removes them all.
    response = http.put(owner, url, {"approvers": {"groups": []}})
    assert response.json()["approvers"] == {"users": ["erin", "gina"], "groups": []}
    assert approver2 not in approver_users_of(production)


def test_policy_put_clears_requires_stage(http, owner, production):
    url = f"{PRODUCTION_URL}/policy"
    assert http.put(owner, url, {"requires_stage": "staging"}).json()["requires_stage"] == "staging"
    assert http.put(owner, url, {"requires_stage": None}).json()["requires_stage"] is None
    event = AuditEvent.objects.filter(action="policy.updated").order_by("id").last()
    assert event.changes == {
        "before": {"requires_stage": "staging"},
        "after": {"requires_stage": ""},
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"required_approvals": 21}, "required_approvals"),
        ({"required_approvals": -1}, "required_approvals"),
        ({"request_ttl_hours": 0}, "request_ttl_hours"),
        ({"request_ttl_hours": 8761}, "request_ttl_hours"),
        ({"required_approvals": None}, "required_approvals"),
        ({"requires_verified_files": None}, "requires_verified_files"),
        ({"metric_gates": [{"metric": "auc", "op": "=="}]}, "metric_gates.0.op"),
        ({"metric_gates": [{"metric": "auc", "against": "mean"}]}, "metric_gates.0.against"),
        ({"metric_gates": [{"metric": " "}]}, "metric_gates.0.metric"),
        (
            {"metric_gates": [{"metric": "auc"}, {"metric": "f1", "against": "threshold"}]},
            "metric_gates.1.threshold",
        ),
        (
            {"metric_gates": [{"metric": "auc", "against": "threshold", "threshold": "0.9"}]},
            "metric_gates.0.threshold",
        ),
        (
            {"metric_gates": [{"metric": "auc", "against": "threshold", "threshold": True}]},
            "metric_gates.0.threshold",
        ),
        ({"metric_gates": [{"metric": f"m{i}"} for i in range(51)]}, "metric_gates"),
        ({"required_card_sections": ["Intended use", ""]}, "required_card_sections.1"),
        ({"required_metadata": ["x" * 201]}, "required_metadata.0"),
        ({"requires_stage": "production"}, "requires_stage"),
        ({"requires_stage": "canary"}, "requires_stage"),
        ({"requires_stage": "bad\x00name"}, "requires_stage"),
        ({"approvers": {"users": ["erin", "nobody"]}}, "approvers.users"),
        ({"approvers": {"groups": ["no-such-team"]}}, "approvers.groups"),
        ({"approvers": {"users": ["erin\x00"]}}, "approvers.users"),
        ({"metric_gates": [{"metric": "a\x00uc"}]}, "metric_gates.0.metric"),
    ],
)
def test_policy_put_refuses_bad_values_with_400(http, owner, production, body, field):
    url = f"{PRODUCTION_URL}/policy"
    before, count = http.get(owner, url).json(), len(decisions())
    # Mixed with a valid change and an approver change: nothing at all may be applied.
    response = http.put(owner, url, {"request_ttl_hours": 24, **body})
    assert error(response, 400, "invalid")["details"]["field"] == field
    assert field.split(".")[0] in response.json()["error"]["message"]
    assert http.get(owner, url).json() == before
    assert len(decisions()) == count


def test_policy_put_names_unknown_approvers(http, owner, production):
    body = {"approvers": {"users": ["erin", "nobody", "ghost"]}}
    response = http.put(owner, f"{PRODUCTION_URL}/policy", body)
    details = error(response, 400, "invalid")["details"]
    assert details == {"field": "approvers.users", "unknown": ["nobody", "ghost"]}
    assert "nobody, ghost" in response.json()["error"]["message"]


def test_policy_put_refuses_a_stage_loop(http, owner, production):
    http.put(owner, f"{PRODUCTION_URL}/policy", {"requires_stage": "staging"})
    response = http.put(owner, f"{STAGING_URL}/policy", {"requires_stage": "production"})
    assert error(response, 400, "invalid")["details"] == {"field": "requires_stage"}
    assert "loop" in response.json()["error"]["message"]


def test_nan_threshold_is_refused(http, owner, production):
    raw = '{"metric_gates": [{"metric": "auc", "against": "threshold", "threshold": NaN}]}'
    response = http.client.put(
        f"{PRODUCTION_URL}/policy", raw, content_type="application/json", **http.auth(owner)
    )
    assert error(response, 400, "invalid")["details"] == {"field": "metric_gates.0.threshold"}
    assert StagePolicy.objects.get(stage__name="production").metric_gates == []


@pytest.mark.parametrize(
    "body",
    [
        {"required_approvals": "2"},
        {"required_approvals": True},
        {"required_approvals": 1.5},
        {"requires_verified_files": "yes"},
        {"metric_gates": "auc"},
        {"metric_gates": [{"metric": "auc", "weight": 2}]},
        {"approvers": {"users": "erin"}},
        {"approvers": {"roles": []}},
        {"stage": "production"},
        {"id": 1},
    ],
)
def test_policy_put_with_wrong_shapes_is_422(http, owner, production, body):
    error(http.put(owner, f"{PRODUCTION_URL}/policy", body), 422, "invalid")
    assert StagePolicy.objects.get(stage=production).required_approvals == 2


# --- Unknown fields: 422, nothing changes ----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("request", {"stage": "production", "status": "approved"}, "status"),
        ("request", {"stage": "production", "required_approvals": 0}, "required_approvals"),
        ("approve", {"comment": "x", "decision": "approve"}, "decision"),
        ("approve", {"via": "email"}, "via"),
        ("reject", {"comment": "x", "reviewer": "erin"}, "reviewer"),
        ("rollback", {"reason": "x", "version": 1}, "version"),
        ("stages", {"name": "canary", "position": 0}, "position"),
    ],
)
def test_unknown_body_fields_are_422(http, author, approver1, owner, pending, path, body, field):
    user, url = {
        "request": (author, request_url(1)),
        "approve": (approver1, promotion_url(pending, "approve")),
        "reject": (approver1, promotion_url(pending, "reject")),
        "rollback": (approver1, f"{PRODUCTION_URL}/rollback"),
        "stages": (owner, STAGES_URL),
    }[path]
    count = len(decisions())
    body_error = error(http.post(user, url, body), 422, "invalid")
    assert body_error["details"]["errors"][0]["field"] == field
    assert len(decisions()) == count
    assert not Review.objects.exists()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("approve", {"comment": "x" * 10_001}, "comment"),
        ("approve", {"comment": "nul\x00byte"}, "comment"),
        ("reject", {"comment": "nul\x00byte"}, "comment"),
        ("reject", {"comment": "\ud800"}, "comment"),
        ("request", {"stage": "staging", "reason": "nul\x00byte"}, "reason"),
        ("rollback", {"reason": "x" * 10_001}, "reason"),
    ],
)
def test_unstorable_or_too_long_text_is_400(http, author, approver1, pending, path, body, field):
    user, url = {
        "request": (author, request_url(1)),
        "approve": (approver1, promotion_url(pending, "approve")),
        "reject": (approver1, promotion_url(pending, "reject")),
        "rollback": (approver1, f"{PRODUCTION_URL}/rollback"),
    }[path]
    count = len(decisions())
    assert error(http.post(user, url, body), 400, "invalid")["details"] == {"field": field}
    assert len(decisions()) == count
    assert not Review.objects.exists()


# --- Reading promotions ----------------------------------------------------------------------


def test_get_one_promotion(http, approver1, viewer, pending):
    http.post(approver1, promotion_url(pending, "approve"), {"comment": "ok"})
    response = http.get(viewer, promotion_url(pending))
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["status"], body["approvals"]) == (pending.pk, "pending", 1)
    assert body["reviews"][0]["reviewer"] == "erin"
    for missing in (f"{PROMOTIONS_URL}/999999", f"{PROMOTIONS_URL}/99999999999999999999"):
        response = http.get(viewer, missing)
        assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


def test_expired_but_not_yet_swept_reads_as_expired(http, author, pending):
    _expire(pending)
    assert http.get(author, promotion_url(pending)).json()["status"] == "expired"
    assert http.get(author, PROMOTIONS_URL, status="pending").json()["count"] == 0
    assert http.get(author, PROMOTIONS_URL, status="expired").json()["count"] == 1


def test_list_filters(http, owner, author, approver1, approver2, v1, v2, production, staging):
    other = RegisteredModel.objects.create(name="churn", name_key="churn", created_by=owner)
    grant(approver1, other, "viewer")
    churn_stage = Stage.objects.create(model=other, name="production")
    StagePolicy.objects.create(stage=churn_stage, required_approvals=1)
    set_approver(approver1, churn_stage, True)
    churn_v1 = make_version(other, owner, 1)
    a = promotion_request(actor=author, version=v1, stage=production)
    b = promotion_request(actor=author, version=v2, stage=staging)
    c = promotion_request(actor=approver2, version=churn_v1, stage=churn_stage)
    promotion_approve(promotion=b, reviewer=approver2, via="web")

    def ids(user: User, **params: Any) -> list[int]:
        response = http.get(user, PROMOTIONS_URL, **params)
        assert response.status_code == 200
        return [item["id"] for item in response.json()["items"]]

    assert ids(approver1) == [c.pk, b.pk, a.pk]
    assert ids(author) == [b.pk, a.pk]  # churn is private to owner and erin
    assert ids(approver1, status="pending") == [c.pk, a.pk]
    assert ids(approver1, status="approved") == [b.pk]
    assert ids(approver1, model="churn") == [c.pk]
    assert ids(approver1, model="nope") == []
    assert ids(approver1, model="bad\x00name") == []
    assert ids(approver1, mine="to_review") == [a.pk, c.pk]  # soonest expiry first
    assert ids(approver2, mine="to_review") == [a.pk]  # frank requested c and reviewed b
    assert ids(author, mine="requested") == [b.pk, a.pk]
    assert ids(author, mine="to_review") == []
    assert ids(approver1, mine="to_review", model="churn") == [c.pk]
    page = http.get(approver1, PROMOTIONS_URL, page_size=2, page=2).json()
    assert (page["count"], page["page"], page["pages"], len(page["items"])) == (3, 2, 2, 1)
    for params in ({"status": "open"}, {"mine": "all"}, {"page": 0}, {"page_size": 101}):
        error(http.get(approver1, PROMOTIONS_URL, **params), 422, "invalid")


def _list_queries(http: Api, user: User, **params: Any) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = http.get(user, PROMOTIONS_URL, page_size=100, **params)
    assert response.status_code == 200
    return len(captured.captured_queries)


@pytest.mark.parametrize("params", [{}, {"mine": "to_review"}, {"status": "pending"}])
def test_list_query_count_does_not_grow(
    http,
    owner,
    author,
    approver1,
    approver2,
    fraud_model,
    staging,
    django_assert_max_num_queries,
    params,
):
    _list_queries(http, approver1)  # the token's first use records last_used_at
    policy_update(actor=owner, stage=staging, required_approvals=30)

    def add(numbers: range) -> None:
        for number in numbers:
            version = make_version(fraud_model, author, number)
            promotion = promotion_request(actor=author, version=version, stage=staging)
            promotion_approve(promotion=promotion, reviewer=approver2, via="web")

    add(range(1, 6))
    small = _list_queries(http, approver1, **params)
    add(range(6, 31))
    with django_assert_max_num_queries(small):
        response = http.get(approver1, PROMOTIONS_URL, page_size=100, **params)
    body = response.json()
    assert body["count"] == 30 and len(body["items"]) == 30
    assert all(item["approvals"] == 1 for item in body["items"])
    assert small <= 5, small  # token, count, page, reviews


# --- Documentation ---------------------------------------------------------------------------


def test_every_endpoint_is_documented():
    schema = ninja_api.get_openapi_schema()
    operations = [
        (path, method, operation)
        for path, methods in schema["paths"].items()
        if "/stages" in path or "/promotions" in path
        for method, operation in methods.items()
    ]
    assert len(operations) == 13  # the 12 approvals endpoints and the deploy manifest
    for path, method, operation in operations:
        assert operation.get("summary"), (path, method)
        success = {code: value for code, value in operation["responses"].items() if int(code) < 300}
        [(_code, response)] = success.items()
        assert "application/json" in response["content"], (path, method)
        assert 401 in {int(code) for code in operation["responses"]}
