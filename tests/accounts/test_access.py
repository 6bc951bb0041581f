"""Access control: roles per model for users and teams, the access page and API, teams.

Personas (tests/accounts/conftest.py): alice owns the private model; bob is in team
"vision", which is editor; carol is a viewer herself; dave (outsider) has nothing.
"""

import re
import threading

import pytest
from django.contrib.auth.models import AnonymousUser, Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from guardian.conf import settings as guardian_settings
from guardian.shortcuts import assign_perm

from apps.accounts.models import User
from apps.accounts.services import (
    role_grant,
    role_revoke,
    team_create,
    team_member_add,
    team_member_remove,
)
from apps.audit.models import AuditEvent
from apps.registry import access
from apps.registry.models import (
    RegisteredModel,
    RegisteredModelGroupObjectPermission,
    RegisteredModelUserObjectPermission,
)
from registry_site.api_errors import ApiError, Conflict, Forbidden
from tests.accounts.conftest import MODEL_NAME, new_model, send_json, token_for
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

PAGE = f"/models/{MODEL_NAME}/access/"
REVOKE = f"/models/{MODEL_NAME}/access/revoke"
API = f"/api/v1/models/{MODEL_NAME}/access"
PERMISSION_ACTIONS = ("permission.granted", "permission.changed", "permission.revoked")


def permission_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action__in=PERMISSION_ACTIONS).order_by("id"))


def grant_rows(model: RegisteredModel) -> set[tuple]:
    """Every stored grant of `model`, to assert that nothing changed."""
    users = RegisteredModelUserObjectPermission.objects.filter(content_object=model)
    groups = RegisteredModelGroupObjectPermission.objects.filter(content_object=model)
    return {("user", *row) for row in users.values_list("user_id", "permission__codename")} | {
        ("group", *row) for row in groups.values_list("group_id", "permission__codename")
    }


def roles_by_principal(model: RegisteredModel) -> dict[str, str | None]:
    return {grant.principal: grant.role for grant in access.model_grants(model)}


def without_csrf(html: str) -> str:
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "CSRF", html)


# --- Roles and what they allow --------------------------------------------------------------


def test_roles_from_permissions():
    assert access.role_from_permissions([]) is None
    assert access.role_from_permissions([access.VIEW]) == "viewer"
    assert access.role_from_permissions([access.VIEW, access.EDIT]) == "editor"
    assert access.role_from_permissions([access.MANAGE, access.EDIT, access.VIEW]) == "owner"
    assert access.role_from_permissions([access.MANAGE]) is None  # no view: no role


def test_team_role_holds_for_its_members(ml_model, personas):
    alice, bob, carol, dave = personas.values()
    assert access.model_permissions(alice, ml_model) == {"view", "edit", "manage"}
    assert access.can(bob, "edit", ml_model) and not access.can(bob, "manage", ml_model)
    assert access.model_permissions(carol, ml_model) == {"view"}
    assert access.model_permissions(dave, ml_model) == set()
    assert set(access.models_visible_to(dave)) == set()


def test_grants_and_effective_roles(ml_model, personas, vision):
    alice, bob, carol, _ = personas.values()
    role_grant(actor=alice, model=ml_model, role="viewer", user=bob)
    assert roles_by_principal(ml_model) == {
        "user:alice": "owner",
        "user:bob": "viewer",
        "user:carol": "viewer",
        "group:vision": "editor",
    }
    assert access.effective_roles(ml_model) == {
        alice.pk: "owner",
        bob.pk: "editor",  # the stronger of his own viewer role and the team's editor role
        carol.pk: "viewer",
    }
    bob_access = next(e for e in access.effective_access(ml_model) if e.username == "bob")
    assert [source.label for source in bob_access.sources] == ["group:vision", "direct"]


def test_superuser_sees_and_manages_everything(ml_model, superuser):
    assert access.model_permissions(superuser, ml_model) == {"view", "edit", "manage"}
    assert list(access.models_visible_to(superuser)) == [ml_model]


