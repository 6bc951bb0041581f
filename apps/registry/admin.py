"""Admin panel for the catalog: staff see and act on the models they manage, nothing else.

Every change goes through the same audited services as the app and the API: edits through
`model_update`, archiving through `model_archive`, and guardian's object-permission pages are
replaced by a role picker that calls `role_grant`/`role_revoke`. Deleting is refused
(archive instead), versions and files are read-only, and a model the staff member may not
manage is a 404 on every page, as everywhere else in Regent.
"""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from guardian.admin import GuardedModelAdmin

from apps.accounts.models import User
from apps.accounts.services import role_grant, role_revoke
from apps.registry import access
from apps.registry.models import Artifact, ModelVersion, RegisteredModel
from apps.registry.services import model_archive, model_unarchive, model_update
from apps.registry.validation import check_description, check_tags, check_visibility
from registry_site.api_errors import ApiError

EDITABLE_FIELDS = ("description", "tags", "visibility")
NO_ROLE = ""
ROLE_CHOICES = [
    (NO_ROLE, "No role"),
    ("viewer", "Viewer: sees the model"),
    ("editor", "Editor: pushes versions, edits metadata, requests promotions"),
    ("owner", "Owner: everything, including roles, stages and archiving"),
]


def _manages_any(request: HttpRequest) -> bool:
    """Whether the staff member manages at least one model (cached for the request)."""
    if request.user.is_superuser:
        return True
    if not hasattr(request, "_regent_manages_models"):
        request._regent_manages_models = access.models_managed_by(request.user).exists()
    return request._regent_manages_models


def _may_manage(request: HttpRequest, model: RegisteredModel | None) -> bool:
    if model is None:
        return _manages_any(request)
    return request.user.is_superuser or access.can(request.user, "manage", model)


def _pk_or_404(raw: Any) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise Http404("Not found.") from None


class MissingIsNotFound:
    """A missing or hidden object is a 404, not Django's redirect to the admin index."""

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Any:
        found = super().get_object(request, object_id, from_field)  # type: ignore[misc]
        if found is None:
            raise Http404("Not found.")
        return found


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shown, never added, changed or deleted here: these rows change only through services."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RegisteredModelAdminForm(forms.ModelForm):
    """Runs the services' checks, so a bad value is a field error rather than a failed save."""

    class Meta:
        model = RegisteredModel
        fields = EDITABLE_FIELDS

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        checks = {"description": check_description, "tags": check_tags}
        checks["visibility"] = check_visibility
        for field, check in checks.items():
            if cleaned.get(field) is None:
                continue
            try:
                cleaned[field] = check(cleaned[field])
            except ApiError as error:
                self.add_error(field, error.message)
        return cleaned


class RoleForm(forms.Form):
    """One role per principal per model, instead of guardian's raw permission list."""

    role = forms.ChoiceField(choices=ROLE_CHOICES, required=False)


class ArchivedFilter(admin.SimpleListFilter):
    title = "archived"
    parameter_name = "archived"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Archived"), ("no", "Not archived")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ("yes", "no"):
            return queryset.filter(archived_at__isnull=self.value() == "no")
        return queryset


class OwnerFilter(admin.SimpleListFilter):
    """Models nobody can manage but superusers: e.g. after their last owner was deactivated."""

    title = "owner"
    parameter_name = "owner"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("none", "No active owner")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "none":
            return access.without_an_active_owner(queryset)
        return queryset


