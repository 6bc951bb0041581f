"""Sign-in protection: lockout (django-axes), password storage and policy, sessions.

SECURITY.md BL-03 (brute force and enumeration), BL-05 (password storage and policy) and
BL-08 (sessions).
"""

import re
from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from apps.accounts.forms import SIGN_IN_FAILED
from apps.accounts.services import token_create
from apps.audit.models import AuditEvent
from tests.conftest import PASSWORD, bearer

pytestmark = pytest.mark.django_db

LOGIN = reverse("accounts:login")
LOGOUT = reverse("accounts:logout")
ADMIN_LOGIN = reverse("admin:login")
LOCKED = "Too many failed sign-ins. Try again in 15 minutes."
WRONG = "wrong-password-123"
IP = "198.51.100.7"


def sign_in(client, username: str, password: str, url: str = LOGIN, **extra):
    extra.setdefault("REMOTE_ADDR", IP)
    return client.post(url, {"username": username, "password": password}, **extra)


def fail_times(client, username: str, times: int, **extra) -> list:
    return [sign_in(client, username, WRONG, **extra) for _ in range(times)]


def is_locked(response) -> bool:
    return response.status_code == 429 and LOCKED in response.content.decode()


def signed_in(client) -> bool:
    return "_auth_user_id" in client.session


# --- Lockout ---------------------------------------------------------------------------------


def test_five_failures_lock_the_account_for_that_address(client, alice):
    responses = fail_times(client, "alice", 5)
    assert [r.status_code for r in responses[:4]] == [200] * 4
    assert all(SIGN_IN_FAILED in r.content.decode() for r in responses[:4])
    assert is_locked(responses[4])
    sixth = sign_in(client, "alice", PASSWORD)
    assert is_locked(sixth)
    assert not signed_in(client)
    assert not AuditEvent.objects.filter(action="user.signed_in").exists()
    assert AuditEvent.objects.filter(action="user.sign_in_failed").count() == 6


def _normalised(response) -> str:
    html = response.content.decode()
    html = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "CSRF", html)
    return re.sub(r'value="(alice|nobody)"', 'value="USERNAME"', html)


def test_unknown_username_gets_the_same_responses(client, alice):
    known = fail_times(client, "alice", 6)
    unknown = fail_times(client, "nobody", 6)
    assert [r.status_code for r in known] == [r.status_code for r in unknown]
    assert [_normalised(r) for r in known] == [_normalised(r) for r in unknown]
    assert "alice" not in known[-1].content.decode()


def test_lockout_is_per_username_and_address(client, alice, outsider):
    fail_times(client, "alice", 5)
    assert is_locked(sign_in(client, "alice", PASSWORD))
    assert sign_in(client, "dave", PASSWORD).status_code == 302  # another user, same address
    client.logout()
    assert sign_in(client, "alice", PASSWORD, REMOTE_ADDR="203.0.113.50").status_code == 302


def test_spoofed_forwarded_for_does_not_escape_the_lockout(client, alice, settings):
    settings.REGENT_TRUSTED_PROXY_COUNT = 0
    for attempt in range(5):
        sign_in(client, "alice", WRONG, HTTP_X_FORWARDED_FOR=f"10.0.0.{attempt}")
    response = sign_in(client, "alice", PASSWORD, HTTP_X_FORWARDED_FOR="10.9.9.9")
    assert is_locked(response)
    assert not signed_in(client)


def test_behind_a_proxy_only_the_address_it_wrote_counts(client, alice, settings):
    settings.REGENT_TRUSTED_PROXY_COUNT = 1
    proxy = {"REMOTE_ADDR": "10.0.0.1"}
    for attempt in range(5):
        forged = f"192.0.2.{attempt}, 203.0.113.9"  # the client forged the left part
        sign_in(client, "alice", WRONG, HTTP_X_FORWARDED_FOR=forged, **proxy)
    again = sign_in(client, "alice", PASSWORD, HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.9", **proxy)
    assert is_locked(again)
    other_client = sign_in(client, "alice", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.10", **proxy)
    assert other_client.status_code == 302


def test_a_successful_sign_in_resets_the_count(client, alice):
    fail_times(client, "alice", 4)
    assert sign_in(client, "alice", PASSWORD).status_code == 302
    client.logout()
    assert not any(is_locked(r) for r in fail_times(client, "alice", 4))
    assert sign_in(client, "alice", PASSWORD).status_code == 302


def test_the_lockout_ends_after_fifteen_minutes(client, alice):
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        fail_times(client, "alice", 5)
        traveller.shift(timedelta(minutes=14))
        assert is_locked(sign_in(client, "alice", PASSWORD))
        traveller.shift(timedelta(minutes=16))
        assert sign_in(client, "alice", PASSWORD).status_code == 302


def test_the_admin_sign_in_is_protected_too(client, superuser):
    responses = fail_times(client, "root", 5, url=ADMIN_LOGIN)
    assert is_locked(responses[-1])
    assert is_locked(sign_in(client, "root", PASSWORD, url=ADMIN_LOGIN))
    assert not signed_in(client)


def test_api_tokens_are_unaffected_by_a_sign_in_lockout(client, alice):
    _, token = token_create(user=alice, name="ci")
    fail_times(client, "alice", 5)
    assert client.get("/api/v1/me", REMOTE_ADDR=IP, **bearer(token)).status_code == 200


def test_bad_bearer_tokens_do_not_lock_the_user_out(client, alice):
    for _ in range(6):
        response = client.get("/api/v1/me", REMOTE_ADDR=IP, **bearer("rgt_000000000000_nope"))
        assert response.status_code == 401
    assert sign_in(client, "alice", PASSWORD).status_code == 302


# --- Passwords -------------------------------------------------------------------------------


def test_passwords_are_stored_with_a_slow_hash(alice):
    assert alice.password.startswith(("pbkdf2_sha256$", "argon2"))
    assert PASSWORD not in alice.password


@pytest.mark.parametrize(
    "weak",
    ["password", "12345678901234", "short-pw"],
    ids=["common", "numeric", "too-short"],
)
def test_weak_passwords_are_rejected(alice, weak):
    with pytest.raises(ValidationError):
        validate_password(weak, user=alice)


def test_a_long_passphrase_is_accepted(alice):
    validate_password("violet tractor rides at dawn", user=alice)


# --- Sessions --------------------------------------------------------------------------------


def test_signing_in_rotates_the_session_key(client, alice):
    session = client.session
    session["probe"] = "before sign-in"
    session.save()
    before = session.session_key
    assert sign_in(client, "alice", PASSWORD).status_code == 302
    after = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert after != before
    assert not Session.objects.filter(session_key=before).exists()
    assert Session.objects.filter(session_key=after).exists()


def test_signing_out_deletes_the_server_side_session(client, alice):
    sign_in(client, "alice", PASSWORD)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert Session.objects.filter(session_key=key).exists()
    client.post(LOGOUT)
    assert not Session.objects.filter(session_key=key).exists()
    assert client.get(reverse("accounts:tokens")).status_code == 302


def test_session_cookie_is_http_only_and_same_site_lax(client, alice):
    response = sign_in(client, "alice", PASSWORD)
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
