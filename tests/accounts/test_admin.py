"""The admin panel: staff see and act only on what they manage, and every change is audited."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from apps.accounts.models import ApiToken, TokenScope, User
from apps.accounts.services import role_grant, token_create
from apps.audit.models import AuditEvent
from apps.audit.services import audit_record
from apps.registry import access
from apps.registry.models import RegisteredModel
from apps.registry.services import model_create, version_create
from tests.conftest import bearer, make_user

pytestmark = pytest.mark.django_db

MODELS = reverse("admin:registry_registeredmodel_changelist")
VERSIONS = reverse("admin:registry_modelversion_changelist")
AUDIT = reverse("admin:audit_auditevent_changelist")
TOKENS = reverse("admin:accounts_apitoken_changelist")
ME = "/api/v1/me"


def change_url(obj) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])


def admin_url(obj, view: str, *args) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_{view}", args=[obj.pk, *args])


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


@pytest.fixture
def staff(db) -> User:
    """Sam: staff, not a superuser; owner of model A only."""
    return make_user("sam", is_staff=True)


@pytest.fixture
def bob(db) -> User:
    return make_user("bob")


@pytest.fixture
def model_a(alice, staff) -> RegisteredModel:
    model = model_create(actor=alice, name="model-a", description="A")
    role_grant(actor=alice, model=model, role="owner", user=staff)
    return model


@pytest.fixture
def model_b(alice) -> RegisteredModel:
    return model_create(actor=alice, name="model-b", description="B")


@pytest.fixture
def team(superuser) -> Group:
    return Group.objects.create(name="vision")


def _action_names(response) -> set[str]:
    form = response.context["action_form"]  # None when no action is offered at all
    return set() if form is None else set(dict(form.fields["action"].choices))


def _names_listed(response) -> set[str]:
    return {model.name for model in response.context["cl"].result_list}


# --- Who sees what ------------------------------------------------------------------------


def test_superuser_sees_every_model(client, superuser, model_a, model_b):
    client.force_login(superuser)
    response = client.get(MODELS)
    assert response.status_code == 200
    assert _names_listed(response) == {"model-a", "model-b"}


def test_staff_sees_only_the_models_they_manage(client, staff, model_a, model_b):
    client.force_login(staff)
    response = client.get(MODELS)
    assert response.status_code == 200
    assert _names_listed(response) == {"model-a"}
    assert client.get(change_url(model_a)).status_code == 200
    assert client.get(admin_url(model_a, "permissions")).status_code == 200


@pytest.mark.parametrize(
    "page",
    [
        lambda model: change_url(model),
        lambda model: admin_url(model, "history"),
        lambda model: admin_url(model, "permissions"),
        lambda model: admin_url(model, "permissions_manage_user", model.created_by_id),
    ],
    ids=["change", "history", "permissions", "permissions-user"],
)
def test_staff_cannot_open_a_model_they_do_not_manage(client, staff, model_a, model_b, page):
    client.force_login(staff)
    assert client.get(page(model_b)).status_code == 404
    assert client.post(page(model_b), {"role": "viewer"}).status_code == 404
    assert access.role_of(staff, model_b) is None


def test_viewing_or_editing_a_model_is_not_managing_it(client, staff, model_b, alice):
    role_grant(actor=alice, model=model_b, role="editor", user=staff)
    client.force_login(staff)
    assert client.get(MODELS).status_code == 403
    assert client.get(change_url(model_b)).status_code == 404
    assert "registry" not in client.get(reverse("admin:index")).content.decode()


def test_global_permissions_do_not_widen_the_admin(client, staff, model_a, model_b):
    codenames = ["view_registeredmodel", "change_registeredmodel", "manage_registeredmodel"]
    staff.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(staff)
    assert _names_listed(client.get(MODELS)) == {"model-a"}
    assert client.get(change_url(model_b)).status_code == 404


def test_staff_sees_versions_of_managed_models_only_and_read_only(
    client, staff, alice, model_a, model_b
):
    mine = version_create(actor=alice, model=model_a)
    hidden = version_create(actor=alice, model=model_b)
    client.force_login(staff)
    listed = client.get(VERSIONS).context["cl"].result_list
    assert [version.pk for version in listed] == [mine.pk]
    assert client.get(change_url(mine)).status_code == 200
    assert client.get(change_url(hidden)).status_code == 404
    response = client.post(change_url(mine), {"description": "changed", "status": "ready"})
    assert response.status_code == 403
    mine.refresh_from_db()
    assert (mine.description, mine.status) == ("", "pending")
    assert client.get(reverse("admin:registry_modelversion_add")).status_code == 403
    assert client.post(admin_url(mine, "delete"), {"post": "yes"}).status_code == 403


# --- Roles through guardian's object-permission pages --------------------------------------


def test_granting_a_role_in_the_admin_is_audited(client, staff, model_a, bob):
    client.force_login(staff)
    url = admin_url(model_a, "permissions_manage_user", bob.pk)
    response = client.post(url, {"role": "editor"})
    assert response.status_code == 302
    assert access.role_of(bob, model_a) == "editor"
    [event] = events("permission.granted")[-1:]
    assert (event.actor_id, event.via, event.model_id) == (staff.pk, "admin", model_a.pk)
    assert event.changes["after"] == {"principal": "user:bob", "role": "editor"}


def test_admin_changes_bob_to_viewer_and_his_next_push_is_refused(client, staff, model_a, bob):
    role_grant(actor=staff, model=model_a, role="editor", user=bob)
    _, token = token_create(user=bob, name="ci", scope=TokenScope.WRITE)
    client.force_login(staff)
    url = admin_url(model_a, "permissions_manage_user", bob.pk)
    assert client.post(url, {"role": "viewer"}).status_code == 302
    assert not access.can(bob, "edit", model_a)
    event = events("permission.changed")[-1]
    assert event.changes["before"]["role"] == "editor"
    assert event.changes["after"]["role"] == "viewer"
    push = client.post(
        f"/api/v1/models/{model_a.name}/versions",
        {},
        content_type="application/json",
        **bearer(token),
    )
    assert push.status_code == 403


def test_team_role_through_the_group_page_and_revocation(client, staff, model_a, team):
    client.force_login(staff)
    url = admin_url(model_a, "permissions_manage_group", team.pk)
    assert client.get(url).status_code == 200
    assert client.post(url, {"role": "viewer"}).status_code == 302
    assert access.role_of(team, model_a) == "viewer"
    assert client.post(url, {"role": ""}).status_code == 302
    assert access.role_of(team, model_a) is None
    revoked = events("permission.revoked")[-1]
    assert revoked.changes["before"] == {"principal": "group:vision", "role": "viewer"}


def test_the_last_owner_cannot_be_removed_in_the_admin(client, superuser, alice):
    model = model_create(actor=alice, name="solo")
    client.force_login(superuser)
    url = admin_url(model, "permissions_manage_user", alice.pk)
    response = client.post(url, {"role": "viewer"})
    assert response.status_code == 400
    assert "keeps an owner" in response.content.decode()
    assert access.role_of(alice, model) == "owner"
    assert not events("permission.changed")


# --- Edits, archive, no delete -------------------------------------------------------------


def _model_form(model: RegisteredModel, **changes: str) -> dict[str, str]:
    data = {"description": model.description, "tags": "{}", "visibility": model.visibility}
    return {**data, **changes}


def test_saving_a_model_goes_through_the_audited_update(client, staff, model_a):
    client.force_login(staff)
    form = _model_form(model_a, description="New card", visibility="internal")
    response = client.post(change_url(model_a), form)
    assert response.status_code == 302
    model_a.refresh_from_db()
    assert (model_a.description, model_a.visibility) == ("New card", "internal")
    event = events("model.updated")[-1]
    assert (event.actor_id, event.via) == (staff.pk, "admin")
    assert event.changes["after"] == {"description": "New card", "visibility": "internal"}


def test_an_invalid_edit_is_a_field_error(client, staff, model_a):
    client.force_login(staff)
    response = client.post(change_url(model_a), _model_form(model_a, tags='{"k": [1]}'))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["tags"]
    assert not events("model.updated")


def test_models_cannot_be_deleted_or_added_in_the_admin(client, superuser, model_a):
    client.force_login(superuser)
    assert client.post(admin_url(model_a, "delete"), {"post": "yes"}).status_code == 403
    assert client.get(reverse("admin:registry_registeredmodel_add")).status_code == 403
    assert _action_names(client.get(MODELS)) == {"", "archive_selected", "unarchive_selected"}
    assert RegisteredModel.objects.filter(pk=model_a.pk).exists()


def test_archive_action_archives_only_managed_models(client, staff, model_a, model_b):
    client.force_login(staff)
    data = {"action": "archive_selected", "_selected_action": [model_a.pk, model_b.pk]}
    assert client.post(MODELS, data).status_code == 302
    model_a.refresh_from_db()
    model_b.refresh_from_db()
    assert model_a.is_archived and not model_b.is_archived
    assert [event.target_id for event in events("model.archived")] == [str(model_a.pk)]


# --- The audit log is read-only for everyone ----------------------------------------------


def test_audit_admin_has_no_add_change_or_delete(client, superuser):
    event = audit_record(actor=superuser, action="test.event")
    client.force_login(superuser)
    assert client.get(AUDIT).status_code == 200
    assert client.get(change_url(event)).status_code == 200
    before = AuditEvent.objects.count()
    assert client.post(change_url(event), {"action": "forged"}).status_code == 403
    assert client.post(admin_url(event, "delete"), {"post": "yes"}).status_code == 403
    assert client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    bulk = {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"}
    client.post(AUDIT, bulk)
    assert _action_names(client.get(AUDIT)) == set()
    assert AuditEvent.objects.count() == before
    event.refresh_from_db()
    assert event.action == "test.event"


def test_audit_admin_filters_and_search(client, superuser):
    audit_record(actor=superuser, action="model.created", via="api")
    audit_record(actor=None, actor_name="ci-bot", action="version.created", via="api")
    client.force_login(superuser)
    found = client.get(AUDIT, {"q": "ci-bot"}).context["cl"].result_list
    assert [event.actor_name for event in found] == ["ci-bot"]
    found = client.get(AUDIT, {"action": "model.created"}).context["cl"].result_list
    assert {event.action for event in found} == {"model.created"}


# --- Tokens --------------------------------------------------------------------------------


def test_token_admin_revokes_through_the_audited_service(client, superuser, alice):
    token, plaintext = token_create(user=alice, name="ci", scope=TokenScope.WRITE)
    client.force_login(superuser)
    listing = client.get(TOKENS).content.decode()
    assert token.prefix in listing and token.digest not in listing
    assert token.digest not in client.get(change_url(token)).content.decode()
    assert client.get(reverse("admin:accounts_apitoken_add")).status_code == 403
    data = {"action": "revoke_selected", "_selected_action": [token.pk]}
    assert client.post(TOKENS, data).status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    [event] = events("token.revoked")
    assert (event.actor_id, event.target_id, event.via) == (superuser.pk, str(token.pk), "admin")
    assert client.get(ME, **bearer(plaintext)).status_code == 401


def test_token_admin_cannot_change_or_delete(client, superuser, alice):
    token, _ = token_create(user=alice, name="ci")
    client.force_login(superuser)
    assert client.post(change_url(token), {"scope": "write"}).status_code == 403
    assert client.post(admin_url(token, "delete"), {"post": "yes"}).status_code == 403
    token.refresh_from_db()
    assert token.scope == TokenScope.READ
    assert ApiToken.objects.filter(pk=token.pk).exists()


# --- Users and teams -----------------------------------------------------------------------


def _user_form(user: User, **changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "is_superuser": user.is_superuser,
        "groups": [group.pk for group in user.groups.all()],
        "user_permissions": [permission.pk for permission in user.user_permissions.all()],
    }
    data.update(changes)
    # An unticked checkbox is absent from a real form post.
    return {key: value for key, value in data.items() if value is not False}


def test_team_membership_changes_in_the_user_admin_are_audited(client, superuser, bob, team):
    client.force_login(superuser)
    response = client.post(change_url(bob), _user_form(bob, groups=[team.pk]))
    assert response.status_code == 302
    assert list(bob.groups.all()) == [team]
    [added] = events("team.member_added")
    assert (added.actor_id, added.target_label, added.via) == (superuser.pk, "vision", "admin")
    assert added.changes["after"] == {"member": "bob"}
    assert client.post(change_url(bob), _user_form(bob, groups=[])).status_code == 302
    assert not bob.groups.exists()
    [removed] = events("team.member_removed")
    assert removed.changes["before"] == {"member": "bob"}


def test_refused_membership_change_rolls_back_with_a_message(client, superuser, alice, team):
    model = model_create(actor=alice, name="team-owned")
    alice.groups.add(team)
    role_grant(actor=alice, model=model, role="owner", group=team)
    access.clear_role(alice, model)  # the team is now the only owner, alice its only member
    client.force_login(superuser)
    response = client.post(change_url(alice), _user_form(alice, groups=[], first_name="Al"))
    assert response.status_code == 302
    alice.refresh_from_db()
    assert list(alice.groups.all()) == [team] and alice.first_name == ""
    assert not events("team.member_removed")
    page = client.get(response.url)
    assert "last active member" in page.content.decode()


def test_deactivating_a_user_is_audited_and_their_token_stops_at_once(client, superuser, bob):
    _, token = token_create(user=bob, name="laptop")
    assert client.get(ME, **bearer(token)).status_code == 200
    client.force_login(superuser)
    assert client.post(change_url(bob), _user_form(bob, is_active=False)).status_code == 302
    bob.refresh_from_db()
    assert not bob.is_active
    [event] = events("user.deactivated")
    assert (event.actor_id, event.target_id, event.via) == (superuser.pk, str(bob.pk), "admin")
    assert client.get(ME, **bearer(token)).status_code == 401
    assert client.post(change_url(bob), _user_form(bob, is_active=True)).status_code == 302
    assert len(events("user.activated")) == 1
    assert client.get(ME, **bearer(token)).status_code == 200


def test_deactivated_user_session_ends_at_once(client, superuser, bob):
    bob_client = type(client)()
    bob_client.force_login(bob)
    assert bob_client.get(reverse("accounts:tokens")).status_code == 200
    client.force_login(superuser)
    client.post(change_url(bob), _user_form(bob, is_active=False))
    assert bob_client.get(reverse("accounts:tokens")).status_code == 302


def test_privilege_changes_are_audited(client, superuser, bob):
    permission = Permission.objects.get(codename="view_auditevent")
    client.force_login(superuser)
    form = _user_form(bob, is_staff=True, user_permissions=[permission.pk])
    assert client.post(change_url(bob), form).status_code == 302
    bob.refresh_from_db()
    assert bob.is_staff and bob.has_perm("audit.view_auditevent")
    changes = [event.changes for event in events("user.privileges_changed")]
    assert {"is_staff": True} in [
        {k: v for k, v in c["after"].items() if k == "is_staff"} for c in changes
    ]
    assert any(c["after"].get("permissions") == ["audit.view_auditevent"] for c in changes)


def test_staff_cannot_grant_themselves_privileges_or_touch_a_superuser(client, staff, superuser):
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_user", "change_user"])
    )
    client.force_login(staff)
    form = _user_form(staff, is_superuser=True, first_name="Sam")
    assert client.post(change_url(staff), form).status_code == 302
    staff.refresh_from_db()
    assert staff.first_name == "Sam" and not staff.is_superuser
    assert not events("user.privileges_changed")
    assert (
        client.post(change_url(superuser), _user_form(superuser, is_active=False)).status_code
        == 403
    )
    password_url = reverse("admin:auth_user_password_change", args=[superuser.pk])
    assert client.get(password_url).status_code == 403
    superuser.refresh_from_db()
    assert superuser.is_active


def test_admin_password_reset_is_audited(client, superuser, bob):
    client.force_login(superuser)
    url = reverse("admin:auth_user_password_change", args=[bob.pk])
    new = "another-long-passphrase-42"
    form = {"password1": new, "password2": new, "usable_password": "true"}
    assert client.post(url, form).status_code == 302
    bob.refresh_from_db()
    assert bob.check_password(new)
    [event] = events("user.password_set")
    assert (event.actor_id, event.target_id) == (superuser.pk, str(bob.pk))


def test_users_and_teams_cannot_be_deleted(client, superuser, bob, team):
    client.force_login(superuser)
    assert client.post(admin_url(bob, "delete"), {"post": "yes"}).status_code == 403
    assert client.post(admin_url(team, "delete"), {"post": "yes"}).status_code == 403
    assert User.objects.filter(pk=bob.pk).exists() and Group.objects.filter(pk=team.pk).exists()


def test_creating_a_team_in_the_admin_goes_through_the_service(client, superuser):
    client.force_login(superuser)
    response = client.post(reverse("admin:auth_group_add"), {"name": "nlp"})
    assert response.status_code == 302
    team = Group.objects.get(name="nlp")
    [event] = events("team.created")
    assert (event.actor_id, event.target_id) == (superuser.pk, str(team.pk))
    duplicate = client.post(reverse("admin:auth_group_add"), {"name": "NLP"})
    assert duplicate.status_code == 302
    assert Group.objects.filter(name__iexact="nlp").count() == 1
