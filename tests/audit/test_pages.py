"""The audit log page: who sees what, filters, the chain status and its query budget."""

import pytest
from django.urls import reverse

from apps.audit.selectors import audit_verify_chain
from apps.audit.services import audit_check_record, audit_record

pytestmark = pytest.mark.django_db

AUDIT = reverse("audit:list")


def shown_actions(response) -> list[str]:
    return [event.action for event in response.context["page"].object_list]


def shown_demo_actions(response) -> list[str]:
    # Signing in (force_login) is itself audited; these tests look at the demo events only.
    return [action for action in shown_actions(response) if action.startswith("demo.")]


@pytest.fixture
def events(alice, outsider) -> None:
    audit_record(actor=alice, action="demo.alice_acted")
    audit_record(actor=outsider, action="demo.dave_acted")
    audit_record(actor=None, action="demo.system_acted")


def test_superuser_sees_every_event(client, superuser, events):
    client.force_login(superuser)
    actions = shown_demo_actions(client.get(AUDIT))
    assert actions == ["demo.system_acted", "demo.dave_acted", "demo.alice_acted"]


def test_user_sees_only_their_own_events(client, alice, events):
    client.force_login(alice)
    response = client.get(AUDIT)
    assert shown_demo_actions(response) == ["demo.alice_acted"]
    assert {event.actor_id for event in response.context["page"].object_list} == {alice.pk}
    assert "demo.dave_acted" not in response.content.decode()


def test_filters_by_action_and_actor(client, superuser, events):
    client.force_login(superuser)
    assert shown_actions(client.get(AUDIT, {"action": "demo.dave_acted"})) == ["demo.dave_acted"]
    assert len(shown_actions(client.get(AUDIT, {"action": "demo"}))) == 3
    assert shown_demo_actions(client.get(AUDIT, {"actor": "ALICE"})) == ["demo.alice_acted"]
    assert shown_actions(client.get(AUDIT, {"action": "demo.nothing"})) == []


def test_filters_cannot_widen_what_a_user_sees(client, alice, events):
    client.force_login(alice)
    assert shown_actions(client.get(AUDIT, {"actor": "dave"})) == []


def test_latest_chain_check_is_shown(client, superuser, events):
    audit_check_record(audit_verify_chain())
    client.force_login(superuser)
    assert "Chain intact" in client.get(AUDIT).content.decode()


def test_page_has_a_bounded_query_count(client, superuser, alice, django_assert_max_num_queries):
    for number in range(200):
        audit_record(actor=alice, action="demo.bulk", changes={"n": number})
    for user in (superuser, alice):
        client.force_login(user)
        with django_assert_max_num_queries(6):
            response = client.get(AUDIT, {"page": "2", "action": "demo.bulk"})
        assert response.status_code == 200
        assert len(response.context["page"].object_list) == 50
        assert response.context["page"].count == 200


def test_anonymous_is_sent_to_sign_in(client, db):
    response = client.get(AUDIT)
    assert response.status_code == 302
    assert response.url.startswith(reverse("accounts:login"))
