"""The one place in approvals that asks django-guardian: who may approve for a stage.

Approvers hold `approve_stage` on the Stage object, directly or through a team. The check
is fresh every time (no per-user cache), so a revoked approver is refused at once.
"""

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Q, QuerySet
from django.http import Http404
from guardian.shortcuts import assign_perm, remove_perm

from apps.approvals.models import (
    PromotionRequest,
    Stage,
    StageGroupObjectPermission,
    StageUserObjectPermission,
)
from apps.registry.access import access_model, can, models_visible_to

APPROVE = "approve_stage"


def is_approver(user: Any, stage: Stage) -> bool:
    """Holds `approve_stage` on this stage now. Superusers are not approvers by default."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    # Not ObjectPermissionChecker: it grants superusers everything, and approving is a role.
    return approvers_of(stage).filter(pk=user.pk).exists()


def approvers_of(stage: Stage) -> QuerySet:
    """Active users holding `approve_stage` on `stage`, directly or through a team."""
    direct = StageUserObjectPermission.objects.filter(
        content_object=stage, permission__codename=APPROVE
    ).values("user_id")
    via_groups = StageGroupObjectPermission.objects.filter(
        content_object=stage, permission__codename=APPROVE
    ).values("group_id")
    return (
        get_user_model()
        .objects.filter(is_active=True)
        .filter(Q(pk__in=direct) | Q(groups__in=via_groups))
        .distinct()
        .order_by("username")
    )


def approver_groups_of(stage: Stage) -> QuerySet:
    ids = StageGroupObjectPermission.objects.filter(
        content_object=stage, permission__codename=APPROVE
    ).values("group_id")
    return Group.objects.filter(pk__in=ids).order_by("name")


def approver_users_of(stage: Stage) -> QuerySet:
    ids = StageUserObjectPermission.objects.filter(
        content_object=stage, permission__codename=APPROVE
    ).values("user_id")
    return get_user_model().objects.filter(pk__in=ids).order_by("username")


def set_approver(principal: Any, stage: Stage, approve: bool) -> None:
    if approve:
        assign_perm(f"approvals.{APPROVE}", principal, stage)
    else:
        remove_perm(f"approvals.{APPROVE}", principal, stage)


def access_stage(user: Any, model_name: str, stage_name: str, action: str = "view") -> Stage:
    """A stage of a model `user` may act on; 404 if the model or stage is not visible."""
    model = access_model(user, model_name, action)
    stage = Stage.objects.filter(model=model, name=stage_name).first()
    if stage is None:
        raise Http404("Not found.")
    stage.model = model
    return stage


def promotions_visible_to(user: Any) -> QuerySet[PromotionRequest]:
    return PromotionRequest.objects.filter(stage__model__in=models_visible_to(user))


def access_promotion(user: Any, pk: int | str) -> PromotionRequest:
    """A promotion request on a model `user` may view; 404 otherwise (missing or hidden)."""
    try:
        pk = int(pk)
    except (TypeError, ValueError):
        raise Http404("Not found.") from None
    promotion = (
        promotions_visible_to(user)
        .select_related("version__model", "stage", "requested_by", "version__created_by")
        .filter(pk=pk)
        .first()
    )
    if promotion is None:
        raise Http404("Not found.")
    return promotion


def can_manage_stage(user: Any, stage: Stage) -> bool:
    return can(user, "manage", stage.model)
