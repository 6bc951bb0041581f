"""The one place that asks django-guardian who may do what with a registered model.

Roles map to object permissions: viewer = view; editor = view + change (push versions,
edit metadata, request promotions); owner = editor + manage (grant roles, stages, archive).
`internal` models are viewable by every signed-in user. Not visible ⇒ 404 (the same as a
missing model); visible but not allowed ⇒ 403.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import (
    BooleanField,
    Count,
    Exists,
    ExpressionWrapper,
    OuterRef,
    Q,
    QuerySet,
    Value,
)
from django.db.models.signals import post_migrate
from django.http import Http404
from guardian.conf import settings as guardian_settings
from guardian.core import ObjectPermissionChecker
from guardian.shortcuts import get_objects_for_user

from apps.registry.models import (
    ModelVersion,
    RegisteredModel,
    RegisteredModelGroupObjectPermission,
    RegisteredModelUserObjectPermission,
    Visibility,
)
from apps.registry.paths import InvalidModelName, model_name_key, validate_model_name
from apps.registry.validation import MAX_VERSION_NUMBER
from registry_site.prepared import InsertStep, PreparedInsert

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


def held_q(user: Any, codename: str, ref: str = "pk") -> Q:
    """`user` holds `codename` on the model at `ref` (an outer column), directly or through a
    team: EXISTS on guardian's direct tables, one probe of their unique indexes each. The same
    grants `ObjectPermissionChecker` reads, without loading them. Permission ids instead of
    a join on codenames keep the SQL small (PostgreSQL plans it on every request)."""
    grant = {"permission_id": _permission_ids()[codename], "content_object": OuterRef(ref)}
    teams = get_user_model().groups.through.objects.filter(user=user).values("group_id")
    users = RegisteredModelUserObjectPermission.objects.filter(user=user, **grant)
    groups = RegisteredModelGroupObjectPermission.objects.filter(group_id__in=teams, **grant)
    return Q(ProbeExists(users.order_by())) | Q(ProbeExists(groups.order_by()))


class ProbeExists(Exists):
    """EXISTS that PostgreSQL runs as an index probe per outer row.

    Under an OR, PostgreSQL may instead hash the whole subquery — every grant the user
    holds — once per statement. For a prepared statement's generic plan it cannot see how
    many grants that is, and picked the hash even for a single-row lookup: milliseconds that
    grew with the user's models. `OFFSET 0` (a no-op) keeps the subquery as it is written.
    """

    template = "EXISTS(%(subquery)s OFFSET 0)"

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="EXISTS(%(subquery)s)", **extra)


def viewable_q(user: Any, prefix: str = "") -> Q:
    """The model (at `prefix`, e.g. "model__" from a version) is viewable by `user`: the
    condition `models_visible_to` applies, as a per-row EXISTS (cheaper for one row, or a
    page, than an IN over every grant the user holds)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return Q(pk__in=[])
    if user.is_superuser:
        return Q()
    return Q(**{f"{prefix}visibility": Visibility.INTERNAL}) | held_q(user, VIEW, _ref(prefix))


def allowed_expression(user: Any, action: str, prefix: str = "") -> ExpressionWrapper:
    """A boolean column: whether `user` may do `action` on the model (at `prefix`), for a row
    already known to be viewable; the same answer as `can`, in the same query as the row."""
    if user.is_superuser or action == "view":
        return ExpressionWrapper(Value(True), output_field=BooleanField())
    return ExpressionWrapper(held_q(user, ACTION_PERMISSION[action], _ref(prefix)), BooleanField())


def _ref(prefix: str) -> str:
    # "model__" (a version's model) → the foreign key column itself: no join for the EXISTS.
    return prefix.removesuffix("__") or "pk"