def test_internal_model_is_visible_to_every_signed_in_user(client, alice, outsider):
    model = new_model(alice, "shared-net", visibility="internal")
    assert access.model_permissions(outsider, model) == {"view"}
    assert access.model_permissions(AnonymousUser(), model) == set()
    client.force_login(outsider)
    assert client.get(model.get_absolute_url()).status_code == 200
    assert client.get(f"/models/{model.name}/access/").status_code == 403
    client.logout()
    assert client.get(model.get_absolute_url()).status_code == 302


def test_global_permission_does_not_widen_object_access(client, ml_model, outsider):
    group = Group.objects.create(name="dave-team")
    outsider.groups.add(group)
    assign_perm("registry.view_registeredmodel", group)  # model-level, as the user admin would
    assign_perm("registry.view_registeredmodel", outsider)
    dave = User.objects.get(pk=outsider.pk)
    assert dave.has_perm("registry.view_registeredmodel")  # Django does see the global grant
    assert ml_model not in access.models_visible_to(dave)
    assert not access.can(dave, "view", ml_model)
    client.force_login(dave)
    assert client.get(ml_model.get_absolute_url()).status_code == 404


# --- Services: grant, change, revoke ---------------------------------------------------------


def test_grant_is_audited_once_with_before_and_after(ml_model, alice):
    erin = make_user("erin")
    before = role_grant(actor=alice, model=ml_model, role="editor", user="erin")
    assert before is None
    [event] = permission_events()
    assert (event.action, event.actor_id, event.model_id) == (
        "permission.granted",
        alice.pk,
        ml_model.pk,
    )
    assert (event.target_type, event.target_id) == ("registry.registeredmodel", str(ml_model.pk))
    assert event.changes == {
        "before": {"principal": "user:erin", "role": None},
        "after": {"principal": "user:erin", "role": "editor"},
    }
    assert access.can(erin, "edit", ml_model)


def test_regrant_replaces_the_role(ml_model, alice, carol):
    previous = len(permission_events())
    assert role_grant(actor=alice, model=ml_model, role="editor", user=carol) == "viewer"
    assert access.role_of(carol, ml_model) == "editor"
    assert roles_by_principal(ml_model)["user:carol"] == "editor"
    stored = RegisteredModelUserObjectPermission.objects.filter(user=carol, content_object=ml_model)
    assert set(stored.values_list("permission__codename", flat=True)) == {access.VIEW, access.EDIT}
    events = permission_events()[previous:]
    assert [(e.action, e.changes) for e in events] == [
        (
            "permission.changed",
            {
                "before": {"principal": "user:carol", "role": "viewer"},
                "after": {"principal": "user:carol", "role": "editor"},
            },
        )
    ]
    # Downgrading removes the extra permission; the same role again records nothing.
    role_grant(actor=alice, model=ml_model, role="viewer", user=carol)
    assert set(stored.values_list("permission__codename", flat=True)) == {access.VIEW}
    role_grant(actor=alice, model=ml_model, role="viewer", user=carol)
    assert len(permission_events()) == previous + 2


def test_revoke_is_audited_once(ml_model, alice, bob, vision):
    previous = len(permission_events())
    assert role_revoke(actor=alice, model=ml_model, group=vision) == "editor"
    assert "group:vision" not in roles_by_principal(ml_model)
    [event] = permission_events()[previous:]
    assert event.action == "permission.revoked"
    assert event.model_id == ml_model.pk
    assert event.changes == {
        "before": {"principal": "group:vision", "role": "editor"},
        "after": {"principal": "group:vision", "role": None},
    }
    # Revoking what is not held changes and records nothing.
    assert role_revoke(actor=alice, model=ml_model, group=vision) is None
    assert len(permission_events()) == previous + 1


@pytest.mark.parametrize(
    ("principal", "field"),
    [({"user": "nobody"}, "user"), ({"group": "nobody"}, "group"), ({}, "user")],
)
def test_grant_to_a_missing_principal_is_400_and_changes_nothing(ml_model, alice, principal, field):
    rows, events = grant_rows(ml_model), len(permission_events())
    with pytest.raises(ApiError) as raised:
        role_grant(actor=alice, model=ml_model, role="viewer", **principal)
    assert (raised.value.status, raised.value.details) == (400, {"field": field})
    assert grant_rows(ml_model) == rows
    assert len(permission_events()) == events


