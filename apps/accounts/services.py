"""Every change to accounts, tokens, model roles and teams, each in one transaction with
its audit event."""

import re
from datetime import timedelta
from typing import Any

from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.accounts.models import ApiToken, TokenScope, User
from apps.accounts.tokens import NewToken, digest_matches, generate_token, split_token
from apps.audit.services import AuditEntry, audit_record, audit_record_many
from apps.registry import access
from apps.registry.models import RegisteredModel
from registry_site.api_errors import ApiError, Conflict, Forbidden, NotFound
from registry_site.prepared import Prepared, sentinel_datetime, sentinel_text

MAX_TOKEN_DAYS = 3650
# last_used_at is refreshed at most this often, so a busy pipeline does not write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenError(ValueError):
    """A token request that cannot be honoured; the message names the field."""


@transaction.atomic
def token_create(
    *, user: User, name: str, scope: str = TokenScope.READ, expires_days: int | None = None
) -> tuple[ApiToken, str]:
    """Create a token for `user`; returns it and its plaintext, which is never stored."""
    name = name.strip()
    if not name or len(name) > 100:
        raise TokenError("name: give the token a name of 1 to 100 characters.")
    if scope not in TokenScope.values:
        raise TokenError(f"scope: must be one of {', '.join(TokenScope.values)}.")
    if expires_days is not None and not 1 <= expires_days <= MAX_TOKEN_DAYS:
        raise TokenError(f"expires_days: must be between 1 and {MAX_TOKEN_DAYS}.")
    new: NewToken = generate_token()
    expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=new.prefix,
        digest=new.digest,
        scope=scope,
        expires_at=expires_at,
    )
    audit_record(
        actor=user,
        action="token.created",
        target=token,
        changes={"after": {"name": name, "scope": scope, "expires_at": expires_at}},
    )
    return token, new.plaintext


@transaction.atomic
def token_revoke(*, token: ApiToken, actor: User) -> ApiToken:
    """Revoke a token at once; revoking twice changes nothing and records nothing."""
    updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    token.refresh_from_db()
    if updated:
        audit_record(
            actor=actor,
            action="token.revoked",
            target=token,
            changes={"before": {"revoked": False}, "after": {"revoked": True}},
        )
    return token


def token_authenticate(plaintext: str) -> ApiToken | None:
    """The active token of an active user matching `plaintext`, or None."""
    parts = split_token(plaintext)
    if parts is None:
        return None
    prefix, secret = parts
    token = _ACTIVE_TOKEN.one((), prefix=prefix, now=timezone.now())
    if token is None or not digest_matches(secret, token.digest):
        return None
    _touch_last_used(token)
    return token


# Every API request runs this: compiled once (see registry_site.prepared).
_ACTIVE_TOKEN = Prepared(
    lambda shape, *, prefix, now: (
        ApiToken.objects.active(now)
        .select_related("user")
        .filter(prefix=prefix, user__is_active=True)
        .order_by()[:1]
    ),
    prefix=sentinel_text(),
    now=sentinel_datetime(),
)


def _touch_last_used(token: ApiToken) -> None:
    now = timezone.now()
    if token.last_used_at and now - token.last_used_at < LAST_USED_RESOLUTION:
        return
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    token.last_used_at = now


# --- Roles on models and teams ---------------------------------------------------------------
# Every role change locks the model's row first: two owners revoking each other at the same
# moment are serialised, so the second sees the first's change and the model keeps an owner.

LAST_OWNER = "A model always keeps an owner: make someone else owner first."
TEAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,79}")


def _lock_model(model: RegisteredModel) -> RegisteredModel:
    locked = RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()
    if locked is None:
        raise NotFound()
    return locked


