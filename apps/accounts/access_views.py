"""Access pages: who holds which role on a model (owners only), and teams.

A model's access page is for its owners: someone who can view the model gets a 403, anyone
else the same 404 as for a missing model (`access_model(user, name, "manage")`). Every change
is a plain form POST that goes through the same services as the API, so the rules (one role
per principal, the last owner stays, audit events) hold on both channels.
"""

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.models import User
from apps.accounts.services import (
    role_grant,
    role_revoke,
    team_create,
    team_member_add,
    team_member_remove,
)
from apps.registry import access
from apps.registry.models import RegisteredModel
from registry_site.api_errors import ApiError

# The name suggestions (<datalist>) stop here: beyond it, typing the name still works.
SUGGESTIONS_LIMIT = 500
ROLE_CHOICES = [(role, role.capitalize()) for role in access.ROLES]
PRINCIPAL_CHOICES = [(access.USER, "User"), (access.GROUP, "Team")]


class PrincipalForm(forms.Form):
    """A user or a team, by name."""

    principal_type = forms.ChoiceField(
        label="Grant to", choices=PRINCIPAL_CHOICES, initial=access.USER, widget=forms.RadioSelect
    )
    name = forms.CharField(
        label="User or team name",
        max_length=150,
        widget=forms.TextInput(attrs={"list": "principal-suggestions", "autocomplete": "off"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)

    def principal_kwargs(self) -> dict[str, str]:
        """{"user": name} or {"group": name}, as the services take them."""
        return {self.cleaned_data["principal_type"]: self.cleaned_data["name"].strip()}

    def add_service_error(self, error: ApiError) -> None:
        """Show a service refusal next to the field it names, else above the form."""
        field = error.details.get("field")
        target = {"user": "name", "group": "name", "role": "role"}.get(field)
        self.add_error(target if target in self.fields else None, error.message)


class GrantForm(PrincipalForm):
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial="viewer")


class TeamForm(forms.Form):
    name = forms.CharField(
        label="Team name",
        max_length=80,
        help_text="Letters, digits, spaces, dots, dashes and underscores, e.g. “vision”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


class MemberForm(forms.Form):
    action = forms.ChoiceField(choices=[("add", "Add"), ("remove", "Remove")])
    username = forms.CharField(
        label="Username",
        max_length=150,
        widget=forms.TextInput(attrs={"list": "user-suggestions", "autocomplete": "off"}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


def _error_status(error: ApiError) -> int:
    return error.status if error.status in (400, 403, 409) else 400


# --- A model's access page ------------------------------------------------------------------


def _suggestions() -> dict[str, list[str]]:
    users = User.objects.filter(is_active=True).order_by("username")
    groups = Group.objects.order_by("name")
    return {
        "user_names": list(users.values_list("username", flat=True)[:SUGGESTIONS_LIMIT]),
        "team_names": list(groups.values_list("name", flat=True)[:SUGGESTIONS_LIMIT]),
    }


def _access_page(
    request: HttpRequest,
    model: RegisteredModel,
    form: GrantForm | None = None,
    *,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    grants = access.model_grants(model)
    context = {
        "model": model,
        "grants": grants,
        "effective": access.effective_access(model, grants),
        "form": form or GrantForm(),
        "roles": access.ROLES,
        "page_error": error,
        **_suggestions(),
    }
    return render(request, "accounts/access.html", context, status=status)


def _after_change(request: HttpRequest, model: RegisteredModel) -> HttpResponse:
    """Back to the access page, or to the model if the user just gave up managing it."""
    if access.can(request.user, "manage", model):
        return redirect("access:model-access", model.name)
    if access.can(request.user, "view", model):
        return redirect(model)
    return redirect("registry:model-list")


@require_http_methods(["GET", "POST"])
@login_required
def model_access_view(request: HttpRequest, name: str) -> HttpResponse:
    """Roles on the model; POST grants or changes one (the grant form and each row's select)."""
    model = access.access_model(request.user, name, "manage")
    if request.method == "GET":
        return _access_page(request, model)
    form = GrantForm(request.POST)
    if not form.is_valid():
        return _access_page(request, model, form, status=400)
    role = form.cleaned_data["role"]
    try:
        role_grant(actor=request.user, model=model, role=role, **form.principal_kwargs())
    except ApiError as error:
        if request.POST.get("source") == "row":
            return _access_page(request, model, error=error.message, status=_error_status(error))
        form.add_service_error(error)
        return _access_page(request, model, form, status=_error_status(error))
    messages.success(request, f"{form.cleaned_data['name'].strip()} is now {role}.")
    return _after_change(request, model)


@require_POST
@login_required
def model_access_revoke_view(request: HttpRequest, name: str) -> HttpResponse:
    """Take away the role of one user or team."""
    model = access.access_model(request.user, name, "manage")
    form = PrincipalForm(request.POST)
    if not form.is_valid():
        return _access_page(request, model, error="Choose a user or a team to revoke.", status=400)
    try:
        before = role_revoke(actor=request.user, model=model, **form.principal_kwargs())
    except ApiError as error:
        return _access_page(request, model, error=error.message, status=_error_status(error))
    principal = form.cleaned_data["name"].strip()
    if before is None:
        messages.info(request, f"{principal} held no role on this model.")
    else:
        messages.success(request, f"{principal} no longer has the {before} role.")
    return _after_change(request, model)


# --- Teams ----------------------------------------------------------------------------------


def _is_staff(user: Any) -> bool:
    return bool(user.is_active and (user.is_staff or user.is_superuser))


def _teams_with_members() -> Any:
    members = User.objects.order_by("username").only("id", "username", "is_active")
    return Group.objects.order_by("name").prefetch_related(Prefetch("user_set", queryset=members))


@require_GET
@login_required
def teams_view(request: HttpRequest) -> HttpResponse:
    """Every team, its members, and the models it can reach that the viewer may see."""
    teams = list(_teams_with_members())
    reach = access.team_models(teams, request.user)
    rows = [(team, reach.get(team.pk, [])) for team in teams]
    context = {"rows": rows, "can_manage_teams": _is_staff(request.user)}
    return render(request, "accounts/teams.html", context)


def _team_page(
    request: HttpRequest,
    team: Group,
    form: MemberForm | None = None,
    *,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    members = list(team.user_set.order_by("username").only("id", "username", "is_active"))
    can_manage = _is_staff(request.user)
    context = {
        "team": team,
        "members": members,
        "models": access.team_models([team], request.user).get(team.pk, []),
        "can_manage_teams": can_manage,
        "form": form or MemberForm(initial={"action": "add"}),
        "page_error": error,
        "user_names": [],
    }
    if can_manage:
        candidates = User.objects.filter(is_active=True).exclude(groups=team).order_by("username")
        context["user_names"] = list(
            candidates.values_list("username", flat=True)[:SUGGESTIONS_LIMIT]
        )
    return render(request, "accounts/team_detail.html", context, status=status)


@require_GET
@login_required
def team_detail_view(request: HttpRequest, pk: int) -> HttpResponse:
    """One team: its members and the models it can reach (those the viewer may see)."""
    return _team_page(request, get_object_or_404(Group, pk=pk))


@require_http_methods(["GET", "POST"])
@login_required
def team_create_view(request: HttpRequest) -> HttpResponse:
    """Create a team (staff)."""
    if not _is_staff(request.user):
        raise PermissionDenied("Only staff can create teams.")
    form = TeamForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            team = team_create(actor=request.user, name=form.cleaned_data["name"])
        except ApiError as error:
            form.add_error("name", error.message)
            status = _error_status(error)
        else:
            messages.success(request, f"Team “{team.name}” created. Add its members below.")
            return redirect("access:team-detail", team.pk)
    status = status if status != 200 else (400 if form.errors else 200)
    return render(request, "accounts/team_form.html", {"form": form}, status=status)


@require_POST
@login_required
def team_members_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Add or remove a member (staff)."""
    if not _is_staff(request.user):
        raise PermissionDenied("Only staff can change team members.")
    team = get_object_or_404(Group, pk=pk)
    form = MemberForm(request.POST)
    if not form.is_valid():
        return _team_page(request, team, form, status=400)
    username, adding = form.cleaned_data["username"].strip(), form.cleaned_data["action"] == "add"
    change = team_member_add if adding else team_member_remove
    try:
        changed = change(actor=request.user, team=team, user=username)
    except ApiError as error:
        if adding:
            form.add_error("username", error.message)
            return _team_page(request, team, form, status=_error_status(error))
        return _team_page(request, team, error=error.message, status=_error_status(error))
    if not changed:
        state = "already" if adding else "not"
        messages.info(request, f"{username} was {state} a member of {team.name}.")
    else:
        done = "added to" if adding else "removed from"
        messages.success(request, f"{username} {done} {team.name}.")
    return redirect(reverse("access:team-detail", args=[team.pk]))
