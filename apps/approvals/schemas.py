"""Request and response schemas of the stage, promotion, review, rollback and policy endpoints.

As everywhere in the API (SECURITY AC-04), input schemas forbid unknown fields: a body with
`status`, `approvals` or `requested_by` is a 422 naming the field, and nothing changes.
Shapes and types are checked here (a 422); business rules (lengths, storable text, ranges, gate
operators, stages and approvers that exist) are a 400 naming the field.

The policy output carries exactly the fields the policy PUT accepts: what a GET returns can
be edited and sent back as it is.
"""

from datetime import datetime
from typing import Any, Literal

from django.utils import timezone
from ninja import Field, Schema
from pydantic import ConfigDict, StrictBool, StrictInt

from apps.approvals.models import Decision, PromotionRequest, PromotionStatus, Review

PromotionStatusName = Literal[
    "pending", "approved", "rejected", "cancelled", "superseded", "expired"
]
MineFilter = Literal["to_review", "requested"]


class StrictIn(Schema):
    """Base of every input schema: unknown fields are a 422 (no mass assignment)."""

    model_config = ConfigDict(extra="forbid")


# --- Errors (documentation of the one error shape) -----------------------------------------


class ErrorBody(Schema):
    code: str = Field(examples=["gate_failed"])
    message: str
    details: dict[str, Any]


class ErrorOut(Schema):
    error: ErrorBody


# --- Stages ----------------------------------------------------------------------------------


class StageHolderOut(Schema):
    version: int | None = Field(description="The version number holding the stage, or null")
    since: datetime | None


class StageCreateIn(StrictIn):
    name: str = Field(description="1-32 lowercase letters, digits, '-' or '_'; a letter first")


class HistoryEntryOut(Schema):
    version: int
    from_: datetime = Field(alias="from", description="When this version entered the stage")
    to: datetime | None = Field(description="When it left; null while it still holds it")
    by: str | None = Field(description="Who made the change (the deciding approver)")
    via_request: int | None = Field(description="The promotion request that moved it, if any")
    rollback: bool
    reason: str


class StageOut(Schema):
    stage: str
    version: int | None
    since: datetime | None
    history: list[HistoryEntryOut] = Field(description="Newest first")


class StageAtOut(Schema):
    stage: str
    at: datetime = Field(description="The moment asked about, in UTC")
    version: int | None = Field(description="What held the stage then; null if nothing did")
    since: datetime | None
    until: datetime | None = Field(description="When it stopped holding it; null: still does")
    by: str | None
    via_request: int | None
    approved_by: list[str] = Field(description="Approvers of the request that put it there")
    replaced: int | None = Field(description="The version it replaced; null if none")
    rollback: bool = Field(description="Whether a rollback put it there")


class RollbackIn(StrictIn):
    reason: str = Field(description="Required; shown in the history")


# --- Promotions ------------------------------------------------------------------------------


class PromotionCreateIn(StrictIn):
    stage: str = Field(examples=["production"])
    reason: str = ""


class ApproveIn(StrictIn):
    comment: str = ""


class RejectIn(StrictIn):
    comment: str = Field(description="Required: why it is rejected")


class ReviewOut(Schema):
    reviewer: str
    decision: str
    comment: str
    via: str = Field(examples=["api"], description="web, email, api or mlflow")
    at: datetime

    @staticmethod
    def resolve_reviewer(obj: Review) -> str:
        return obj.reviewer.username


class GateOut(Schema):
    gate: str = Field(examples=["metric:auc"])
    passed: bool
    message: str
    details: dict[str, Any]


class PromotionOut(Schema):
    id: int
    model: str
    version: int
    stage: str
    status: PromotionStatusName = Field(
        description="A pending request past its expiry reads as expired"
    )
    requested_by: str
    reason: str
    required_approvals: int
    approvals: int
    reviews: list[ReviewOut]
    gates: list[GateOut] = Field(description="The gates as evaluated when it was requested")
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None

    @staticmethod
    def resolve_model(obj: PromotionRequest) -> str:
        return obj.version.model.name

    @staticmethod
    def resolve_version(obj: PromotionRequest) -> int:
        return obj.version.number

    @staticmethod
    def resolve_stage(obj: PromotionRequest) -> str:
        return obj.stage.name

    @staticmethod
    def resolve_status(obj: PromotionRequest) -> str:
        # The sweep closes expired requests every few minutes; until then they are expired
        # all the same (no decision is accepted), so say so.
        if obj.status == PromotionStatus.PENDING and obj.expires_at <= timezone.now():
            return PromotionStatus.EXPIRED
        return obj.status

    @staticmethod
    def resolve_requested_by(obj: PromotionRequest) -> str:
        return obj.requested_by.username

    @staticmethod
    def resolve_approvals(obj: PromotionRequest) -> int:
        return sum(review.decision == Decision.APPROVE for review in obj.reviews.all())

    @staticmethod
    def resolve_reviews(obj: PromotionRequest) -> list[Review]:
        return list(obj.reviews.all())  # prefetched by the selectors, ordered by time

    @staticmethod
    def resolve_gates(obj: PromotionRequest) -> list[dict[str, Any]]:
        return obj.gate_results


class PromotionPage(Schema):
    items: list[PromotionOut]
    count: int
    page: int
    pages: int


# --- Policies --------------------------------------------------------------------------------


class MetricGateIn(StrictIn):
    metric: str = Field(examples=["auc"])
    op: str = Field(">=", json_schema_extra={"enum": [">=", "<=", ">", "<"]})
    against: str = Field(
        "holder",
        json_schema_extra={"enum": ["holder", "threshold"]},
        description="Compare with the current holder's value, or with a fixed threshold",
    )
    # Any: the service answers NaN, infinities, booleans and strings with a 400 naming it.
    threshold: Any = Field(None, description="A finite number; required with threshold")


class ApproversIn(StrictIn):
    users: list[str] | None = Field(None, description="Usernames; replaces the user approvers")
    groups: list[str] | None = Field(None, description="Team names; replaces the team approvers")


class PolicyIn(StrictIn):
    """Any subset of the policy; an absent field is unchanged."""

    required_approvals: StrictInt | None = Field(None, description="0 to 20")
    request_ttl_hours: StrictInt | None = Field(None, description="1 to 8760")
    requires_stage: str | None = Field(
        None, description="Another stage of this model a version must have held; null: none"
    )
    metric_gates: list[MetricGateIn] | None = None
    required_card_sections: list[str] | None = None
    required_metadata: list[str] | None = None
    requires_verified_files: StrictBool | None = None
    approvers: ApproversIn | None = Field(
        None, description="Each list given replaces that set (grant the new, revoke the removed)"
    )


class MetricGateOut(Schema):
    metric: str
    op: str
    against: str
    threshold: float | int | None = None


class ApproversOut(Schema):
    users: list[str]
    groups: list[str]


class PolicyOut(Schema):
    required_approvals: int
    request_ttl_hours: int
    requires_stage: str | None
    metric_gates: list[MetricGateOut]
    required_card_sections: list[str]
    required_metadata: list[str]
    requires_verified_files: bool
    approvers: ApproversOut