def _resolve_principal(
    user: User | str | None, group: Group | str | None, *, granting: bool
) -> User | Group:
    """The one user or team a role change is about; an unknown name is a 400 naming the
    field. Roles are never granted to a deactivated user, but can always be taken away."""
    if (user in (None, "")) == (group in (None, "")):
        raise ApiError("Give either a user or a team.", details={"field": "user"})
    if group not in (None, ""):
        found = group if isinstance(group, Group) else Group.objects.filter(name=group).first()
        if found is None:
            raise ApiError(f"There is no team named “{group}”.", details={"field": "group"})
        return found
    found = user if isinstance(user, User) else User.objects.filter(username=user).first()
    if found is None:
        raise ApiError(f"There is no user named “{user}”.", details={"field": "user"})
    if granting and not found.is_active:
        raise ApiError(f"User “{found.username}” is deactivated.", details={"field": "user"})
    return found


def principal_label(principal: User | Group) -> str:
    """ "user:bob" or "group:vision", as in audit events and the API."""
    if isinstance(principal, Group):
        return f"group:{principal.name}"
    return f"user:{principal.get_username()}"


def _ensure_an_owner_remains(model: RegisteredModel, principal: User | Group) -> None:
    """Called when `principal`, an owner, is about to lose the role."""
    if not access.owner_count(model, excluding=principal):
        raise Conflict(LAST_OWNER)


def _record_role_change(
    actor: User,
    model: RegisteredModel,
    principal: User | Group,
    before: str | None,
    after: str | None,
) -> None:
    label = principal_label(principal)
    if before is None:
        action = "permission.granted"
    elif after is None:
        action = "permission.revoked"
    else:
        action = "permission.changed"
    changes = {
        "before": {"principal": label, "role": before},
        "after": {"principal": label, "role": after},
    }
    audit_record(actor=actor, action=action, target=model, changes=changes)


@transaction.atomic
def role_grant(
    *,
    actor: User,
    model: RegisteredModel,
    role: str,
    user: User | str | None = None,
    group: Group | str | None = None,
) -> str | None:
    """Give a user or a team `role` on `model`, replacing the role it held (one role per
    principal per model); returns the previous role. Granting the role already held changes
    and records nothing. An owner cannot be downgraded if no other owner remains (409)."""
    model = _lock_model(model)
    principal = _resolve_principal(user, group, granting=True)
    if role not in access.ROLES:
        raise ApiError(f"Role must be one of {', '.join(access.ROLES)}.", details={"field": "role"})
    before = access.role_of(principal, model)
    if before == role:
        return before
    if before == "owner":
        _ensure_an_owner_remains(model, principal)
    try:
        access.set_role(principal, model, role)
    except ValueError as error:  # guardian's anonymous user
        raise ApiError(str(error), details={"field": "user"}) from None
    _record_role_change(actor, model, principal, before, role)
    return before


@transaction.atomic
def role_revoke(
    *,
    actor: User,
    model: RegisteredModel,
    user: User | str | None = None,
    group: Group | str | None = None,
) -> str | None:
    """Take away the role a user or team holds on `model`; returns it (None: it held none,
    and nothing is recorded). The last owner cannot be removed (409)."""
    model = _lock_model(model)
    principal = _resolve_principal(user, group, granting=False)
    before = access.role_of(principal, model)
    if before is None:
        return None
    if before == "owner":
        _ensure_an_owner_remains(model, principal)
    access.clear_role(principal, model)
    _record_role_change(actor, model, principal, before, None)
    return before


def _ensure_staff(actor: User) -> None:
    if not (actor.is_active and (actor.is_staff or actor.is_superuser)):
        raise Forbidden("Only staff can manage teams.")


@transaction.atomic
def team_create(*, actor: User, name: str) -> Group:
    """Create a team (a Django group). Staff only; names are unique whatever their case."""
    _ensure_staff(actor)
    name = " ".join(str(name).split())
    if not TEAM_NAME.fullmatch(name):
        raise ApiError(
            "A team name has 1 to 80 letters, digits, spaces, dots, dashes or underscores, "
            "and starts with a letter or digit.",
            details={"field": "name"},
        )
    taken = Conflict(f"A team named “{name}” already exists.", code="already_exists")
    if Group.objects.filter(name__iexact=name).exists():
        raise taken
    try:
        with transaction.atomic():  # a concurrent create of the same name hits the constraint
            team = Group.objects.create(name=name)
    except IntegrityError:
        raise taken from None
    audit_record(actor=actor, action="team.created", target=team, changes={"after": {"name": name}})
    return team


