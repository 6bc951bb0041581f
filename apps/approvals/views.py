"""Approval pages: the reviews inbox, a promotion request (read like a pull-request review),
the promotion form, stages with their history and rollback, and stage policies.

Thin, like the registry pages: resolve the object through `access_promotion`/`access_stage`
(not visible ⇒ 404, visible but not allowed ⇒ 403), one service call, redirect. A service's
`ApiError` re-renders the page with an alert and the error's status (403 separation of
duties or not an approver, 409 state conflicts, 400 missing comment or reason).

A decision carries the request `revision` and the version's fingerprint the reviewer saw;
when either moved since (another decision closed it, the author edited the description), the
decision is refused with 409 instead of being applied to something the reviewer never read
(SECURITY WF-04). The check runs under the request's row lock, in the service's transaction.
"""

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.crypto import constant_time_compare
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.approvals import gates, selectors, services
from apps.approvals.access import (
    access_promotion,
    access_stage,
    approver_groups_of,
    approver_users_of,
    approvers_of,
    can_manage_stage,
    is_approver,
)
from apps.approvals.forms import (
    HolderAtForm,
    PromotionCreateForm,
    RejectForm,
    ReviewForm,
    RollbackForm,
    StageCreateForm,
    StagePolicyForm,
    policy_initial,
)
from apps.approvals.links import version_fingerprint
from apps.approvals.models import (
    Decision,
    NotificationStatus,
    PromotionRequest,
    PromotionStatus,
    Stage,
)
from apps.audit.context import Via
from apps.registry.access import access_model, access_version, can
from apps.registry.history import recent_history
from apps.registry.models import ModelVersion
from registry_site.api_errors import ApiError

INBOX_LIMIT = 100
HISTORY_LIMIT = 200
INBOX_TABS = {
    "waiting": "Waiting for me",
    "mine": "Requested by me",
    "decided": "Recently decided",
}
STALE_MESSAGE = (
    "The request changed since you opened it, so nothing was recorded. "
    "Read it again below, then decide."
)


# --- Inbox ----------------------------------------------------------------------------------


@require_GET
@login_required
def inbox_view(request: HttpRequest) -> HttpResponse:
    """Waiting for me, requested by me, recently decided: three bounded lists."""
    boxes = selectors.inbox(request.user)
    lists = {
        "waiting": list(boxes["waiting"][:INBOX_LIMIT]),
        "mine": list(boxes["mine"]),
        "decided": list(boxes["decided"]),
    }
    tab = request.GET.get("tab", "waiting")
    tab = tab if tab in INBOX_TABS else "waiting"
    tabs = [(key, label, len(lists[key])) for key, label in INBOX_TABS.items()]
    context = {"tab": tab, "tabs": tabs, "rows": lists[tab], "limit": INBOX_LIMIT}
    return render(request, "approvals/inbox.html", context)


# --- A promotion request ---------------------------------------------------------------------


def _reviewer_rows(promotion: PromotionRequest, reviews: list[Any]) -> list[dict[str, Any]]:
    """Eligible approvers with their state, then anyone else who reviewed (no longer one)."""
    by_reviewer = {review.reviewer_id: review for review in reviews}
    excluded = {promotion.requested_by_id, promotion.version.created_by_id}
    rows = []
    for user in approvers_of(promotion.stage):
        if user.pk not in excluded:
            rows.append({"user": user, "review": by_reviewer.pop(user.pk, None)})
    rows += [{"user": review.reviewer, "review": review} for review in by_reviewer.values()]
    return rows


def _checks(promotion: PromotionRequest) -> tuple[list[dict[str, Any]], bool]:
    """Live gates while pending (the holder may have changed), else what was recorded."""
    if promotion.status == PromotionStatus.PENDING:
        stage = promotion.stage
        results = gates.evaluate_gates(promotion.version, stage, stage.policy)
        return [result.as_dict() for result in results], True
    return list(promotion.gate_results or []), False


def _review_refusal(promotion: PromotionRequest, user: Any, reviews: list[Any]) -> str | None:
    """Why `user` may not decide now (None: they may). Shown instead of the decision box."""
    if promotion.status != PromotionStatus.PENDING:
        return f"This request is {promotion.status}."
    if any(review.reviewer_id == user.pk for review in reviews):
        return "You have reviewed this request."
    try:
        services.ensure_can_review(promotion, user)
    except ApiError as error:
        return error.message
    return None


