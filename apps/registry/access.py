"""The one place that asks django-guardian who may do what with a registered model.

Roles map to object permissions: viewer = view; editor = view + change (push versions,
edit metadata, request promotions); owner = editor + manage (grant roles, stages, archive).
`internal` models are viewable by every signed-in user. Not visible ⇒ 404 (the same as a
missing model); visible but not allowed ⇒ 403.
"""

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404
from guardian.core import ObjectPermissionChecker
from guardian.shortcuts import assign_perm, get_objects_for_user

from apps.registry.models import ModelVersion, RegisteredModel, Visibility

VIEW = "view_registeredmodel"
EDIT = "change_registeredmodel"
MANAGE = "manage_registeredmodel"

ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "viewer": (VIEW,),
    "editor": (VIEW, EDIT),
    "owner": (VIEW, EDIT, MANAGE),
}
ACTION_PERMISSION = {"view": VIEW, "edit": EDIT, "manage": MANAGE}


def models_visible_to(user: Any) -> QuerySet[RegisteredModel]:
    """Every model `user` may view; global permissions never widen this."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return RegisteredModel.objects.none()
    if user.is_superuser:
        return RegisteredModel.objects.all()
    granted = get_objects_for_user(
        user,
        f"registry.{VIEW}",
        klass=RegisteredModel,
        accept_global_perms=False,
        with_superuser=False,
    )
    return RegisteredModel.objects.filter(
        Q(visibility=Visibility.INTERNAL) | Q(pk__in=granted.values("pk"))
    )


def model_permissions(user: Any, model: RegisteredModel) -> set[str]:
    """The model-level actions ("view", "edit", "manage") `user` holds on `model`."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return set()
    if user.is_superuser:
        return set(ACTION_PERMISSION)
    # A fresh checker per call: a revoked grant must not survive in a per-user cache.
    held = set(ObjectPermissionChecker(user).get_perms(model))
    actions = {action for action, codename in ACTION_PERMISSION.items() if codename in held}
    if model.visibility == Visibility.INTERNAL:
        actions.add("view")
    return actions


def can(user: Any, action: str, model: RegisteredModel) -> bool:
    return action in model_permissions(user, model)


def access_model(user: Any, name: str, action: str = "view") -> RegisteredModel:
    """The model named `name` if `user` may do `action` on it; 404 if not visible, else 403."""
    model = models_visible_to(user).filter(name=name).first()
    if model is None:
        raise Http404("Not found.")
    if action != "view" and not can(user, action, model):
        raise PermissionDenied(f"You may not {action} this model.")
    return model


def access_version(user: Any, name: str, number: int | str, action: str = "view") -> ModelVersion:
    """Version `number` of model `name`, under the same rules as `access_model`."""
    model = access_model(user, name, action)
    try:
        number = int(number)
    except (TypeError, ValueError):
        raise Http404("Not found.") from None
    version = model.versions.filter(number=number).first()
    if version is None:
        raise Http404("Not found.")
    version.model = model
    return version


def grant_creator_ownership(user: Any, model: RegisteredModel) -> None:
    """The creator of a model becomes its owner (called by `model_create`)."""
    for codename in ROLE_PERMISSIONS["owner"]:
        assign_perm(f"registry.{codename}", user, model)
