"""Sign-in lockouts (django-axes) and their lifting by an admin go to the audit log."""

import pytest
from axes.models import AccessAttempt
from django.test import Client
from django.urls import reverse

from apps.audit.models import AuditEvent
from tests.accounts.test_signin_protection import IP, fail_times, is_locked, sign_in, signed_in
from tests.conftest import PASSWORD, make_user

pytestmark = pytest.mark.django_db

ATTEMPTS = reverse("admin:axes_accessattempt_changelist")


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_a_lockout_is_recorded_once_naming_the_account(client, alice):
    fail_times(client, "alice", 5)

    [event] = events("user.locked_out")
    assert (event.actor_id, event.actor_name) == (None, "alice")
    assert (event.target_type, event.target_id) == ("accounts.user", str(alice.pk))
    assert event.changes == {"username": "alice", "minutes": 15}
    assert event.ip == IP
    # Each attempt refused while the lock holds is one more.
    assert is_locked(sign_in(client, "alice", PASSWORD))
    assert len(events("user.locked_out")) == 2


def test_a_lockout_of_an_unknown_name_has_no_target(client):
    fail_times(client, "nobody-here", 5)

    [event] = events("user.locked_out")
    assert (event.target_type, event.target_id) == ("", "")
    assert event.changes["username"] == "nobody-here"


def test_an_admin_lifts_a_lockout_and_it_is_recorded(client, alice, superuser):
    fail_times(client, "alice", 5)
    assert is_locked(sign_in(client, "alice", PASSWORD))
    attempt = AccessAttempt.objects.get(username="alice")
    admin = Client()
    admin.force_login(superuser)

    url = reverse("admin:axes_accessattempt_delete", args=[attempt.pk])
    assert admin.post(url, {"post": "yes"}).status_code == 302

    assert not AccessAttempt.objects.exists()
    [event] = events("user.lockout_lifted")
    assert (event.actor_id, event.via) == (superuser.pk, "admin")
    assert (event.target_type, event.target_id) == ("accounts.user", str(alice.pk))
    assert event.changes == {
        "username": "alice",
        "ip_address": IP,
        "failures": attempt.failures_since_start,
        "locked": True,
    }
    sign_in(client, "alice", PASSWORD)
    assert signed_in(client)


def test_lifting_several_at_once_records_each(client, alice, superuser):
    bob = make_user("bob")
    fail_times(client, "alice", 5)
    fail_times(client, "bob", 2)
    admin = Client()
    admin.force_login(superuser)
    chosen = list(AccessAttempt.objects.values_list("pk", flat=True))

    response = admin.post(
        ATTEMPTS, {"action": "delete_selected", "_selected_action": chosen, "post": "yes"}
    )

    assert response.status_code == 302
    assert not AccessAttempt.objects.exists()
    lifted = {event.changes["username"]: event for event in events("user.lockout_lifted")}
    assert set(lifted) == {"alice", "bob"}
    assert lifted["alice"].changes["locked"] is True
    assert lifted["bob"].changes["locked"] is False
    assert lifted["bob"].target_id == str(bob.pk)


def test_staff_without_the_permission_cannot_see_or_lift_lockouts(client, alice):
    fail_times(client, "alice", 5)
    staff = make_user("sam", is_staff=True)
    admin = Client()
    admin.force_login(staff)
    attempt = AccessAttempt.objects.get(username="alice")

    assert admin.get(ATTEMPTS).status_code == 403
    url = reverse("admin:axes_accessattempt_delete", args=[attempt.pk])
    assert admin.post(url, {"post": "yes"}).status_code == 403
    assert AccessAttempt.objects.filter(pk=attempt.pk).exists()
    assert not events("user.lockout_lifted")
