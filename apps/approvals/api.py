"""Promotion, review, stage, rollback and policy endpoints (thin: schemas + services).

Models and stages are resolved through `access`: not visible is a 404 with the same body as
a missing model, visible but not allowed is a 403. Every write is one service call; the
endpoint then re-reads what it returns through the selectors (reviews prefetched).
"""

import math
import re
from datetime import UTC, datetime
from typing import Any

from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from ninja import Query, Router, Status

from apps.approvals import access, selectors, services
from apps.approvals.models import PromotionRequest, Stage, StageAssignment, StagePolicy
from apps.approvals.schemas import (
    ApproveIn,
    ErrorOut,
    MineFilter,
    PolicyIn,
    PolicyOut,
    PromotionCreateIn,
    PromotionOut,
    PromotionPage,
    PromotionStatusName,
    RejectIn,
    RollbackIn,
    StageAtOut,
    StageCreateIn,
    StageHolderOut,
    StageOut,
)
from apps.approvals.services import MAX_COMMENT
from apps.approvals.validation import STAGE_NAME
from apps.audit.context import Via, current_context
from apps.registry.access import access_model, access_version
from apps.registry.models import ModelVersion, RegisteredModel
from apps.registry.paths import InvalidModelName, validate_model_name
from apps.registry.validation import check_text
from registry_site.api_errors import ApiError

router = Router(tags=["approvals"])

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_PAGE = 1_000_000  # keeps OFFSET far inside PostgreSQL's range
DEFAULT_HISTORY = 100
MAX_HISTORY = 1000

PageQuery = Query(1, ge=1, le=MAX_PAGE)
PageSizeQuery = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
ModelQuery = Query(None, max_length=128, description="A model name")
MineQuery = Query(None, description="to_review: waiting for my review; requested: asked by me")
AtQuery = Query(
    None,
    max_length=64,
    description="ISO 8601 moment (naive: UTC): answer what held the stage then",
    examples=["2026-03-14T14:00:00Z"],
)
HistoryLimitQuery = Query(DEFAULT_HISTORY, ge=1, le=MAX_HISTORY, description="History entries")

STAGE_PATH = "/models/{name}/stages/{stage}"
PROMOTION_PATH = "/promotions/{int:promotion_id}"


def _errors(*statuses: int) -> dict[int, Any]:
    """Document the error shape for these statuses and 401 (no, bad or expired token)."""
    return dict.fromkeys(sorted({401, *statuses}), ErrorOut)


# --- Resolving path parameters ---------------------------------------------------------------


def _is_model_name(name: str) -> bool:
    try:
        validate_model_name(name)
    except InvalidModelName:
        return False
    return True


def _model(request: HttpRequest, name: str, action: str = "view") -> RegisteredModel:
    # A path that cannot be a model name (NUL, 5 000 characters…) is simply not found.
    if not _is_model_name(name):
        raise Http404("Not found.")
    return access_model(request.auth, name, action)


def _stage_of(model: RegisteredModel, stage: str) -> Stage:
    # A name no stage can have (NUL, 5 000 characters…) is not even looked up.
    found = Stage.objects.filter(model=model, name=stage).first() if _stage_name(stage) else None
    if found is None:
        raise Http404("Not found.")
    found.model = model
    return found


def _stage_name(stage: str) -> bool:
    return STAGE_NAME.fullmatch(stage) is not None


def _stage(request: HttpRequest, name: str, stage: str, action: str = "view") -> Stage:
    return _stage_of(_model(request, name, action), stage)


def _version(request: HttpRequest, name: str, number: int, action: str) -> ModelVersion:
    if not _is_model_name(name):
        raise Http404("Not found.")
    return access_version(request.auth, name, number, action)


def _promotion(request: HttpRequest, promotion_id: int) -> PromotionRequest:
    """The request with its reviews, if the caller may view its model; 404 otherwise."""
    found = selectors.promotion_queryset(request.auth).filter(pk=promotion_id).first()
    if found is None:
        raise Http404("Not found.")
    return found


def _text(value: str, field: str) -> str:
    """A reason or comment PostgreSQL can store (no NUL), within the limit: else a 400."""
    return check_text(value, field, max_chars=MAX_COMMENT)


def _via() -> str:
    """The channel of a review: "mlflow" through the MLflow-compatible routes, else "api"."""
    return Via.MLFLOW if current_context().via == Via.MLFLOW else Via.API


def _paginate(queryset: QuerySet, page: int, page_size: int) -> dict[str, Any]:
    """One COUNT and one page query; a page past the end is empty rather than an error."""
    count = queryset.count()
    start = (page - 1) * page_size
    return {
        "items": list(queryset[start : start + page_size]),
        "count": count,
        "page": page,
        "pages": max(1, math.ceil(count / page_size)),
    }


# --- Shaping stages --------------------------------------------------------------------------


def _username(user: Any) -> str | None:
    return user.username if user is not None else None