def access_model(user: Any, name: str, action: str = "view") -> RegisteredModel:
    """The model named `name` if `user` may do `action` on it; 404 if not visible, else 403."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        raise Http404("Not found.")
    try:  # a name that breaks the naming rule cannot exist: 404 before any query
        key = model_name_key(validate_model_name(name))
    except InvalidModelName:
        raise Http404("Not found.") from None
    # name_key is uniquely indexed; `name` keeps the lookup exact (no case-folded aliases).
    model = RegisteredModel.objects.filter(name_key=key, name=name).filter(viewable_q(user)).first()
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
    if not 1 <= number <= MAX_VERSION_NUMBER:  # outside the column's range: never a DB error
        raise Http404("Not found.")
    version = model.versions.filter(number=number).first()
    if version is None:
        raise Http404("Not found.")
    version.model = model
    return version


def grant_creator_ownership(user: Any, model: RegisteredModel) -> None:
    """The creator of a model becomes its owner: one INSERT of guardian's direct rows; a
    grant already there is left alone."""
    step = creator_ownership_step(user, model)
    step.insert.insert(step.objs)


def creator_ownership_step(user: Any, model: RegisteredModel) -> InsertStep:
    """The owner grants of `grant_creator_ownership`, for `model_create` to insert with the
    model itself."""
    grants = [
        RegisteredModelUserObjectPermission(
            user=user, content_object=model, permission_id=permission_id
        )
        for permission_id in _owner_permission_ids()
    ]
    return InsertStep(_INSERT_GRANTS, grants)


_INSERT_GRANTS = PreparedInsert(RegisteredModelUserObjectPermission, ignore_conflicts=True)

# Permission rows never change while the site runs; a migrate or a test flush recreates them
# (new ids), and both send post_migrate, which empties this cache.
_permission_id_cache: dict[str, int] = {}


def _permission_ids() -> dict[str, int]:
    """{codename: id} of the role permissions on models (one query, then cached)."""
    if len(_permission_id_cache) < len(ROLE_CODENAMES):
        found = _role_permissions(ROLE_CODENAMES)
        _permission_id_cache.update({codename: perm.pk for codename, perm in found.items()})
    return _permission_id_cache


def _owner_permission_ids() -> list[int]:
    ids = _permission_ids()
    return [ids[codename] for codename in ROLE_PERMISSIONS["owner"]]


def _forget_permission_ids(**kwargs: Any) -> None:
    _permission_id_cache.clear()


post_migrate.connect(_forget_permission_ids, dispatch_uid="registry.access.permission_ids")


# --- Roles: reading and writing grants -------------------------------------------------------
# Weakest first: the index is the rank, so "the stronger of two roles" is a max().
ROLES: tuple[str, ...] = ("viewer", "editor", "owner")
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}
ROLE_CODENAMES = frozenset(ROLE_PERMISSIONS["owner"])
USER = "user"
GROUP = "group"

Principal = Any  # a User or a Group (teams are Django auth groups)


@dataclass(frozen=True)
class Grant:
    """One principal's role on one model, as stored in guardian's direct tables.

    `role` is None when the stored permissions form no role (e.g. `manage` alone, added by
    hand in the admin): such a grant is shown so an owner can see and revoke it.
    """

    principal_type: str
    principal_id: int
    principal_name: str
    role: str | None
    is_active: bool = True

    @property
    def principal(self) -> str:
        return f"{self.principal_type}:{self.principal_name}"


@dataclass(frozen=True)
class RoleSource:
    """Where part of a user's access comes from: their own grant, or one of their teams."""

    principal_type: str  # USER: a direct grant; GROUP: through the team `name`
    name: str
    role: str

    @property
    def label(self) -> str:
        return "direct" if self.principal_type == USER else f"group:{self.name}"


@dataclass(frozen=True)
class EffectiveAccess:
    """A user's effective role on a model: the strongest of their direct and team roles."""

    user_id: int
    username: str
    role: str
    sources: tuple[RoleSource, ...] = field(default_factory=tuple)  # strongest first


def role_from_permissions(codenames: Iterable[str]) -> str | None:
    """The strongest role whose permissions are all in `codenames`, or None."""
    held = set(codenames)
    found = None
    for role in ROLES:
        if held.issuperset(ROLE_PERMISSIONS[role]):
            found = role
    return found