def test_grant_to_an_inactive_user_is_400(ml_model, alice):
    make_user("erin", is_active=False)
    with pytest.raises(ApiError) as raised:
        role_grant(actor=alice, model=ml_model, role="viewer", user="erin")
    assert (raised.value.status, raised.value.details) == (400, {"field": "user"})
    assert "user:erin" not in roles_by_principal(ml_model)


def test_unknown_role_is_400(ml_model, alice, carol):
    with pytest.raises(ApiError) as raised:
        role_grant(actor=alice, model=ml_model, role="admin", user=carol)
    assert raised.value.details == {"field": "role"}


def test_anonymous_can_never_be_granted(ml_model, alice, monkeypatch):
    with pytest.raises(ValueError):
        access.set_role(AnonymousUser(), ml_model, "viewer")
    # Should guardian's anonymous user row ever be configured, it is refused too.
    monkeypatch.setattr(guardian_settings, "ANONYMOUS_USER_NAME", "AnonymousUser")
    make_user("AnonymousUser")
    with pytest.raises(ApiError) as raised:
        role_grant(actor=alice, model=ml_model, role="viewer", user="AnonymousUser")
    assert raised.value.details == {"field": "user"}
    assert "user:AnonymousUser" not in roles_by_principal(ml_model)


def test_last_owner_cannot_be_removed_or_downgraded(ml_model, alice):
    for change in (
        lambda: role_revoke(actor=alice, model=ml_model, user=alice),
        lambda: role_grant(actor=alice, model=ml_model, role="editor", user=alice),
    ):
        with pytest.raises(Conflict):
            change()
    assert access.role_of(alice, ml_model) == "owner"
    assert not permission_events()


def test_an_owner_can_leave_when_another_remains(ml_model, alice):
    make_user("erin")
    role_grant(actor=alice, model=ml_model, role="owner", user="erin")
    assert access.owner_count(ml_model) == 2
    role_revoke(actor=alice, model=ml_model, user=alice)
    assert access.owner_count(ml_model) == 1
    assert access.role_of(alice, ml_model) is None


def test_owner_teams_count_only_with_an_active_member(ml_model, alice):
    team = Group.objects.create(name="owners")
    role_grant(actor=alice, model=ml_model, role="owner", group=team)
    assert access.owner_count(ml_model) == 1  # an empty team owns nothing
    with pytest.raises(Conflict):
        role_revoke(actor=alice, model=ml_model, user=alice)
    make_user("erin", is_active=False).groups.add(team)
    assert access.owner_count(ml_model) == 1
    make_user("frank").groups.add(team)
    assert access.owner_count(ml_model) == 2
    role_revoke(actor=alice, model=ml_model, user=alice)
    assert access.can(User.objects.get(username="frank"), "manage", ml_model)


def test_revocation_takes_effect_at_once_on_the_same_user_object(ml_model, alice, bob, vision):
    assert access.can(bob, "edit", ml_model)
    role_revoke(actor=alice, model=ml_model, group=vision)
    assert not access.can(bob, "edit", ml_model)
    assert not access.can(bob, "view", ml_model)


def test_revocation_applies_to_open_sessions_and_tokens(client, ml_model, alice, carol):
    auth = token_for(carol)
    model_api = f"/api/v1/models/{MODEL_NAME}"
    client.force_login(carol)
    assert client.get(ml_model.get_absolute_url()).status_code == 200
    assert Client().get(model_api, **auth).status_code == 200
    role_revoke(actor=alice, model=ml_model, user=carol)
    assert client.get(ml_model.get_absolute_url()).status_code == 404
    assert Client().get(model_api, **auth).status_code == 404


def test_leaving_a_team_takes_effect_at_once(ml_model, bob, vision, staff):
    assert access.can(bob, "edit", ml_model)
    team_member_remove(actor=staff, team=vision, user=bob)
    assert not access.can(bob, "edit", ml_model)