@admin.register(RegisteredModel)
class RegisteredModelAdmin(MissingIsNotFound, GuardedModelAdmin):
    form = RegisteredModelAdminForm
    list_display = ("name", "visibility", "archived", "created_by", "created_at")
    list_filter = ("visibility", ArchivedFilter, OwnerFilter)
    list_select_related = ("created_by",)
    search_fields = ("name",)
    fields = ("name", *EDITABLE_FIELDS, "created_by", "created_at", "archived_at")
    readonly_fields = ("name", "created_by", "created_at", "archived_at")
    actions = ("archive_selected", "unarchive_selected")

    def get_queryset(self, request: HttpRequest) -> QuerySet[RegisteredModel]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(pk__in=access.models_managed_by(request.user).values("pk"))

    @admin.display(boolean=True, ordering="archived_at")
    def archived(self, model: RegisteredModel) -> bool:
        return model.is_archived

    # --- Who may do what: manage on the object, never a global permission -------------------
    def has_module_permission(self, request: HttpRequest) -> bool:
        return _manages_any(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _may_manage(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _may_manage(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # models are registered in the app or through the API

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # archive instead: deleting would take versions and the audit trail's links

    # --- Writes go through the services --------------------------------------------------
    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        edits = {field: form.cleaned_data[field] for field in EDITABLE_FIELDS}
        model_update(actor=request.user, model=obj, **edits)

    @admin.action(description="Archive selected models", permissions=["change"])
    def archive_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_archived(request, queryset, model_archive, "archived")

    @admin.action(description="Unarchive selected models", permissions=["change"])
    def unarchive_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_archived(request, queryset, model_unarchive, "unarchived")

    def _set_archived(
        self, request: HttpRequest, queryset: QuerySet, service: Any, verb: str
    ) -> None:
        done = 0
        for model in queryset:
            if _may_manage(request, model):
                service(actor=request.user, model=model)
                done += 1
        self.message_user(request, f"{done} model(s) {verb}.", messages.SUCCESS)

    # --- Guardian's object-permission pages, mapped to roles ---------------------------------
    def _managed_or_404(self, request: HttpRequest, object_pk: Any) -> RegisteredModel:
        model = get_object_or_404(self.get_queryset(request), pk=_pk_or_404(object_pk))
        if not _may_manage(request, model):
            raise Http404("Not found.")
        return model

    def obj_perms_manage_view(self, request: HttpRequest, object_pk: Any) -> HttpResponse:
        self._managed_or_404(request, object_pk)
        return super().obj_perms_manage_view(request, object_pk)

    def obj_perms_manage_user_view(
        self, request: HttpRequest, object_pk: Any, user_id: Any
    ) -> HttpResponse:
        model = self._managed_or_404(request, object_pk)
        principal = get_object_or_404(User, pk=_pk_or_404(user_id))
        return self._role_view(request, model, principal)

    def obj_perms_manage_group_view(
        self, request: HttpRequest, object_pk: Any, group_id: Any
    ) -> HttpResponse:
        model = self._managed_or_404(request, object_pk)
        principal = get_object_or_404(Group, pk=_pk_or_404(group_id))
        return self._role_view(request, model, principal)

    def _role_view(
        self, request: HttpRequest, model: RegisteredModel, principal: User | Group
    ) -> HttpResponse:
        """Show and set `principal`'s one role on `model`, through the audited services."""
        is_group = isinstance(principal, Group)
        current = access.role_of(principal, model) or NO_ROLE
        form = RoleForm(request.POST or None, initial={"role": current})
        if request.method == "POST" and form.is_valid():
            try:
                _apply_role(request.user, model, principal, form.cleaned_data["role"])
            except ApiError as error:
                form.add_error("role", error.message)
            else:
                self.message_user(request, "Role saved.", messages.SUCCESS)
                return redirect(request.path)
        context = self.get_obj_perms_base_context(request, model)
        context["group_obj" if is_group else "user_obj"] = principal
        context["form"] = form
        request.current_app = self.admin_site.name
        template = (
            self.get_obj_perms_manage_group_template()
            if is_group
            else self.get_obj_perms_manage_user_template()
        )
        return render(request, template, context, status=400 if form.errors else 200)


def _apply_role(actor: User, model: RegisteredModel, principal: User | Group, role: str) -> None:
    principal_kwarg = {"group": principal} if isinstance(principal, Group) else {"user": principal}
    if role == NO_ROLE:
        role_revoke(actor=actor, model=model, **principal_kwarg)
    else:
        role_grant(actor=actor, model=model, role=role, **principal_kwarg)


@admin.register(ModelVersion)
class ModelVersionAdmin(MissingIsNotFound, ReadOnlyAdmin):
    list_display = ("__str__", "status", "framework", "created_by", "created_at")
    list_filter = ("status",)
    list_select_related = ("model", "created_by")
    search_fields = ("model__name",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelVersion]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(model__in=access.models_managed_by(request.user).values("pk"))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return _manages_any(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _may_manage(request, obj.model if obj is not None else None)


@admin.register(Artifact)
class ArtifactAdmin(MissingIsNotFound, ReadOnlyAdmin):
    list_display = ("__str__", "size", "sha256", "verified_at")
    list_select_related = ("version__model",)
    search_fields = ("version__model__name", "path")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Artifact]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        managed = access.models_managed_by(request.user).values("pk")
        return queryset.filter(version__model__in=managed)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return _manages_any(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _may_manage(request, obj.version.model if obj is not None else None)