def _history_entry(assignment: StageAssignment) -> dict[str, Any]:
    return {
        "version": assignment.version.number,
        "from": assignment.started_at,
        "to": assignment.ended_at,
        "by": _username(assignment.assigned_by),
        "via_request": assignment.promotion_id,
        "rollback": assignment.is_rollback,
        "reason": assignment.reason,
    }


def _stage_out(stage: Stage, limit: int = DEFAULT_HISTORY) -> dict[str, Any]:
    stage.refresh_from_db(fields=["current_version", "since"])
    history = selectors.stage_history(stage).order_by("-started_at", "-pk")[:limit]
    holder = stage.current_version
    return {
        "stage": stage.name,
        "version": holder.number if holder else None,
        "since": stage.since,
        "history": [_history_entry(assignment) for assignment in history],
    }


# A "+" in an unencoded query string arrives as a space: "…T14:00:00 01:00" meant "+01:00".
LOST_PLUS = re.compile(r"^(\S+[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")


def _moment(value: str) -> datetime:
    """An ISO 8601 date or date-time; naive means UTC. A 422 naming `at` otherwise."""
    text = LOST_PLUS.sub(r"\1+\2", value.strip())
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 shifted out of range
        message = "at: not an ISO 8601 date-time (e.g. 2026-03-14T14:00:00Z)."
        details = {"errors": [{"field": "at", "message": message}]}
        raise ApiError(message, status=422, details=details) from None


def _stage_at(stage: Stage, moment: datetime) -> dict[str, Any]:
    held = selectors.holder_at(stage, moment)
    story = selectors.tenure(held) if held else None
    return {
        "stage": stage.name,
        "at": moment,
        "version": held.version.number if held else None,
        "since": held.started_at if held else None,
        "until": held.ended_at if held else None,
        "by": _username(held.assigned_by) if held else None,
        "via_request": held.promotion_id if held else None,
        "approved_by": story.approved_by if story else [],
        "replaced": story.replaced.number if story and story.replaced else None,
        "rollback": held.is_rollback if held else False,
    }


# --- Stages ----------------------------------------------------------------------------------


@router.get(
    "/models/{name}/stages",
    response={200: dict[str, StageHolderOut], **_errors(404)},
    summary="Every stage of a model and what holds it",
)
def stage_list(request: HttpRequest, name: str) -> dict[str, Any]:
    """`{"production": {"version": 3, "since": …}, "staging": {"version": null, …}}`, in
    stage order."""
    stages = selectors.stages_of(_model(request, name))
    return {
        stage.name: {
            "version": stage.current_version.number if stage.current_version else None,
            "since": stage.since,
        }
        for stage in stages
    }


@router.post(
    "/models/{name}/stages",
    response={201: StageOut, **_errors(404, 400, 403, 409, 422)},
    by_alias=True,
    summary="Add a stage (owners)",
)
def stage_create(request: HttpRequest, name: str, payload: StageCreateIn) -> Status:
    """The new stage needs one approval until its policy says otherwise."""
    model = _model(request, name, "manage")
    stage = services.stage_create(actor=request.auth, model=model, name=payload.name)
    return Status(201, _stage_out(stage))


@router.get(
    STAGE_PATH,
    response={200: StageOut | StageAtOut, **_errors(404, 422)},
    by_alias=True,
    summary="A stage: its holder and history, or what held it at a moment",
)
def stage_get(
    request: HttpRequest,
    name: str,
    stage: str,
    at: str | None = AtQuery,
    limit: int = HistoryLimitQuery,
) -> dict[str, Any]:
    """Without `at`: the holder and the history, newest first (`limit` entries). With `at`:
    `{"stage", "at", "version", "since", "until", "by", "via_request"}` for that moment,
    `version` null if nothing held the stage."""
    found = _stage(request, name, stage)
    if at is not None:
        return _stage_at(found, _moment(at))
    return _stage_out(found, limit)


@router.post(
    STAGE_PATH + "/rollback",
    response={200: StageOut, **_errors(404, 400, 403, 409, 422)},
    by_alias=True,
    summary="Put back the version that held the stage before (approvers, owners)",
)
def stage_rollback(request: HttpRequest, name: str, stage: str, payload: RollbackIn) -> Any:
    """Immediate, with a mandatory reason; audited; approvers and watchers are emailed."""
    found = _stage(request, name, stage)
    reason = _text(payload.reason, "reason")
    services.stage_rollback(stage=found, actor=request.auth, reason=reason)
    return _stage_out(found)


# --- Policies --------------------------------------------------------------------------------


def _policy_out(stage: Stage) -> dict[str, Any]:
    policy = StagePolicy.objects.select_related("requires_stage").get(stage=stage)
    return {
        "required_approvals": policy.required_approvals,
        "request_ttl_hours": policy.request_ttl_hours,
        "requires_stage": policy.requires_stage.name if policy.requires_stage else None,
        "metric_gates": policy.metric_gates,
        "required_card_sections": policy.required_card_sections,
        "required_metadata": policy.required_metadata,
        "requires_verified_files": policy.requires_verified_files,
        "approvers": {
            "users": [user.username for user in access.approver_users_of(stage)],
            "groups": [group.name for group in access.approver_groups_of(stage)],
        },
    }