def test_deleting_a_model_removes_its_grants(ml_model, alice, bob, carol):
    old_pk = ml_model.pk
    ml_model.delete()
    assert not RegisteredModelUserObjectPermission.objects.filter(content_object_id=old_pk).exists()
    assert not RegisteredModelGroupObjectPermission.objects.filter(
        content_object_id=old_pk
    ).exists()
    # A new row that reuses the old primary key (forced) inherits nothing either.
    reborn = RegisteredModel.objects.create(pk=old_pk, name=MODEL_NAME, name_key=MODEL_NAME)
    assert access.model_grants(reborn) == []
    for user in (alice, bob, carol):
        assert access.model_permissions(user, reborn) == set()


def test_new_model_with_the_same_name_inherits_nothing(ml_model, alice, bob, carol):
    ml_model.delete()
    erin = make_user("erin")
    reborn = new_model(erin)
    assert roles_by_principal(reborn) == {"user:erin": "owner"}
    for user in (alice, bob, carol):
        assert not access.can(user, "view", reborn)


@pytest.mark.django_db(transaction=True)
def test_concurrent_last_owner_revocations_leave_one_owner(ml_model, alice):
    erin = make_user("erin")
    role_grant(actor=alice, model=ml_model, role="owner", user=erin)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def revoke(actor: User, target: User) -> None:
        try:
            barrier.wait()
            role_revoke(actor=actor, model=ml_model, user=target)
            outcomes.append("revoked")
        except Conflict:
            outcomes.append("conflict")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=revoke, args=(alice, erin)),
        threading.Thread(target=revoke, args=(erin, alice)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "revoked"]
    assert access.owner_count(ml_model) == 1
    assert AuditEvent.objects.filter(action="permission.revoked").count() == 1


# --- The API --------------------------------------------------------------------------------


def test_owner_lists_grants(client, ml_model, personas):
    response = client.get(API, **token_for(personas["alice"]))
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == MODEL_NAME
    assert body["grants"] == [
        {
            "principal": "user:alice",
            "type": "user",
            "name": "alice",
            "role": "owner",
            "active": True,
        },
        {
            "principal": "user:carol",
            "type": "user",
            "name": "carol",
            "role": "viewer",
            "active": True,
        },
        {
            "principal": "group:vision",
            "type": "group",
            "name": "vision",
            "role": "editor",
            "active": True,
        },
    ]
    assert body["effective"] == [
        {"user": "alice", "role": "owner", "via": ["direct"]},
        {"user": "bob", "role": "editor", "via": ["group:vision"]},
        {"user": "carol", "role": "viewer", "via": ["direct"]},
    ]


def test_api_grant_change_and_revoke(client, ml_model, alice, vision, carol):
    auth = token_for(alice)
    response = send_json(client, "post", API, {"group": "vision", "role": "viewer"}, auth)
    assert response.status_code == 200
    assert {
        "principal": "group:vision",
        "type": "group",
        "name": "vision",
        "role": "viewer",
        "active": True,
    } in response.json()["grants"]
    response = send_json(client, "delete", API, {"user": "carol"}, auth)
    assert response.status_code == 200
    assert "user:carol" not in {grant["principal"] for grant in response.json()["grants"]}
    assert [e.action for e in permission_events()][-1] == "permission.revoked"
    assert not access.can(carol, "view", ml_model)


def test_api_last_owner_is_409(client, ml_model, alice):
    auth = token_for(alice)
    for method, body in (
        ("delete", {"user": "alice"}),
        ("post", {"user": "alice", "role": "viewer"}),
    ):
        response = send_json(client, method, API, body, auth)
        assert response.status_code == 409
        error = response.json()["error"]
        assert error["code"] == "conflict"
        assert "always keeps an owner" in error["message"]
    assert access.role_of(alice, ml_model) == "owner"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user": "nobody", "role": "viewer"}, "user"),
        ({"group": "nobody", "role": "viewer"}, "group"),
        ({"role": "viewer"}, "user"),
        ({"user": "carol", "group": "vision", "role": "viewer"}, "user"),
    ],
)
def test_api_bad_principal_is_400_naming_the_field(
    client, ml_model, alice, carol, vision, body, field
):
    rows = grant_rows(ml_model)
    response = send_json(client, "post", API, body, token_for(alice))
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"field": field}
    assert grant_rows(ml_model) == rows