def _principal_type(principal: Principal) -> str:
    if isinstance(principal, Group):
        return GROUP
    if isinstance(principal, get_user_model()):
        return USER
    raise TypeError(f"A role goes to a user or a group, not {type(principal).__name__}.")


def _grant_table(principal: Principal) -> tuple[type[models.Model], str]:
    if _principal_type(principal) == GROUP:
        return RegisteredModelGroupObjectPermission, "group"
    return RegisteredModelUserObjectPermission, "user"


def _codenames_by_principal(
    table: type[models.Model], key: str, model: RegisteredModel
) -> dict[tuple[int, str, bool], set[str]]:
    """{(principal id, name, is active): codenames} from one direct table, in one query."""
    if key == "user":
        fields = ("user_id", "user__username", "user__is_active", "permission__codename")
    else:
        fields = ("group_id", "group__name", Value(True, BooleanField()), "permission__codename")
    rows = table.objects.filter(
        content_object=model, permission__codename__in=ROLE_CODENAMES
    ).values_list(*fields)
    found: dict[tuple[int, str, bool], set[str]] = {}
    for principal_id, name, active, codename in rows:
        found.setdefault((principal_id, name, active), set()).add(codename)
    return found


def model_grants(model: RegisteredModel) -> list[Grant]:
    """Every user and group holding a role on `model`: users first, then groups, by name.

    Two queries, whatever the number of grants.
    """
    grants = []
    for principal_type, table, key in (
        (USER, RegisteredModelUserObjectPermission, "user"),
        (GROUP, RegisteredModelGroupObjectPermission, "group"),
    ):
        by_principal = _codenames_by_principal(table, key, model)
        grants += sorted(
            (
                Grant(principal_type, pk, name, role_from_permissions(codenames), active)
                for (pk, name, active), codenames in by_principal.items()
            ),
            key=lambda grant: grant.principal_name.casefold(),
        )
    return grants


def role_of(principal: Principal, model: RegisteredModel) -> str | None:
    """The role granted to `principal` itself on `model` (not counting its teams)."""
    table, key = _grant_table(principal)
    codenames = table.objects.filter(
        **{key: principal},
        content_object=model,
        permission__codename__in=ROLE_CODENAMES,
    ).values_list("permission__codename", flat=True)
    return role_from_permissions(codenames)


def effective_access(
    model: RegisteredModel, grants: list[Grant] | None = None
) -> list[EffectiveAccess]:
    """Every active user with a role on `model`, directly or through teams, by username.

    One query given `grants` (from `model_grants`), three without, whatever the number of
    grants and members. Superusers and `internal` visibility are not listed: they are
    rules, not grants.
    """
    grants = model_grants(model) if grants is None else grants
    sources: dict[int, list[RoleSource]] = {}
    names: dict[int, str] = {}
    for grant in grants:
        if grant.principal_type == USER and grant.role and grant.is_active:
            source = RoleSource(USER, grant.principal_name, grant.role)
            sources.setdefault(grant.principal_id, []).append(source)
            names[grant.principal_id] = grant.principal_name
    group_roles = {
        grant.principal_id: (grant.principal_name, grant.role)
        for grant in grants
        if grant.principal_type == GROUP and grant.role
    }
    memberships = (
        get_user_model()
        .groups.through.objects.filter(group_id__in=group_roles, user__is_active=True)
        .values_list("user_id", "user__username", "group_id")
    )
    for user_id, username, group_id in memberships:
        team, role = group_roles[group_id]
        sources.setdefault(user_id, []).append(RoleSource(GROUP, team, role))
        names[user_id] = username
    return sorted(
        (_effective(user_id, names[user_id], found) for user_id, found in sources.items()),
        key=lambda entry: entry.username.casefold(),
    )


