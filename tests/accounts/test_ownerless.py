"""Deactivating a model's last owner: never refused (an account must be stoppable at once),
but the models it leaves without an owner are named in the audit event and in the admin."""

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from apps.accounts import services
from apps.accounts.services import role_grant, team_member_add, user_admin_update
from apps.audit.models import AuditEvent
from apps.registry import access
from apps.registry.models import RegisteredModel
from apps.registry.services import model_create
from tests.accounts.test_admin import _user_form
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def deactivation_changes(user) -> dict:
    event = AuditEvent.objects.filter(action="user.deactivated", target_id=str(user.pk)).get()
    return event.changes


def sole_models(owner, count: int, prefix: str = "solo") -> list[RegisteredModel]:
    return [model_create(actor=owner, name=f"{prefix}-{index}") for index in range(count)]


@pytest.fixture
def estate(alice, superuser):
    """alice owns: solo (alone), shared (with carol), team-kept (through a team with dave),
    team-alone (through a team she alone is in), with-inactive (with erin, deactivated);
    she only edits carols."""
    carol, dave = make_user("carol"), make_user("dave")
    erin = make_user("erin", is_active=False)
    model_create(actor=alice, name="solo")
    shared = model_create(actor=alice, name="shared")
    role_grant(actor=alice, model=shared, role="owner", user=carol)
    for name, members in (("kept-team", [alice, dave]), ("alone-team", [alice])):
        team = Group.objects.create(name=name)
        for member in members:
            team_member_add(actor=superuser, team=team, user=member)
        model = model_create(actor=alice, name=name.replace("-team", "") + "-by-team")
        role_grant(actor=alice, model=model, role="owner", group=team)
        access.clear_role(alice, model)  # the team is the owner, not alice herself
    with_inactive = model_create(actor=alice, name="with-inactive")
    access.set_role(erin, with_inactive, "owner")  # erin is deactivated: the service refuses
    carols = model_create(actor=carol, name="carols")
    role_grant(actor=carol, model=carols, role="editor", user=alice)
    return alice


def test_the_models_no_one_else_would_own_are_found_by_name(estate):
    orphaned = access.models_left_without_an_owner(estate)

    assert [model.name for model in orphaned] == ["alone-by-team", "solo", "with-inactive"]


def test_finding_them_takes_the_same_queries_for_one_model_or_many(
    alice, django_assert_max_num_queries
):
    sole_models(alice, 1)
    with django_assert_max_num_queries(1):
        assert len(access.models_left_without_an_owner(alice)) == 1
    sole_models(alice, 6, prefix="more")
    with django_assert_max_num_queries(1):
        assert len(access.models_left_without_an_owner(alice)) == 7


def test_someone_who_owns_nothing_leaves_nothing(alice, django_assert_max_num_queries):
    with django_assert_max_num_queries(1):
        assert access.models_left_without_an_owner(alice) == []


def test_deactivating_the_last_owner_is_done_and_names_the_models(estate, superuser):
    user_admin_update(actor=superuser, user=estate, is_active=False)

    estate.refresh_from_db()
    assert not estate.is_active
    assert deactivation_changes(estate) == {
        "before": {"is_active": True},
        "after": {"is_active": False},
        "left_without_an_owner": {
            "count": 3,
            "models": ["alone-by-team", "solo", "with-inactive"],
        },
    }
    # Still true once deactivated: nobody else became owner.
    assert len(access.models_left_without_an_owner(estate)) == 3


def test_deactivating_someone_who_leaves_no_model_ownerless_records_only_the_flag(alice, superuser):
    bob = make_user("bob")
    shared = model_create(actor=alice, name="shared")
    role_grant(actor=alice, model=shared, role="owner", user=bob)

    user_admin_update(actor=superuser, user=bob, is_active=False)

    assert deactivation_changes(bob) == {
        "before": {"is_active": True},
        "after": {"is_active": False},
    }


def test_the_event_names_at_most_a_hundred_models_and_counts_them_all(
    alice, superuser, monkeypatch
):
    monkeypatch.setattr(services, "ORPHANS_NAMED", 2)
    sole_models(alice, 3)

    user_admin_update(actor=superuser, user=alice, is_active=False)

    assert deactivation_changes(alice)["left_without_an_owner"] == {
        "count": 3,
        "models": ["solo-0", "solo-1"],
    }


def test_the_admin_warns_of_the_models_left_without_an_owner(client, superuser, alice):
    sole_models(alice, 12)
    client.force_login(superuser)
    url = reverse("admin:accounts_user_change", args=[alice.pk])

    response = client.post(url, _user_form(alice, is_active=False), follow=True)

    page = response.content.decode()
    assert "Deactivated “alice”, the last owner of 12 model(s): solo-0, solo-1, solo-10" in page
    assert "solo-7 and 2 more" in page
    # Saving the account again, still inactive, does not warn again.
    response = client.post(url, _user_form(alice, is_active=False, first_name="A"), follow=True)
    assert "last owner" not in response.content.decode()


def test_the_admin_does_not_warn_when_someone_else_still_owns_them(client, superuser, alice):
    bob = make_user("bob")
    model = model_create(actor=alice, name="shared")
    role_grant(actor=alice, model=model, role="owner", user=bob)
    client.force_login(superuser)
    url = reverse("admin:accounts_user_change", args=[alice.pk])

    response = client.post(url, _user_form(alice, is_active=False), follow=True)

    assert response.status_code == 200
    assert "last owner" not in response.content.decode()


MODELS = reverse("admin:registry_registeredmodel_changelist")


def test_the_models_list_filters_the_models_without_an_active_owner(
    client, superuser, estate, django_assert_max_num_queries
):
    user_admin_update(actor=superuser, user=estate, is_active=False)
    client.force_login(superuser)

    with django_assert_max_num_queries(20):
        response = client.get(MODELS, {"owner": "none"})

    listed = {model.name for model in response.context["cl"].result_list}
    assert listed == {"alone-by-team", "solo", "with-inactive"}
    assert "No active owner" in response.content.decode()
    unfiltered = client.get(MODELS).context["cl"].result_list
    assert {"shared", "kept-by-team", "carols"} <= {model.name for model in unfiltered}


def test_without_an_active_owner_agrees_with_the_deactivation_report(estate):
    names = [model.name for model in access.models_left_without_an_owner(estate)]
    estate.is_active = False
    estate.save(update_fields=["is_active"])

    ownerless = access.without_an_active_owner(RegisteredModel.objects.order_by("name"))

    assert [model.name for model in ownerless] == names