@pytest.mark.parametrize(
    "body",
    [
        {"user": "carol", "role": "admin"},
        {"user": "carol", "role": "viewer", "model_id": 1},
        {"user": "carol"},
    ],
)
def test_api_schema_violations_are_422(client, ml_model, alice, carol, body):
    rows = grant_rows(ml_model)
    response = send_json(client, "post", API, body, token_for(alice))
    assert response.status_code == 422
    assert grant_rows(ml_model) == rows


def test_api_outsider_gets_the_missing_model_404(client, ml_model, outsider):
    auth = token_for(outsider)
    hidden = client.get(API, **auth)
    missing = client.get("/api/v1/models/no-such-model/access", **auth)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.content == missing.content
    grant = send_json(client, "post", API, {"user": "dave", "role": "owner"}, auth)
    assert grant.status_code == 404
    assert not access.can(outsider, "view", ml_model)


def test_api_viewer_and_editor_get_403(client, ml_model, bob, carol):
    for user in (bob, carol):
        auth = token_for(user)
        assert client.get(API, **auth).status_code == 403
        response = send_json(client, "post", API, {"user": user.username, "role": "owner"}, auth)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
        assert not access.can(user, "manage", ml_model)


def test_api_read_only_token_cannot_grant(client, ml_model, alice, read_token, carol):
    response = send_json(
        client,
        "post",
        API,
        {"user": "carol", "role": "owner"},
        {"HTTP_AUTHORIZATION": f"Bearer {read_token}"},
    )
    assert response.status_code == 403
    assert access.role_of(carol, ml_model) == "viewer"


def test_api_anonymous_is_401(client, ml_model):
    assert client.get(API).status_code == 401


# --- The access page ------------------------------------------------------------------------


def test_owner_sees_roles_and_effective_access(client, ml_model, personas):
    client.force_login(personas["alice"])
    response = client.get(PAGE)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="principal-suggestions"' in html
    assert '<option value="vision" label="team vision">' in html
    assert "Effective access" in html
    assert "team vision" in html  # where bob's role comes from
    assert " style=" not in html


def test_page_grant_form(client, ml_model, alice, vision):
    make_user("erin")
    client.force_login(alice)
    data = {"principal_type": "user", "name": "erin", "role": "editor", "source": "form"}
    response = client.post(PAGE, data)
    assert response.status_code == 302
    assert response.url == PAGE
    assert roles_by_principal(ml_model)["user:erin"] == "editor"
    assert "erin is now editor" in client.get(PAGE).content.decode()


def test_page_row_changes_a_role(client, ml_model, alice, bob, vision):
    client.force_login(alice)
    data = {"principal_type": "group", "name": "vision", "role": "owner", "source": "row"}
    assert client.post(PAGE, data).status_code == 302
    assert roles_by_principal(ml_model)["group:vision"] == "owner"


def test_page_grant_to_a_missing_user_shows_the_error(client, ml_model, alice):
    rows = grant_rows(ml_model)
    client.force_login(alice)
    data = {"principal_type": "user", "name": "nobody", "role": "viewer", "source": "form"}
    response = client.post(PAGE, data)
    assert response.status_code == 400
    assert "There is no user named “nobody”" in response.content.decode()
    assert grant_rows(ml_model) == rows


def test_page_revoke(client, ml_model, alice, carol):
    client.force_login(alice)
    response = client.post(REVOKE, {"principal_type": "user", "name": "carol"})
    assert response.status_code == 302
    assert "user:carol" not in roles_by_principal(ml_model)