def _promotion_context(request: HttpRequest, promotion: PromotionRequest) -> dict[str, Any]:
    user, version, stage = request.user, promotion.version, promotion.stage
    reviews = list(promotion.reviews.select_related("reviewer"))
    checks, live = _checks(promotion)
    is_owner = can(user, "manage", stage.model)
    show_failures = is_owner or user.pk == promotion.requested_by_id
    failures = promotion.notifications.filter(status=NotificationStatus.FAILED)
    refusal = _review_refusal(promotion, user, reviews)
    pending = promotion.status == PromotionStatus.PENDING
    baseline, baseline_label = selectors.comparison_baseline(promotion)
    return {
        "promotion": promotion,
        "version": version,
        "stage": stage,
        "model": stage.model,
        "reviews": reviews,
        "approvals": sum(review.decision == Decision.APPROVE for review in reviews),
        "reviewers": _reviewer_rows(promotion, reviews),
        "checks": checks,
        "checks_live": live,
        "checks_failed": sum(not check.get("passed") for check in checks),
        "comparison": selectors.metrics_comparison(version, baseline),
        "holder": baseline,
        "holder_label": baseline_label,
        "holder_now": stage.current_version,
        "files": list(version.files.all()),
        "failed_emails": list(failures.select_related("recipient")) if show_failures else [],
        "can_review": refusal is None,
        "review_refusal": refusal,
        "can_cancel": pending and (is_owner or user.pk == promotion.requested_by_id),
        "revision": promotion.revision,
        "version_state": version_fingerprint(version),
        "events": recent_history(user, promotion),
    }


def _promotion_page(
    request: HttpRequest,
    promotion: PromotionRequest,
    *,
    status: int = 200,
    error: str = "",
    form: ReviewForm | None = None,
) -> HttpResponse:
    # Reload: after a refused or rolled-back decision the object in hand may be stale.
    promotion = access_promotion(request.user, promotion.pk)
    context = _promotion_context(request, promotion)
    context.update(error=error, form=form or ReviewForm())
    return render(request, "approvals/promotion_detail.html", context, status=status)


@require_GET
@login_required
def promotion_detail_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The request page: header, reviewers, checks, metrics, files, conversation, decision."""
    return _promotion_page(request, access_promotion(request.user, pk))


class StaleRequest(Exception):
    """The request or its version moved since the reviewer loaded the page."""


def _ensure_unchanged(promotion: PromotionRequest, revision: int, version_state: str) -> None:
    """Under row locks (request, then version), compare with what the page showed."""
    locked = PromotionRequest.objects.select_for_update(of=("self",)).get(pk=promotion.pk)
    version = ModelVersion.objects.select_for_update().get(pk=locked.version_id)
    if locked.revision != revision:
        raise StaleRequest()
    if version_state and not constant_time_compare(version_fingerprint(version), version_state):
        raise StaleRequest()


def _decide(
    request: HttpRequest, pk: int, form_class: type[ReviewForm], decide: Callable[..., Any]
) -> HttpResponse:
    promotion = access_promotion(request.user, pk)
    form = form_class(request.POST)
    if not form.is_valid():
        return _promotion_page(request, promotion, status=400, form=form)
    data = form.cleaned_data
    try:
        with transaction.atomic():
            _ensure_unchanged(promotion, data["revision"], data["version_state"])
            decide(promotion=promotion, reviewer=request.user, comment=data["comment"], via=Via.WEB)
    except StaleRequest:
        return _promotion_page(request, promotion, status=409, error=STALE_MESSAGE, form=form)
    except ApiError as error:
        status, message = error.status, error.message
        return _promotion_page(request, promotion, status=status, error=message, form=form)
    promotion.refresh_from_db(fields=["status"])
    messages.success(request, f"Your review is recorded. The request is {promotion.status}.")
    return redirect(promotion)


@require_POST
@login_required
def promotion_approve_view(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, ReviewForm, services.promotion_approve)


@require_POST
@login_required
def promotion_reject_view(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, RejectForm, services.promotion_reject)


@require_POST
@login_required
def promotion_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The requester or an owner withdraws a pending request."""
    promotion = access_promotion(request.user, pk)
    try:
        services.promotion_cancel(promotion=promotion, actor=request.user)
    except ApiError as error:
        return _promotion_page(request, promotion, status=error.status, error=error.message)
    messages.success(request, "Request cancelled.")
    return redirect(promotion)


# --- Asking for a promotion ------------------------------------------------------------------


def _stages_of(version: ModelVersion) -> list[Stage]:
    return list(
        Stage.objects.filter(model=version.model).select_related(
            "policy", "policy__requires_stage", "current_version"
        )
    )


@require_http_methods(["GET", "POST"])
@login_required
def promotion_create_view(request: HttpRequest, name: str, number: int) -> HttpResponse:
    """Choose a stage and say why; the page previews every stage's checks for this version."""
    version = access_version(request.user, name, number, "edit")
    stages = _stages_of(version)
    initial = {"stage": request.GET.get("stage", "")}
    form = PromotionCreateForm(
        request.POST if request.method == "POST" else None, stages=stages, initial=initial
    )
    status = 200
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            promotion = services.promotion_request(
                actor=request.user, version=version, stage=data["stage"], reason=data["reason"]
            )
        except ApiError as error:
            form.add_service_error(error)
            status = error.status
        else:
            messages.success(request, f"Promotion to {data['stage'].name} requested.")
            return redirect(promotion)
    elif form.errors:
        status = 400
    previews = [(stage, gates.evaluate_gates(version, stage, stage.policy)) for stage in stages]
    context = {"version": version, "model": version.model, "form": form, "previews": previews}
    return render(request, "approvals/promotion_create.html", context, status=status)


