"""Reads shared by the approval pages, the API and the emails."""

import math
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Prefetch, Q, QuerySet

from apps.approvals.access import promotions_visible_to
from apps.approvals.models import (
    Decision,
    PromotionRequest,
    PromotionStatus,
    Review,
    Stage,
    StageAssignment,
    StageGroupObjectPermission,
    StageUserObjectPermission,
)
from apps.registry.models import ModelVersion, RegisteredModel


@dataclass(frozen=True)
class MetricRow:
    name: str
    value: Any
    holder_value: Any
    delta: float | None
    better: bool | None  # None when the direction is unknown or there is nothing to compare


def metrics_comparison(version: ModelVersion, holder: ModelVersion | None) -> list[MetricRow]:
    """The version's metrics next to `holder`'s (a stage's holder), with deltas and direction."""
    holder_metrics = holder.metrics if holder and holder.pk != version.pk else {}
    directions = version.model.metric_directions or {}
    names = sorted(set(version.metrics) | set(holder_metrics))
    return [
        _row(name, version.metrics.get(name), holder_metrics.get(name), directions)
        for name in names
    ]


def _row(name: str, value: Any, holder: Any, directions: dict[str, str]) -> MetricRow:
    if not (_number(value) and _number(holder)):
        return MetricRow(name, value, holder, None, None)
    delta = value - holder
    direction = directions.get(name)
    better = None
    if direction in ("higher", "lower") and delta != 0:
        better = (delta > 0) == (direction == "higher")
    return MetricRow(name, value, holder, delta, better)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def promotion_queryset(user: Any) -> QuerySet[PromotionRequest]:
    return (
        promotions_visible_to(user)
        .select_related("version__model", "stage", "requested_by", "version__created_by")
        .annotate(
            approvals=Count("reviews", filter=Q(reviews__decision=Decision.APPROVE), distinct=True)
        )
        .prefetch_related(Prefetch("reviews", queryset=Review.objects.select_related("reviewer")))
    )


def stages_where_approver(user: Any) -> QuerySet[Stage]:
    direct = StageUserObjectPermission.objects.filter(
        user=user, permission__codename="approve_stage"
    ).values("content_object_id")
    via_groups = StageGroupObjectPermission.objects.filter(
        group__in=user.groups.all(), permission__codename="approve_stage"
    ).values("content_object_id")
    return Stage.objects.filter(Q(pk__in=direct) | Q(pk__in=via_groups))


def inbox(user: Any) -> dict[str, QuerySet[PromotionRequest]]:
    """Waiting for me, requested by me, recently decided — all permission-filtered."""
    base = promotion_queryset(user)
    waiting = (
        base.filter(status=PromotionStatus.PENDING, stage__in=stages_where_approver(user))
        .exclude(requested_by=user)
        .exclude(version__created_by=user)
        .exclude(reviews__reviewer=user)
    )
    return {
        "waiting": waiting.order_by("expires_at"),
        "mine": base.filter(requested_by=user).order_by("-created_at")[:50],
        "decided": base.exclude(status=PromotionStatus.PENDING).order_by("-decided_at")[:50],
    }


def stage_history(stage: Stage) -> QuerySet[StageAssignment]:
    return stage.history.select_related("version", "assigned_by", "promotion")


def stage_summary(model: RegisteredModel) -> dict[str, int | None]:
    """{"production": 3, "staging": None} for the model page and API."""
    rows = Stage.objects.filter(model=model).select_related("current_version")
    return {
        stage.name: stage.current_version.number if stage.current_version else None
        for stage in rows
    }


def holder_at(stage: Stage, moment: Any) -> StageAssignment | None:
    """What held `stage` at `moment` (None: nothing did)."""
    return (
        stage.history.filter(started_at__lte=moment)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=moment))
        .select_related("version", "assigned_by", "promotion")
        .first()
    )


# --- REST API reads ----------------------------------------------------------------------------


def stages_of(model: RegisteredModel) -> QuerySet[Stage]:
    """A model's stages in display order, with their holders (one query)."""
    return (
        Stage.objects.filter(model=model)
        .select_related("current_version")
        .order_by("position", "name")
    )


def promotion_status_filter(status: str) -> Q:
    """Requests whose *effective* status is `status`: a pending request past its expiry is
    expired even before the sweep closes it (no decision is accepted any more)."""
    from django.utils import timezone  # appended block: the module's imports stay untouched

    now = timezone.now()
    if status == PromotionStatus.PENDING:
        return Q(status=PromotionStatus.PENDING, expires_at__gt=now)
    if status == PromotionStatus.EXPIRED:
        return Q(status=PromotionStatus.EXPIRED) | Q(
            status=PromotionStatus.PENDING, expires_at__lte=now
        )
    return Q(status=status)


def promotion_list(
    user: Any, *, status: str | None = None, model: str | None = None, mine: str | None = None
) -> QuerySet[PromotionRequest]:
    """Requests on models `user` may view, filtered; `mine`: "to_review" (waiting for my
    review, soonest expiry first) or "requested" (asked by me). Newest first otherwise."""
    if mine == "to_review":
        promotions = inbox(user)["waiting"].filter(promotion_status_filter("pending"))
    else:
        promotions = promotion_queryset(user).order_by("-created_at", "-pk")
        if mine == "requested":
            promotions = promotions.filter(requested_by=user)
    if model:
        promotions = promotions.filter(stage__model__name=model)
    if status:
        promotions = promotions.filter(promotion_status_filter(status))
    return promotions


def comparison_baseline(promotion: PromotionRequest) -> tuple[ModelVersion | None, str]:
    """What a request's version is compared with, and how to name it.

    Pending: the stage's holder now. Approved: the version it replaced (so the page keeps
    telling the story after later changes). Otherwise: what held the stage when it closed.
    """
    stage = promotion.stage
    if promotion.status == PromotionStatus.PENDING:
        return stage.current_version, "current holder"
    if promotion.status == PromotionStatus.APPROVED:
        own = stage.history.filter(promotion=promotion).first()
        if own is not None:
            before = (
                stage.history.filter(started_at__lt=own.started_at)
                .select_related("version")
                .order_by("-started_at")
                .first()
            )
            return (before.version if before else None), "replaced"
    held = holder_at(stage, promotion.decided_at or promotion.created_at)
    return (held.version if held else None), "holder then"


@dataclass(frozen=True)
class Tenure:
    """One holder of a stage, with the story an auditor asks for."""

    assignment: StageAssignment
    replaced: ModelVersion | None
    approved_by: list[str]


def tenure(assignment: StageAssignment) -> Tenure:
    """Who put `assignment.version` there (approvers of its request) and what it replaced."""
    before = (
        assignment.stage.history.filter(started_at__lt=assignment.started_at)
        .select_related("version")
        .order_by("-started_at")
        .first()
    )
    approvers: list[str] = []
    if assignment.promotion_id:
        approvers = list(
            Review.objects.filter(promotion_id=assignment.promotion_id, decision=Decision.APPROVE)
            .order_by("at")
            .values_list("reviewer__username", flat=True)
        )
    return Tenure(assignment, before.version if before else None, approvers)