def test_page_revoking_the_last_owner_is_409(client, ml_model, alice):
    client.force_login(alice)
    response = client.post(REVOKE, {"principal_type": "user", "name": "alice"})
    assert response.status_code == 409
    assert "always keeps an owner" in response.content.decode()
    assert access.role_of(alice, ml_model) == "owner"


def test_giving_up_ownership_leads_back_to_the_model(client, ml_model, alice):
    make_user("erin")
    role_grant(actor=alice, model=ml_model, role="owner", user="erin")
    client.force_login(alice)
    data = {"principal_type": "user", "name": "alice", "role": "viewer", "source": "row"}
    response = client.post(PAGE, data)
    assert response.url == ml_model.get_absolute_url()


def test_outsider_gets_the_missing_model_404_page(client, ml_model, outsider):
    client.force_login(outsider)
    hidden = client.get(PAGE)
    missing = client.get("/models/no-such-model/access/")
    assert hidden.status_code == missing.status_code == 404
    assert without_csrf(hidden.content.decode()) == without_csrf(missing.content.decode())
    data = {"principal_type": "user", "name": "dave", "role": "owner", "source": "form"}
    assert client.post(PAGE, data).status_code == 404
    assert client.post(REVOKE, {"principal_type": "user", "name": "alice"}).status_code == 404
    assert access.role_of(outsider, ml_model) is None


def test_viewer_and_editor_get_403_on_the_page(client, ml_model, bob, carol):
    rows = grant_rows(ml_model)
    for user in (bob, carol):
        client.force_login(user)
        assert client.get(PAGE).status_code == 403
        data = {"principal_type": "user", "name": user.username, "role": "owner", "source": "form"}
        assert client.post(PAGE, data).status_code == 403
        assert client.post(REVOKE, {"principal_type": "user", "name": "alice"}).status_code == 403
    assert grant_rows(ml_model) == rows


def test_anonymous_is_sent_to_sign_in(client, ml_model):
    response = client.get(PAGE)
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/")


def test_access_form_needs_csrf(ml_model, alice):
    make_user("erin")
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    data = {"principal_type": "user", "name": "erin", "role": "owner", "source": "form"}
    assert client.post(PAGE, data).status_code == 403
    assert client.post(REVOKE, {"principal_type": "user", "name": "alice"}).status_code == 403
    assert roles_by_principal(ml_model) == {"user:alice": "owner"}


