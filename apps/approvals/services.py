"""Every change to stages, policies, promotion requests and reviews.

Each service is one transaction that ends with its audit event. State transitions happen
under a row lock on the promotion request (or the stage), so two approvers at once, an
approval racing a cancellation, or a double submit have exactly one outcome.
"""

from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.approvals import gates
from apps.approvals.access import is_approver
from apps.approvals.models import (
    DEFAULT_STAGES,
    Decision,
    PromotionRequest,
    PromotionStatus,
    Review,
    ReviewLink,
    Stage,
    StageAssignment,
    StagePolicy,
)
from apps.audit.services import audit_record
from apps.registry.access import can
from apps.registry.models import ModelVersion, RegisteredModel
from apps.registry.validation import check_text
from registry_site.api_errors import ApiError, Conflict, Forbidden
from registry_site.prepared import InsertStep, PreparedInsert, insert_together

DEFAULT_REQUIRED_APPROVALS = {"staging": 1, "production": 2}
_INSERT_STAGES = PreparedInsert(Stage)
_INSERT_POLICIES = PreparedInsert(StagePolicy)
MAX_COMMENT = 10_000


def stages_create_defaults(model: RegisteredModel) -> list[Stage]:
    """`staging` and `production` with their default policies, in one statement."""
    steps = default_stage_steps(model)
    insert_together(*steps)
    return steps[0].objs


def default_stage_steps(model: RegisteredModel) -> list[InsertStep]:
    """The rows of `stages_create_defaults`, for `model_create` to insert with the model."""
    stages = [Stage(model=model, name=name, position=position) for name, position in DEFAULT_STAGES]
    policies = [
        StagePolicy(stage=stage, required_approvals=DEFAULT_REQUIRED_APPROVALS.get(stage.name, 1))
        for stage in stages
    ]
    # Policies find their stage's new id by its name, unique within the model.
    return [InsertStep(_INSERT_STAGES, stages, key="name"), InsertStep(_INSERT_POLICIES, policies)]


def _locked(promotion: PromotionRequest) -> PromotionRequest:
    """The request under a row lock, taken after its stage's lock.

    Every path that may move a stage locks the stage first, then requests: two requests
    reaching quorum on one stage at once queue instead of deadlocking.
    """
    list(Stage.objects.select_for_update().filter(pk=promotion.stage_id).values_list("pk"))
    return (
        PromotionRequest.objects.select_for_update(of=("self",))
        .select_related("stage__policy", "version__model", "stage__current_version")
        .get(pk=promotion.pk)
    )


def _ensure_pending(promotion: PromotionRequest) -> None:
    if promotion.status != PromotionStatus.PENDING:
        raise Conflict(
            f"This request is {promotion.status}; it can no longer be decided.",
            details={"status": promotion.status},
        )
    if promotion.expires_at <= timezone.now():
        raise Conflict("This request has expired.", details={"status": "expired"})


def ensure_can_review(promotion: PromotionRequest, reviewer: Any) -> None:
    """Separation of duties first (on every channel, superusers included), then the role."""
    if reviewer.pk in (promotion.requested_by_id, promotion.version.created_by_id):
        raise Forbidden(
            "Authors and requesters cannot review their own promotion.",
            code="separation_of_duties",
        )
    if not is_approver(reviewer, promotion.stage):
        raise Forbidden(
            f"You are not an approver of {promotion.stage.name}.", code="not_an_approver"
        )


def _gate_check(version: ModelVersion, stage: Stage) -> list[gates.GateResult]:
    results = gates.evaluate_gates(version, stage, stage.policy)
    failing = gates.failed(results)
    if failing:
        raise ApiError(
            "; ".join(result.message for result in failing),
            code="gate_failed",
            status=409,
            details={"gates": [result.as_dict() for result in failing]},
        )
    return results