def _effective(user_id: int, username: str, found: list[RoleSource]) -> EffectiveAccess:
    ordered = sorted(
        found,
        key=lambda source: (-ROLE_RANK[source.role], source.principal_type != USER, source.name),
    )
    return EffectiveAccess(user_id, username, ordered[0].role, tuple(ordered))


def effective_roles(model: RegisteredModel) -> dict[int, str]:
    """{user id: effective role} for every active user holding a role, direct or via teams."""
    return {entry.user_id: entry.role for entry in effective_access(model)}


def owner_count(model: RegisteredModel, *, excluding: Principal | None = None) -> int:
    """How many principals own `model`: active users holding the owner role themselves, and
    groups holding it that have at least one active member. Two queries.

    `excluding` leaves one principal out ("how many would remain if it lost the role?").
    Inactive owners do not count: they could not manage the model.
    """
    users = RegisteredModelUserObjectPermission.objects.filter(user__is_active=True)
    groups = RegisteredModelGroupObjectPermission.objects.filter(
        group__in=Group.objects.filter(user__is_active=True).values("pk")
    )
    if excluding is not None and _principal_type(excluding) == USER:
        users = users.exclude(user=excluding)
    elif excluding is not None:
        groups = groups.exclude(group=excluding)
    return _count_owners(users, "user", model) + _count_owners(groups, "group", model)


def models_left_without_an_owner(user: Any) -> list[RegisteredModel]:
    """The models `user` owns (themselves or through a team) that no one else would own if
    `user` were deactivated: no other active user holding the owner role, no team holding it
    with another active member. By name; one query, whatever the number of models."""
    own_grants = RegisteredModelUserObjectPermission.objects.filter(user=user)
    team_grants = RegisteredModelGroupObjectPermission.objects.filter(
        group__in=Group.objects.filter(user=user).values("pk")
    )
    owned = RegisteredModel.objects.filter(
        Q(pk__in=_owning(own_grants, "user")) | Q(pk__in=_owning(team_grants, "group"))
    )
    others = get_user_model().objects.filter(is_active=True).exclude(pk=user.pk)
    return list(_owned_by_none_of(owned, others).order_by("name"))


def without_an_active_owner(models_: QuerySet) -> QuerySet:
    """`models_` that no active user owns, nor any team with an active member (one query)."""
    return _owned_by_none_of(models_, get_user_model().objects.filter(is_active=True))


def _owned_by_none_of(models_: QuerySet, users: QuerySet) -> QuerySet:
    """`models_` that none of `users` owns, nor any team with a member among them."""
    user_grants = RegisteredModelUserObjectPermission.objects.filter(user__in=users.values("pk"))
    team_grants = RegisteredModelGroupObjectPermission.objects.filter(
        group__in=Group.objects.filter(user__in=users.values("pk")).values("pk")
    )
    return models_.exclude(pk__in=_owning(user_grants, "user")).exclude(
        pk__in=_owning(team_grants, "group")
    )


def _owning(queryset: QuerySet, key: str) -> QuerySet:
    """The ids (`content_object`) of the models on which a principal in `queryset` (its
    column `key`) holds every owner permission, as a subquery."""
    owner = ROLE_PERMISSIONS["owner"]
    return (
        queryset.filter(permission__codename__in=owner)
        .values(key, "content_object")
        .annotate(held=Count("permission", distinct=True))
        .filter(held=len(owner))
        .values_list("content_object", flat=True)
    )


def _count_owners(queryset: QuerySet, key: str, model: RegisteredModel) -> int:
    """Principals in `queryset` holding every permission of the owner role on `model`."""
    return _owning(queryset.filter(content_object=model), key).count()


def _refuse_anonymous(principal: Principal) -> None:
    """Guardian's anonymous user (if one is ever configured) and unsaved or anonymous
    objects can never hold a role: anything granted to them would be granted to everyone."""
    if getattr(principal, "is_anonymous", False) or getattr(principal, "pk", None) is None:
        raise ValueError("Only a saved, signed-in user or a team can be granted a role.")
    anonymous_name = guardian_settings.ANONYMOUS_USER_NAME
    if (
        _principal_type(principal) == USER
        and anonymous_name is not None
        and principal.get_username() == anonymous_name
    ):
        raise ValueError("The anonymous user can never be granted a role.")