def _page_queries(client: Client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(PAGE).status_code == 200
    return len(queries)


def test_access_page_query_count_does_not_grow_with_grants(client, ml_model, alice):
    teams = [Group.objects.create(name=f"team-{n}") for n in range(10)]
    client.force_login(alice)

    def add_grants(start: int, count: int) -> None:
        for n in range(start, start + count):
            user = make_user(f"user-{n}")
            user.groups.add(teams[n % len(teams)])
            role_grant(actor=alice, model=ml_model, role="viewer", user=user)
            if n < len(teams):
                role_grant(actor=alice, model=ml_model, role="editor", group=teams[n])

    add_grants(0, 3)
    _page_queries(client)  # warms per-process caches (content types)
    few = _page_queries(client)
    assert few <= 12  # session, user, model, permissions, 2 grant tables, members, names
    add_grants(3, 27)
    assert len(access.model_grants(ml_model)) > 30
    assert _page_queries(client) == few


# --- Teams ----------------------------------------------------------------------------------


def test_team_services_are_staff_only_and_audited(staff, alice):
    with pytest.raises(Forbidden):
        team_create(actor=alice, name="nlp")
    team = team_create(actor=staff, name="nlp")
    with pytest.raises(ApiError) as raised:
        team_create(actor=staff, name="NLP")
    assert raised.value.status == 409
    assert team_member_add(actor=staff, team=team, user=alice)
    assert not team_member_add(actor=staff, team=team, user=alice)
    with pytest.raises(Forbidden):
        team_member_remove(actor=alice, team=team, user=alice)
    assert team_member_remove(actor=staff, team=team, user="alice")
    actions = AuditEvent.objects.filter(action__startswith="team.").order_by("id")
    assert [(e.action, e.actor_id, e.changes) for e in actions] == [
        ("team.created", staff.pk, {"after": {"name": "nlp"}}),
        ("team.member_added", staff.pk, {"before": {"member": None}, "after": {"member": "alice"}}),
        (
            "team.member_removed",
            staff.pk,
            {"before": {"member": "alice"}, "after": {"member": None}},
        ),
    ]


@pytest.mark.parametrize("name", ["", "   ", "-x", "a/b", "x" * 81, "<script>"])
def test_bad_team_names_are_400(staff, name):
    with pytest.raises(ApiError) as raised:
        team_create(actor=staff, name=name)
    assert (raised.value.status, raised.value.details) == (400, {"field": "name"})
    assert not Group.objects.exists()


def test_inactive_user_cannot_join_a_team(staff, vision):
    make_user("erin", is_active=False)
    with pytest.raises(ApiError) as raised:
        team_member_add(actor=staff, team=vision, user="erin")
    assert raised.value.details == {"field": "user"}


def test_last_member_of_the_only_owner_team_cannot_leave(ml_model, alice, staff):
    team = Group.objects.create(name="owners")
    erin = make_user("erin")
    erin.groups.add(team)
    role_grant(actor=alice, model=ml_model, role="owner", group=team)
    role_revoke(actor=alice, model=ml_model, user=alice)
    with pytest.raises(Conflict):
        team_member_remove(actor=staff, team=team, user=erin)
    assert access.can(erin, "manage", ml_model)


def test_teams_page_lists_only_visible_models(client, ml_model, bob, outsider, vision, superuser):
    client.force_login(outsider)
    html = client.get("/teams/").content.decode()
    assert "vision" in html and "bob" in html
    assert MODEL_NAME not in html
    client.force_login(bob)
    assert MODEL_NAME in client.get("/teams/").content.decode()
    assert MODEL_NAME in client.get(f"/teams/{vision.pk}/").content.decode()
    client.force_login(outsider)
    assert MODEL_NAME not in client.get(f"/teams/{vision.pk}/").content.decode()
    client.force_login(superuser)
    assert MODEL_NAME in client.get("/teams/").content.decode()


def test_staff_create_a_team_and_manage_members(client, staff, alice):
    client.force_login(staff)
    assert client.get("/teams/new").status_code == 200
    response = client.post("/teams/new", {"name": "nlp"})
    team = Group.objects.get(name="nlp")
    assert response.url == f"/teams/{team.pk}/"
    members = f"/teams/{team.pk}/members"
    assert client.post(members, {"action": "add", "username": "alice"}).status_code == 302
    assert list(team.user_set.all()) == [alice]
    response = client.post(members, {"action": "add", "username": "nobody"})
    assert response.status_code == 400
    assert client.post(members, {"action": "remove", "username": "alice"}).status_code == 302
    assert not team.user_set.exists()


def test_non_staff_cannot_manage_teams(client, alice, vision):
    client.force_login(alice)
    assert client.get("/teams/new").status_code == 403
    assert client.post("/teams/new", {"name": "nlp"}).status_code == 403
    response = client.post(f"/teams/{vision.pk}/members", {"action": "add", "username": "alice"})
    assert response.status_code == 403
    assert not vision.user_set.exists()
    assert 'href="/teams/new"' not in client.get("/teams/").content.decode()
    assert not Group.objects.filter(name="nlp").exists()


def test_teams_page_query_count_does_not_grow_with_teams(client, alice, ml_model):
    client.force_login(alice)

    def add_teams(start: int, count: int) -> None:
        for n in range(start, start + count):
            team = Group.objects.create(name=f"team-{n}")
            make_user(f"member-{n}").groups.add(team)
            role_grant(actor=alice, model=ml_model, role="viewer", group=team)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/teams/").status_code == 200
        return len(captured)

    add_teams(0, 2)
    queries()  # warms per-process caches
    few = queries()
    add_teams(2, 20)
    assert queries() == few


def test_teams_pages_need_sign_in(client, vision):
    assert client.get("/teams/").status_code == 302
    assert client.get(f"/teams/{vision.pk}/").status_code == 302