@transaction.atomic
def promotion_request(
    *, actor: Any, version: ModelVersion, stage: Stage, reason: str = ""
) -> PromotionRequest:
    """Ask to put `version` into `stage`; gates must pass; no approvals needed ⇒ moves now."""
    if stage.model_id != version.model_id:
        raise ApiError("That stage belongs to another model.", details={"field": "stage"})
    reason = check_text(reason, "reason", max_chars=MAX_COMMENT)
    stage = Stage.objects.select_for_update(of=("self",)).select_related("policy").get(pk=stage.pk)
    if stage.current_version_id == version.pk:
        raise Conflict(f"v{version.number} already holds {stage.name}.")
    results = _gate_check(version, stage)
    policy = stage.policy
    try:
        with transaction.atomic():
            promotion = PromotionRequest.objects.create(
                version=version,
                stage=stage,
                requested_by=actor,
                reason=reason[:MAX_COMMENT],
                required_approvals=policy.required_approvals,
                gate_results=[result.as_dict() for result in results],
                expires_at=timezone.now() + timedelta(hours=policy.request_ttl_hours),
            )
    except IntegrityError:
        raise Conflict(
            f"A request to put v{version.number} into {stage.name} is already open."
        ) from None
    audit_record(
        actor=actor,
        action="promotion.requested",
        target=promotion,
        changes={"after": {"version": version.number, "stage": stage.name, "reason": reason}},
    )
    if policy.required_approvals == 0:
        _approve_and_assign(promotion, actor)
    else:
        _enqueue("notify_approvers_task", promotion.pk)
    return promotion


@transaction.atomic
def promotion_approve(
    *, promotion: PromotionRequest, reviewer: Any, comment: str = "", via: str
) -> PromotionRequest:
    """Record an approval; move the stage when the quorum is reached."""
    comment = check_text(comment, "comment", max_chars=MAX_COMMENT)
    promotion = _locked(promotion)
    _ensure_pending(promotion)
    ensure_can_review(promotion, reviewer)
    _create_review(promotion, reviewer, Decision.APPROVE, comment, via)
    audit_record(
        actor=reviewer,
        action="promotion.reviewed",
        target=promotion,
        changes={"decision": "approve", "comment": comment},
        via=via,
    )
    approvals = promotion.reviews.filter(decision=Decision.APPROVE).count()
    if approvals >= promotion.required_approvals:
        _approve_and_assign(promotion, reviewer)
    return promotion


@transaction.atomic
def promotion_reject(
    *, promotion: PromotionRequest, reviewer: Any, comment: str, via: str
) -> PromotionRequest:
    """One rejection rejects; a reason is required."""
    comment = check_text(comment, "comment", max_chars=MAX_COMMENT)
    if not comment.strip():
        raise ApiError("A rejection needs a comment.", details={"field": "comment"})
    promotion = _locked(promotion)
    _ensure_pending(promotion)
    ensure_can_review(promotion, reviewer)
    _create_review(promotion, reviewer, Decision.REJECT, comment, via)
    _close(promotion, PromotionStatus.REJECTED)
    audit_record(
        actor=reviewer,
        action="promotion.rejected",
        target=promotion,
        changes={"decision": "reject", "comment": comment},
        via=via,
    )
    _enqueue("notify_decision_task", promotion.pk)
    return promotion


@transaction.atomic
def promotion_cancel(*, promotion: PromotionRequest, actor: Any) -> PromotionRequest:
    """The requester or an owner withdraws a pending request."""
    promotion = _locked(promotion)
    if actor.pk != promotion.requested_by_id and not can(actor, "manage", promotion.stage.model):
        raise Forbidden("Only the requester or an owner can cancel this request.")
    _ensure_pending(promotion)
    _close(promotion, PromotionStatus.CANCELLED)
    audit_record(actor=actor, action="promotion.cancelled", target=promotion)
    return promotion


