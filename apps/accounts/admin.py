"""Admin panel for people, teams and API tokens.

What changes who may do what goes through the audited services: team membership
(`team_member_add`/`team_member_remove`), activation, staff and superuser flags and global
permissions (`user_admin_update`), new teams (`team_create`), token revocation
(`token_revoke`). Only superusers edit privileges, a staff member can never edit a superuser
(no self-promotion, no take-over by password reset), and nothing here is deleted: users are
deactivated, tokens revoked.
"""

from typing import Any

from axes.admin import AccessAttemptAdmin
from axes.models import AccessAttempt
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from apps.accounts import services
from apps.accounts.models import ApiToken, User
from apps.registry import access
from registry_site.api_errors import ApiError

ADMIN_FLAGS = ("is_active", "is_staff", "is_superuser")
# Fields that change what a person may do: only a superuser edits them.
PRIVILEGE_FIELDS = ("is_staff", "is_superuser", "groups", "user_permissions")


class ServiceRefusalAsMessage:
    """A service refusing a save (a 409 or a 400 the form could not foresee) rolls the whole
    save back and comes back as an error message on the same page, not a server error."""

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)  # type: ignore[misc]
        except ApiError as error:
            self.message_user(request, error.message, messages.ERROR)  # type: ignore[attr-defined]
            return HttpResponseRedirect(request.get_full_path())


@admin.register(User)
class UserAdmin(ServiceRefusalAsMessage, DjangoUserAdmin):
    list_display = ("username", "email", "is_active", "is_staff", "is_superuser", "last_login")
    list_filter = ("is_active", "is_staff", "is_superuser", "groups")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields += ["last_login", "date_joined"]
        if not request.user.is_superuser:
            fields += PRIVILEGE_FIELDS
        return fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deactivate instead: the trail, the grants and the history stay readable

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            services.user_admin_record(actor=request.user, user=obj, action="user.created")
            return
        # The row saves here with its stored flags; `save_related` applies the wanted ones
        # (and the teams and permissions) through the audited services.
        stored = User.objects.select_for_update().values(*ADMIN_FLAGS).get(pk=obj.pk)
        for flag, value in stored.items():
            setattr(obj, flag, value)
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        # Taken out of the form so Django does not set them directly; the services do.
        teams = form.cleaned_data.pop("groups", None)
        permissions = form.cleaned_data.pop("user_permissions", None)
        super().save_related(request, form, formsets, change)
        user = form.instance
        if change:
            flags = {
                flag: form.cleaned_data[flag] for flag in ADMIN_FLAGS if flag in form.cleaned_data
            }
            services.user_admin_update(
                actor=request.user, user=user, permissions=permissions, **flags
            )
            if "is_active" in form.changed_data and not user.is_active:
                _warn_of_ownerless_models(self, request, user)
        if teams is not None:
            _set_teams(request.user, user, set(teams))

    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        """Django's password form, audited when it really changed the stored password."""
        with transaction.atomic():
            target = self.get_object(request, unquote(id))
            old_hash = target.password if target is not None else None
            response = super().user_change_password(request, id, form_url)
            if target is not None:
                target.refresh_from_db(fields=["password"])
                if target.password != old_hash:
                    services.user_admin_record(
                        actor=request.user, user=target, action="user.password_set"
                    )
        return response


def _warn_of_ownerless_models(admin_view: Any, request: HttpRequest, user: User) -> None:
    orphaned = access.models_left_without_an_owner(user)
    if not orphaned:
        return
    shown = ", ".join(model.name for model in orphaned[:10])
    more = f" and {len(orphaned) - 10} more" if len(orphaned) > 10 else ""
    admin_view.message_user(
        request,
        f"Deactivated “{user.get_username()}”, the last owner of {len(orphaned)} model(s): "
        f"{shown}{more}. Until someone is made owner (each model's Access page), only "
        "superusers can manage them; the models list filters them as “No active owner”.",
        messages.WARNING,
    )


def _set_teams(actor: User, user: User, wanted: set[Group]) -> None:
    current = set(user.groups.all())
    for team in sorted(wanted - current, key=lambda group: group.name):
        services.team_member_add(actor=actor, team=team, user=user)
    for team in sorted(current - wanted, key=lambda group: group.name):
        services.team_member_remove(actor=actor, team=team, user=user)


admin.site.unregister(Group)


@admin.register(Group)
class TeamAdmin(ServiceRefusalAsMessage, DjangoGroupAdmin):
    """Teams are Django groups: created through `team_create`; members are managed on users."""

    list_display = ("name",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields.append("name")  # names appear in grants and audit rows: no silent renames
        if not request.user.is_superuser:
            fields.append("permissions")  # global permissions: superusers only
        return fields

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deleting a team would silently take away every role it holds

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            return  # nothing on the row itself is editable once created
        team = services.team_create(actor=request.user, name=obj.name)
        obj.pk, obj.name = team.pk, team.name
        obj._state.adding, obj._state.db = False, team._state.db

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        permissions = form.cleaned_data.pop("permissions", None)
        super().save_related(request, form, formsets, change)
        if permissions is not None:
            services.team_permissions_set(
                actor=request.user, team=form.instance, permissions=permissions
            )


class RevokedFilter(admin.SimpleListFilter):
    title = "revoked"
    parameter_name = "revoked"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Revoked"), ("no", "Not revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ("yes", "no"):
            return queryset.filter(revoked_at__isnull=self.value() == "no")
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created by their users and only ever revoked here; the digest never shows."""

    list_display = (
        "prefix",
        "name",
        "user",
        "scope",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = ("scope", RevokedFilter)
    list_select_related = ("user",)
    search_fields = ("prefix", "name", "user__username")
    fields = list_display
    readonly_fields = list_display
    actions = ("revoke_selected",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("accounts.change_apitoken")

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = 0
        for token in queryset.filter(revoked_at__isnull=True):
            services.token_revoke(token=token, actor=request.user)
            revoked += 1
        self.message_user(request, f"{revoked} token(s) revoked.", messages.SUCCESS)


@admin.register(AccessAttempt)
class AuditedAccessAttemptAdmin(AccessAttemptAdmin):
    """django-axes' failed sign-ins and lockouts (AXES_ENABLE_ADMIN is off: this replaces its
    admin). Deleting a record lifts its lockout at once; `lockouts_lift` audits that."""

    def delete_model(self, request: HttpRequest, obj: AccessAttempt) -> None:
        services.lockouts_lift(actor=request.user, attempts=[obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        services.lockouts_lift(actor=request.user, attempts=list(queryset))