def _role_permissions(codenames: Iterable[str]) -> dict[str, Permission]:
    content_type = ContentType.objects.get_for_model(RegisteredModel)
    return {
        permission.codename: permission
        for permission in Permission.objects.filter(
            content_type=content_type, codename__in=list(codenames)
        )
    }


def set_role(principal: Principal, model: RegisteredModel, role: str) -> None:
    """Give `principal` exactly `role` on `model`, replacing any role it held (one role per
    principal per model). Callers hold the model's row lock; services audit the change."""
    if role not in ROLE_PERMISSIONS:
        raise ValueError(f"Unknown role {role!r}: one of {', '.join(ROLES)}.")
    _refuse_anonymous(principal)
    table, key = _grant_table(principal)
    wanted = set(ROLE_PERMISSIONS[role])
    rows = table.objects.filter(**{key: principal}, content_object=model)
    rows.filter(permission__codename__in=ROLE_CODENAMES - wanted).delete()
    held = set(rows.values_list("permission__codename", flat=True))
    missing = _role_permissions(wanted - held)
    # ignore_conflicts: a concurrent identical grant hits the unique constraint harmlessly.
    table.objects.bulk_create(
        [
            table(**{key: principal}, content_object=model, permission=permission)
            for permission in missing.values()
        ],
        ignore_conflicts=True,
    )


def clear_role(principal: Principal, model: RegisteredModel) -> None:
    """Remove every role permission `principal` itself holds on `model`."""
    table, key = _grant_table(principal)
    table.objects.filter(
        **{key: principal}, content_object=model, permission__codename__in=ROLE_CODENAMES
    ).delete()


def models_owned_by_group(group: Group) -> QuerySet:
    """Ids of the models on which `group` holds the manage permission (owner)."""
    return RegisteredModelGroupObjectPermission.objects.filter(
        group=group, permission__codename=MANAGE
    ).values("content_object_id")


def team_models(
    groups: Iterable[Group], viewer: Any
) -> dict[int, list[tuple[RegisteredModel, str]]]:
    """{group id: [(model, role)…]} for the models each group holds a role on, limited to
    the models `viewer` may view, by model name. One query."""
    rows = RegisteredModelGroupObjectPermission.objects.filter(
        group__in=[group.pk for group in groups],
        permission__codename__in=ROLE_CODENAMES,
        content_object__in=models_visible_to(viewer).values("pk"),
    ).select_related("content_object", "permission")
    held: dict[int, dict[int, set[str]]] = {}
    models_by_id: dict[int, RegisteredModel] = {}
    for row in rows:
        models_by_id[row.content_object_id] = row.content_object
        held.setdefault(row.group_id, {}).setdefault(row.content_object_id, set()).add(
            row.permission.codename
        )
    found: dict[int, list[tuple[RegisteredModel, str]]] = {}
    for group_id, by_model in held.items():
        pairs = [
            (models_by_id[model_id], role)
            for model_id, codenames in by_model.items()
            if (role := role_from_permissions(codenames))
        ]
        found[group_id] = sorted(pairs, key=lambda pair: pair[0].name_key)
    return found


# --- Admin panel: the models a staff member may manage ---------------------------------------
def models_managed_by(user: Any) -> QuerySet[RegisteredModel]:
    """Every model `user` may manage (owner role, directly or through a team): what the admin
    panel lists and acts on. Global permissions never widen this; superusers manage all."""
    visible = models_visible_to(user)
    if not getattr(user, "is_authenticated", False) or user.is_superuser:
        return visible
    managed = get_objects_for_user(
        user,
        f"registry.{MANAGE}",
        klass=RegisteredModel,
        accept_global_perms=False,
        with_superuser=False,
    )
    return visible.filter(pk__in=managed.values("pk"))