def _create_review(
    promotion: PromotionRequest, reviewer: Any, decision: str, comment: str, via: str
) -> Review:
    if promotion.reviews.filter(reviewer=reviewer).exists():
        raise Conflict("You have already reviewed this request.")
    return Review.objects.create(
        promotion=promotion,
        reviewer=reviewer,
        decision=decision,
        comment=comment[:MAX_COMMENT],
        via=via,
    )


def _close(promotion: PromotionRequest, status: str) -> None:
    promotion.status = status
    promotion.decided_at = timezone.now()
    promotion.revision += 1
    promotion.save(update_fields=["status", "decided_at", "revision"])


def _approve_and_assign(promotion: PromotionRequest, actor: Any) -> None:
    """Quorum reached: gates again, move the stage, supersede the rest, notify."""
    _gate_check(promotion.version, promotion.stage)
    _close(promotion, PromotionStatus.APPROVED)
    audit_record(actor=actor, action="promotion.approved", target=promotion)
    stage_assign(stage=promotion.stage, version=promotion.version, actor=actor, promotion=promotion)
    _supersede_others(promotion, actor)
    _enqueue("notify_decision_task", promotion.pk)


def _supersede_others(promotion: PromotionRequest, actor: Any) -> None:
    others = PromotionRequest.objects.select_for_update().filter(
        stage=promotion.stage, status=PromotionStatus.PENDING
    )
    for other in others.exclude(pk=promotion.pk):
        _close(other, PromotionStatus.SUPERSEDED)
        audit_record(
            actor=actor,
            action="promotion.superseded",
            target=other,
            changes={"by": promotion.pk},
        )


def stage_assign(
    *,
    stage: Stage,
    version: ModelVersion,
    actor: Any,
    promotion: PromotionRequest | None = None,
    reason: str = "",
    is_rollback: bool = False,
) -> Stage:
    """Put `version` into `stage` (caller holds the transaction) and record the history."""
    stage = Stage.objects.select_for_update().get(pk=stage.pk)
    now = timezone.now()
    previous = stage.current_version_id
    StageAssignment.objects.filter(stage=stage, ended_at__isnull=True).update(ended_at=now)
    StageAssignment.objects.create(
        stage=stage,
        version=version,
        started_at=now,
        assigned_by=actor,
        promotion=promotion,
        is_rollback=is_rollback,
        reason=reason,
    )
    stage.current_version = version
    stage.since = now
    stage.save(update_fields=["current_version", "since"])
    audit_record(
        actor=actor,
        action="stage.rolled_back" if is_rollback else "stage.changed",
        target=stage,
        changes=_holder_change(previous, version, reason),
    )
    return stage


def _holder_change(previous_id: int | None, version: ModelVersion, reason: str) -> dict:
    previous = ModelVersion.objects.filter(pk=previous_id).values_list("number", flat=True)
    before = previous.first() if previous_id else None
    change: dict[str, Any] = {"before": {"version": before}, "after": {"version": version.number}}
    if reason:
        change["reason"] = reason
    return change


def _enqueue(task_name: str, promotion_id: int) -> None:
    from apps.approvals import tasks

    task = getattr(tasks, task_name)
    transaction.on_commit(lambda: task.delay(promotion_id))


def previous_holder(stage: Stage) -> ModelVersion | None:
    """The version that held `stage` before the current one and left it normally.

    A version pulled out by a rollback is never offered again: reinstating it takes a new
    promotion request, so a second click cannot undo a rollback without a review.
    """
    history = list(
        StageAssignment.objects.filter(stage=stage).select_related("version").order_by("started_at")
    )
    if not history or history[-1].ended_at is not None:
        return None
    current = history[-1]
    for earlier, successor in zip(reversed(history[:-1]), reversed(history[1:]), strict=True):
        if not successor.is_rollback and earlier.version_id != current.version_id:
            return earlier.version
    return None