def _member(user: User | str) -> User:
    found = user if isinstance(user, User) else User.objects.filter(username=user).first()
    if found is None:
        raise ApiError(f"There is no user named “{user}”.", details={"field": "user"})
    return found


@transaction.atomic
def team_member_add(*, actor: User, team: Group, user: User | str) -> bool:
    """Add an active user to a team; returns False (and records nothing) if already in it."""
    _ensure_staff(actor)
    member = _member(user)
    if not member.is_active:
        raise ApiError(f"User “{member.username}” is deactivated.", details={"field": "user"})
    if member.groups.filter(pk=team.pk).exists():
        return False
    member.groups.add(team)
    changes = {"before": {"member": None}, "after": {"member": member.get_username()}}
    audit_record(actor=actor, action="team.member_added", target=team, changes=changes)
    return True


@transaction.atomic
def team_member_remove(*, actor: User, team: Group, user: User | str) -> bool:
    """Remove a user from a team; returns False (and records nothing) if not in it.

    Refused (409) when the team owns a model whose only owner it is and this user is its
    last active member: the model would be left without an owner.
    """
    _ensure_staff(actor)
    member = _member(user)
    if not member.groups.filter(pk=team.pk).exists():
        return False
    _ensure_team_keeps_owning(team, member)
    member.groups.remove(team)
    changes = {"before": {"member": member.get_username()}, "after": {"member": None}}
    audit_record(actor=actor, action="team.member_removed", target=team, changes=changes)
    return True


def _ensure_team_keeps_owning(team: Group, leaving: User) -> None:
    if team.user_set.filter(is_active=True).exclude(pk=leaving.pk).exists():
        return
    # Lock, in a fixed order, every model the team owns: role changes on them wait for us.
    owned = list(
        RegisteredModel.objects.select_for_update()
        .filter(pk__in=access.models_owned_by_group(team))
        .order_by("pk")
    )
    orphaned = [model for model in owned if not access.owner_count(model, excluding=team)]
    if orphaned:
        raise Conflict(
            f"{leaving.get_username()} is the last active member of “{team.name}”, the only "
            f"owner of {len(orphaned)} model(s): make someone else owner first."
        )


# --- Admin panel: account flags, global permissions, changes Django's admin forms make -------
# Global permissions never widen access to models (apps.registry.access ignores them); they
# open parts of the admin panel. Changing them is a privilege change, so it is recorded.

ADMIN_RECORDED_ACTIONS = frozenset({"user.created", "user.password_set"})


def _permission_labels(permission_model: type, pks: set[int]) -> list[str]:
    rows = permission_model.objects.filter(pk__in=pks).values_list(
        "content_type__app_label", "codename"
    )
    return sorted(f"{app_label}.{codename}" for app_label, codename in rows)


def _set_user_flags(locked: User, wanted: dict[str, bool | None]) -> dict[str, bool]:
    """Set the flags that really change; returns {flag: new value} of those."""
    changed = {flag: value for flag, value in wanted.items() if value is not None}
    changed = {flag: value for flag, value in changed.items() if getattr(locked, flag) != value}
    for flag, value in changed.items():
        setattr(locked, flag, value)
    if changed:
        locked.save(update_fields=list(changed))
    return changed


def _set_user_permissions(locked: User, permissions: list | None) -> dict[str, list[str]]:
    """Replace the user's global permissions; returns {"before", "after"} labels if changed."""
    if permissions is None:
        return {}
    held = set(locked.user_permissions.values_list("pk", flat=True))
    wanted = {permission.pk for permission in permissions}
    if held == wanted:
        return {}
    locked.user_permissions.set(wanted)
    model = locked.user_permissions.model
    return {"before": _permission_labels(model, held), "after": _permission_labels(model, wanted)}