@router.get(STAGE_PATH + "/policy", response={200: PolicyOut, **_errors(404)}, summary="A policy")
def policy_get(request: HttpRequest, name: str, stage: str) -> dict[str, Any]:
    """What a promotion to this stage needs, and who may approve it."""
    return _policy_out(_stage(request, name, stage))


@router.put(
    STAGE_PATH + "/policy",
    response={200: PolicyOut, **_errors(404, 400, 403, 422)},
    summary="Change a policy and its approvers (owners)",
)
def policy_put(request: HttpRequest, name: str, stage: str, payload: PolicyIn) -> dict[str, Any]:
    """Any subset of the fields; absent ones are unchanged. Each approver list given replaces
    that set (new ones granted, removed ones revoked). One transaction, audited."""
    found = _stage(request, name, stage, "manage")
    values = payload.model_dump(exclude_unset=True)
    approvers = values.pop("approvers", None) or {}
    services.policy_replace(
        actor=request.auth,
        stage=found,
        values=values,
        approver_users=approvers.get("users"),
        approver_groups=approvers.get("groups"),
    )
    return _policy_out(found)


# --- Promotions ------------------------------------------------------------------------------


@router.post(
    "/models/{name}/versions/{int:v}/promotions",
    response={201: PromotionOut, **_errors(404, 400, 403, 409, 422)},
    summary="Ask to put a version into a stage",
)
def promotion_create(request: HttpRequest, name: str, v: int, payload: PromotionCreateIn) -> Status:
    """Needs the editor role. Gates run now: a failing one is a 409 `gate_failed` whose
    details name it and its numbers. A stage that needs no approval moves at once."""
    version = _version(request, name, v, "edit")
    stage = _stage_of(version.model, payload.stage)
    promotion = services.promotion_request(
        actor=request.auth, version=version, stage=stage, reason=_text(payload.reason, "reason")
    )
    return Status(201, _promotion(request, promotion.pk))


@router.get("/promotions", response={200: PromotionPage, **_errors(422)}, summary="Promotions")
def promotion_list(
    request: HttpRequest,
    status: PromotionStatusName | None = None,
    model: str | None = ModelQuery,
    mine: MineFilter | None = MineQuery,
    page: int = PageQuery,
    page_size: int = PageSizeQuery,
) -> dict[str, Any]:
    """Requests on the models you may view, newest first (`to_review`: soonest expiry)."""
    if model is not None and not _is_model_name(model):
        return _paginate(PromotionRequest.objects.none(), page, page_size)
    promotions = selectors.promotion_list(request.auth, status=status, model=model, mine=mine)
    return _paginate(promotions, page, page_size)


@router.get(PROMOTION_PATH, response={200: PromotionOut, **_errors(404)}, summary="A promotion")
def promotion_get(request: HttpRequest, promotion_id: int) -> PromotionRequest:
    return _promotion(request, promotion_id)


@router.post(
    PROMOTION_PATH + "/approve",
    response={200: PromotionOut, **_errors(404, 403, 409, 422)},
    summary="Approve (approvers of the stage; not its author or requester)",
)
def promotion_approve(
    request: HttpRequest, promotion_id: int, payload: ApproveIn | None = None
) -> PromotionRequest:
    """The status becomes `approved`, and the stage moves, once the quorum is reached."""
    promotion = access.access_promotion(request.auth, promotion_id)
    comment = _text(payload.comment, "comment") if payload else ""
    services.promotion_approve(
        promotion=promotion, reviewer=request.auth, comment=comment, via=_via()
    )
    return _promotion(request, promotion_id)


@router.post(
    PROMOTION_PATH + "/reject",
    response={200: PromotionOut, **_errors(404, 400, 403, 409, 422)},
    summary="Reject, with a comment (approvers of the stage)",
)
def promotion_reject(request: HttpRequest, promotion_id: int, payload: RejectIn) -> Any:
    """One rejection rejects. A blank comment is a 400."""
    promotion = access.access_promotion(request.auth, promotion_id)
    services.promotion_reject(
        promotion=promotion,
        reviewer=request.auth,
        comment=_text(payload.comment, "comment"),
        via=_via(),
    )
    return _promotion(request, promotion_id)


@router.post(
    PROMOTION_PATH + "/cancel",
    response={200: PromotionOut, **_errors(404, 403, 409)},
    summary="Withdraw a pending request (its requester or an owner)",
)
def promotion_cancel(request: HttpRequest, promotion_id: int) -> PromotionRequest:
    promotion = access.access_promotion(request.auth, promotion_id)
    services.promotion_cancel(promotion=promotion, actor=request.auth)
    return _promotion(request, promotion_id)