@transaction.atomic
def stage_rollback(*, stage: Stage, actor: Any, reason: str) -> Stage:
    """Put back the version that held `stage` before, at once; approvers or owners only."""
    reason = check_text(reason, "reason", max_chars=MAX_COMMENT)
    if not reason.strip():
        raise ApiError("A rollback needs a reason.", details={"field": "reason"})
    stage = Stage.objects.select_for_update(of=("self",)).select_related("model").get(pk=stage.pk)
    if not (is_approver(actor, stage) or can(actor, "manage", stage.model)):
        raise Forbidden(f"Only approvers of {stage.name} or owners can roll it back.")
    target = previous_holder(stage)
    if target is None:
        raise Conflict(f"{stage.name} has no earlier version to roll back to.")
    stage = stage_assign(
        stage=stage, version=target, actor=actor, reason=reason[:MAX_COMMENT], is_rollback=True
    )
    assignment = StageAssignment.objects.get(stage=stage, ended_at__isnull=True)
    from apps.approvals import tasks

    transaction.on_commit(lambda: tasks.notify_rollback_task.delay(assignment.pk))
    return stage


def promotions_expire() -> int:
    """Close every pending request past its expiry; safe to run concurrently and twice."""
    now = timezone.now()
    expired = 0
    candidates = PromotionRequest.objects.filter(
        status=PromotionStatus.PENDING, expires_at__lte=now
    ).values_list("pk", flat=True)
    for pk in list(candidates):
        expired += _expire_one(pk, now)
    return expired


@transaction.atomic
def _expire_one(pk: int, now: Any) -> int:
    promotion = (
        PromotionRequest.objects.select_for_update(skip_locked=True)
        .filter(pk=pk, status=PromotionStatus.PENDING, expires_at__lte=now)
        .first()
    )
    if promotion is None:
        return 0
    _close(promotion, PromotionStatus.EXPIRED)
    audit_record(actor=None, action="promotion.expired", target=promotion)
    return 1


POLICY_FIELDS = (
    "required_approvals",
    "request_ttl_hours",
    "metric_gates",
    "required_card_sections",
    "required_metadata",
    "requires_verified_files",
)


@transaction.atomic
def policy_update(*, actor: Any, stage: Stage, **values: Any) -> StagePolicy:
    """Change a stage's policy (owners); records before/after of what changed."""
    if not can(actor, "manage", stage.model):
        raise Forbidden("Only owners can change stage policies.")
    policy = StagePolicy.objects.select_for_update().get(stage=stage)
    before, after = {}, {}
    for name, value in values.items():
        current = _policy_value(policy, name)
        if value is None or value == current:
            continue
        before[name], after[name] = current, value
        _set_policy_value(policy, name, value)
    if after:
        policy.save()
        audit_record(
            actor=actor,
            action="policy.updated",
            target=stage,
            changes={"before": before, "after": after},
        )
    return policy


def _policy_value(policy: StagePolicy, name: str) -> Any:
    if name == "requires_stage":
        return policy.requires_stage.name if policy.requires_stage_id else ""
    return getattr(policy, name)


def _set_policy_value(policy: StagePolicy, name: str, value: Any) -> None:
    if name == "requires_stage":
        policy.requires_stage = (
            Stage.objects.get(model_id=policy.stage.model_id, name=value) if value else None
        )
    else:
        setattr(policy, name, value)


@transaction.atomic
def approver_set(*, actor: Any, stage: Stage, principal: Any, approve: bool) -> None:
    """Grant or revoke `approve_stage` on `stage` for a user or team (owners only)."""
    from apps.approvals.access import set_approver

    if not can(actor, "manage", stage.model):
        raise Forbidden("Only owners can choose approvers.")
    kind = "group" if principal.__class__.__name__ == "Group" else "user"
    label = f"{kind}:{principal.name if kind == 'group' else principal.get_username()}"
    set_approver(principal, stage, approve)
    audit_record(
        actor=actor,
        action="approver.granted" if approve else "approver.revoked",
        target=stage,
        changes={"principal": label},
    )