@transaction.atomic
def user_admin_update(
    *,
    actor: User,
    user: User,
    is_active: bool | None = None,
    is_staff: bool | None = None,
    is_superuser: bool | None = None,
    permissions: list | None = None,
) -> User:
    """An admin's change to an account: activation ("user.activated"/"user.deactivated") and
    privileges (staff, superuser, global permissions: "user.privileges_changed" with before
    and after). Only what really changes is saved and recorded. A deactivated user's session
    and API tokens stop working on their next request (both check `is_active`).

    Deactivating is never refused, not even for a model's last owner: an account must be
    stoppable at once. The models it leaves without an owner (only superusers can manage
    them until someone is made owner) are named in "user.deactivated"."""
    locked = User.objects.select_for_update().get(pk=user.pk)
    flags = _set_user_flags(
        locked, {"is_active": is_active, "is_staff": is_staff, "is_superuser": is_superuser}
    )
    for flag, value in flags.items():
        setattr(user, flag, value)
    if "is_active" in flags:
        active = flags.pop("is_active")
        activation: dict[str, Any] = {
            "before": {"is_active": not active},
            "after": {"is_active": active},
        }
        if not active:
            activation.update(_ownerless_models(locked))
        audit_record(
            actor=actor,
            action="user.activated" if active else "user.deactivated",
            target=locked,
            changes=activation,
        )
    changes = {"before": {flag: not value for flag, value in flags.items()}, "after": flags}
    labels = _set_user_permissions(locked, permissions)
    if labels:
        changes["before"]["permissions"] = labels["before"]
        changes["after"]["permissions"] = labels["after"]
    if changes["after"]:
        audit_record(actor=actor, action="user.privileges_changed", target=locked, changes=changes)
    return user


@transaction.atomic
def lockouts_lift(*, actor: User, attempts: list[AccessAttempt]) -> int:
    """Delete django-axes' failure records (which lifts a lockout at once), one
    "user.lockout_lifted" event each, naming the account (if it exists), the client address
    and how many failures it held. Returns how many were deleted."""
    usernames = {attempt.username for attempt in attempts if attempt.username}
    accounts = {user.username: user for user in User.objects.filter(username__in=usernames)}
    entries = [
        AuditEntry(
            action="user.lockout_lifted",
            target=accounts.get(attempt.username or ""),
            changes={
                "username": attempt.username or "",
                "ip_address": attempt.ip_address or "",
                "failures": attempt.failures_since_start,
                "locked": attempt.failures_since_start >= settings.AXES_FAILURE_LIMIT,
            },
        )
        for attempt in attempts
    ]
    if entries:
        audit_record_many(actor=actor, entries=entries)
    deleted, _ = AccessAttempt.objects.filter(pk__in=[a.pk for a in attempts]).delete()
    return deleted


ORPHANS_NAMED = 100  # names kept in the event; the count is always whole


def _ownerless_models(user: User) -> dict[str, Any]:
    """{"left_without_an_owner": {"count", "models"}} for `user`'s deactivation, or {}."""
    orphaned = access.models_left_without_an_owner(user)
    if not orphaned:
        return {}
    names = [model.name for model in orphaned[:ORPHANS_NAMED]]
    return {"left_without_an_owner": {"count": len(orphaned), "models": names}}


@transaction.atomic
def team_permissions_set(*, actor: User, team: Group, permissions: list) -> Group:
    """Replace a team's global permissions ("team.permissions_changed"); no change, no event."""
    locked = Group.objects.select_for_update().get(pk=team.pk)
    held = set(locked.permissions.values_list("pk", flat=True))
    wanted = {permission.pk for permission in permissions}
    if held != wanted:
        locked.permissions.set(wanted)
        model = locked.permissions.model
        changes = {
            "before": {"permissions": _permission_labels(model, held)},
            "after": {"permissions": _permission_labels(model, wanted)},
        }
        audit_record(actor=actor, action="team.permissions_changed", target=locked, changes=changes)
    return team


def user_admin_record(*, actor: User, user: User, action: str) -> None:
    """Record what Django's admin forms did themselves (create an account, set a password),
    in the admin's transaction."""
    if action not in ADMIN_RECORDED_ACTIONS:
        raise ValueError(f"Not an admin-recorded action: {action}.")
    audit_record(actor=actor, action=action, target=user)