# --- Stages ---------------------------------------------------------------------------------


@require_GET
@login_required
def stage_list_view(request: HttpRequest, name: str) -> HttpResponse:
    """Every stage of a model with its holder, policy summary and open requests."""
    model = access_model(request.user, name)
    stages = (
        Stage.objects.filter(model=model)
        .select_related("current_version", "policy", "policy__requires_stage")
        .annotate(pending=Count("promotions", filter=Q(promotions__status="pending")))
    )
    context = {
        "model": model,
        "stages": list(stages),
        "can_manage": can(request.user, "manage", model),
        "form": StageCreateForm(),
    }
    return render(request, "approvals/stage_list.html", context)


@require_POST
@login_required
def stage_create_view(request: HttpRequest, name: str) -> HttpResponse:
    """Owners add a stage (one approval until its policy says otherwise)."""
    model = access_model(request.user, name, "manage")
    form = StageCreateForm(request.POST)
    if form.is_valid():
        try:
            stage = services.stage_create(
                actor=request.user, model=model, name=form.cleaned_data["name"]
            )
        except ApiError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, f"Stage {stage.name} added. Choose its approvers.")
            return redirect("approvals:stage-policy", model.name, stage.name)
    else:
        messages.error(request, " ".join(form.errors.get("name", ["Invalid stage name."])))
    return redirect("approvals:stage-list", model.name)


def _stage_page(
    request: HttpRequest,
    stage: Stage,
    *,
    status: int = 200,
    error: str = "",
    rollback_form: RollbackForm | None = None,
) -> HttpResponse:
    user = request.user
    at_form = HolderAtForm(request.GET if "at" in request.GET else None)
    held = None
    if at_form.is_bound and at_form.is_valid():
        found = selectors.holder_at(stage, at_form.cleaned_data["at"])
        held = selectors.tenure(found) if found else None
    elif at_form.is_bound and status == 200:
        status = 400
    context = {
        "stage": stage,
        "model": stage.model,
        "holder": stage.current_version,
        "previous": services.previous_holder(stage),
        "history": list(selectors.stage_history(stage)[:HISTORY_LIMIT]),
        "history_limit": HISTORY_LIMIT,
        "can_rollback": is_approver(user, stage) or can(user, "manage", stage.model),
        "can_manage": can_manage_stage(user, stage),
        "rollback_form": rollback_form or RollbackForm(),
        "at_form": at_form,
        "held": held,
        "error": error,
        "events": recent_history(user, stage),
    }
    return render(request, "approvals/stage_detail.html", context, status=status)


@require_GET
@login_required
def stage_detail_view(request: HttpRequest, name: str, stage: str) -> HttpResponse:
    """The stage timeline: holder, rollback, history, and "what held it at…"."""
    return _stage_page(request, access_stage(request.user, name, stage))


@require_POST
@login_required
def stage_rollback_view(request: HttpRequest, name: str, stage: str) -> HttpResponse:
    """Put back the version that held the stage before, now, with a reason."""
    found = access_stage(request.user, name, stage)
    form = RollbackForm(request.POST)
    if not form.is_valid():
        return _stage_page(request, found, status=400, rollback_form=form)
    try:
        found = services.stage_rollback(
            stage=found, actor=request.user, reason=form.cleaned_data["reason"]
        )
    except ApiError as error:
        return _stage_page(
            request, found, status=error.status, error=error.message, rollback_form=form
        )
    holder = found.current_version
    messages.success(request, f"{found.name} rolled back to v{holder.number}.")
    return redirect("approvals:stage-detail", name, found.name)


# --- Policy ---------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@login_required
def stage_policy_view(request: HttpRequest, name: str, stage: str) -> HttpResponse:
    """Owners set the quorum, expiry, stage order, gates and approvers of a stage."""
    found = access_stage(request.user, name, stage, "manage")  # 404 hidden, 403 not owner
    policy = found.policy
    initial = policy_initial(
        policy, list(approver_users_of(found)), list(approver_groups_of(found))
    )
    form = StagePolicyForm(
        request.POST if request.method == "POST" else None, stage=found, initial=initial
    )
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            services.policy_replace(
                actor=request.user,
                stage=found,
                values=form.policy_values(),
                approver_users=form.cleaned_data["approver_users"],
                approver_groups=form.cleaned_data["approver_groups"],
            )
        except ApiError as error:
            form.add_service_error(error)
            status = error.status
        else:
            messages.success(request, f"Policy of {found.name} saved.")
            return redirect("approvals:stage-detail", name, found.name)
    elif form.errors:
        status = 400
    context = {"stage": found, "model": found.model, "form": form}
    return render(request, "approvals/stage_policy.html", context, status=status)