@transaction.atomic
def stage_create(*, actor: Any, model: RegisteredModel, name: str) -> Stage:
    """Add a stage (owners); it needs one approval until its policy says otherwise."""
    from apps.approvals.validation import validate_stage_name

    if not can(actor, "manage", model):
        raise Forbidden("Only owners can add stages.")
    name = validate_stage_name(name)
    if Stage.objects.filter(model=model, name=name).exists():
        raise Conflict(f"Stage {name} already exists.", code="already_exists")
    position = model.stages.order_by("-position").values_list("position", flat=True).first() or 0
    stage = Stage.objects.create(model=model, name=name, position=position + 1)
    StagePolicy.objects.create(stage=stage)
    audit_record(actor=actor, action="stage.created", target=stage, changes={"name": name})
    return stage


# --- Policy PUT (REST API): validated values and the approver set, in one transaction -------

POLICY_RANGES = {"required_approvals": (0, 20), "request_ttl_hours": (1, 8760)}
GATE_OPS = (">=", "<=", ">", "<")
GATE_AGAINST = ("holder", "threshold")
MAX_POLICY_ITEMS = 50
MAX_POLICY_TEXT = 200
MAX_APPROVERS = 500


@transaction.atomic
def policy_replace(
    *,
    actor: Any,
    stage: Stage,
    values: dict[str, Any],
    approver_users: list[str] | None = None,
    approver_groups: list[str] | None = None,
) -> StagePolicy:
    """Apply any subset of a stage's policy and, for each approver list given, make the
    approvers exactly that set. All validated before anything changes (a 400 naming the
    field); audited as `policy.updated` (before/after) and one `approver.*` per change."""
    # Imported here: this block is appended, the module's imports are left as they were.
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from apps.approvals.access import approver_groups_of, approver_users_of

    if not can(actor, "manage", stage.model):
        raise Forbidden("Only owners can change stage policies.")
    # The policy row lock serializes two PUTs on one stage (both read the approver sets).
    StagePolicy.objects.select_for_update().get(stage=stage)
    cleaned = {name: _policy_clean(stage, name, value) for name, value in values.items()}
    user_model = get_user_model()
    users = _principals_named(user_model, "username", approver_users, "approvers.users", "user")
    groups = _principals_named(Group, "name", approver_groups, "approvers.groups", "team")
    policy = policy_update(actor=actor, stage=stage, **cleaned)
    if users is not None:
        _approvers_make(actor, stage, users, approver_users_of(stage))
    if groups is not None:
        _approvers_make(actor, stage, groups, approver_groups_of(stage))
    return policy


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(f"{field}: {message}", details={"field": field})


def _policy_clean(stage: Stage, name: str, value: Any) -> Any:
    if name == "requires_stage":
        return _required_stage_clean(stage, value)
    if value is None:
        raise _invalid(name, "may not be null.")
    if name in POLICY_RANGES:
        low, high = POLICY_RANGES[name]
        if not _is_int(value) or not low <= value <= high:
            raise _invalid(name, f"must be a whole number from {low} to {high}.")
        return value
    if name == "requires_verified_files":
        if not isinstance(value, bool):
            raise _invalid(name, "must be true or false.")
        return value
    if name == "metric_gates":
        return [
            _gate_clean(gate, f"metric_gates.{i}") for i, gate in enumerate(_items(value, name))
        ]
    if name in ("required_card_sections", "required_metadata"):
        return list(
            dict.fromkeys(_text(item, f"{name}.{i}") for i, item in enumerate(_items(value, name)))
        )
    raise _invalid(name, "is not a policy field.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _items(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise _invalid(field, "must be a list.")
    if len(value) > MAX_POLICY_ITEMS:
        raise _invalid(field, f"at most {MAX_POLICY_ITEMS} entries.")
    return list(value)


def _text(value: Any, field: str) -> str:
    """Non-blank, at most MAX_POLICY_TEXT long, and storable (no NUL: a 400, not a 500)."""
    from apps.registry.validation import check_text

    text = check_text(value, field, max_chars=MAX_POLICY_TEXT).strip()
    if not text:
        raise _invalid(field, "must not be blank.")
    return text


def _gate_clean(gate: Any, field: str) -> dict[str, Any]:
    """{"metric", "op", "against"[, "threshold"]} with a finite threshold when against it."""
    if not isinstance(gate, dict):
        raise _invalid(field, "must be an object.")
    metric = _text(gate.get("metric"), f"{field}.metric")
    op, against = gate.get("op", ">="), gate.get("against", "holder")
    if op not in GATE_OPS:
        raise _invalid(f"{field}.op", f"must be one of {', '.join(GATE_OPS)}.")
    if against not in GATE_AGAINST:
        raise _invalid(f"{field}.against", "must be holder or threshold.")
    cleaned: dict[str, Any] = {"metric": metric, "op": op, "against": against}
    if against == "threshold":
        threshold = gate.get("threshold")
        if not gates._is_number(threshold):
            raise _invalid(f"{field}.threshold", "must be a finite number.")
        cleaned["threshold"] = threshold
    return cleaned


def _required_stage_clean(stage: Stage, value: Any) -> str:
    """Another stage of the same model ('' clears it); a loop would block both forever."""
    if value is None or value == "":
        return ""
    field = "requires_stage"
    from apps.approvals.validation import STAGE_NAME

    required = None
    if isinstance(value, str) and STAGE_NAME.fullmatch(value):
        required = Stage.objects.filter(model_id=stage.model_id, name=value).first()
    if required is None or required.pk == stage.pk:
        raise _invalid(field, "must be another stage of this model, or null.")
    seen = {stage.pk}
    while required is not None:
        if required.pk in seen:
            raise _invalid(field, f"{value} (directly or not) requires {stage.name}: a loop.")
        seen.add(required.pk)
        policy = StagePolicy.objects.filter(stage=required).select_related("requires_stage")
        found = policy.first()
        required = found.requires_stage if found else None
    return value


def _principals_named(
    model: Any, key: str, names: list[str] | None, field: str, kind: str
) -> list | None:
    """The users or teams named, all of which must exist (400 naming the unknown ones)."""
    if names is None:
        return None
    if len(names) > MAX_APPROVERS:
        raise _invalid(field, f"at most {MAX_APPROVERS} entries.")
    wanted = list(dict.fromkeys(_text(name, field) for name in names))
    found = {getattr(p, key): p for p in model.objects.filter(**{f"{key}__in": wanted})}
    unknown = [name for name in wanted if name not in found]
    if unknown:
        raise ApiError(
            f"{field}: no such {kind}: {', '.join(unknown)}.",
            details={"field": field, "unknown": unknown},
        )
    return [found[name] for name in wanted]


def _approvers_make(actor: Any, stage: Stage, wanted: list, current: Any) -> None:
    """Grant the new, revoke the removed; each change is its own audit event."""
    held = {principal.pk: principal for principal in current}
    for principal in wanted:
        if principal.pk not in held:
            approver_set(actor=actor, stage=stage, principal=principal, approve=True)
    keep = {principal.pk for principal in wanted}
    for pk, principal in held.items():
        if pk not in keep:
            approver_set(actor=actor, stage=stage, principal=principal, approve=False)


def review_link_claim(link: ReviewLink) -> bool:
    """Mark an email link used; False when another request already used it (single use).

    Runs inside the caller's transaction, beside the decision it authorises: if that
    decision is refused, the claim rolls back and the link stays usable.
    """
    claimed = ReviewLink.objects.filter(pk=link.pk, used_at__isnull=True).update(
        used_at=timezone.now()
    )
    return claimed == 1
