"""Account pages: sign in and out, password change, API tokens; and the site's error pages."""

import re

import pytest
from django.template.loader import render_to_string
from django.test import Client
from django.urls import reverse

from apps.accounts.forms import SIGN_IN_FAILED
from apps.accounts.models import ApiToken, TokenScope
from apps.accounts.services import token_create
from apps.audit.models import AuditEvent
from tests.conftest import PASSWORD, bearer

pytestmark = pytest.mark.django_db

LOGIN = reverse("accounts:login")
LOGOUT = reverse("accounts:logout")
TOKENS = reverse("accounts:tokens")
TOKEN_CREATE = reverse("accounts:token-create")
PASSWORD_CHANGE = reverse("accounts:password_change")
TOKEN_PATTERN = re.compile(r"rgt_[0-9a-f]{12}_[A-Za-z0-9_-]+")
NEW_PASSWORD = "a-brand-new-long-passphrase"


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("id").values_list("action", flat=True))


def revoke_url(token: ApiToken) -> str:
    return reverse("accounts:token-revoke", args=[token.pk])


# --- Sign in and out ------------------------------------------------------------------------


def test_sign_in_success_is_audited(client, alice):
    response = client.post(LOGIN, {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="user.signed_in")
    assert (event.actor_id, event.via) == (alice.pk, "web")


def test_sign_in_follows_next(client, alice):
    response = client.post(LOGIN, {"username": "alice", "password": PASSWORD, "next": TOKENS})
    assert response.url == TOKENS


def _normalised_page(client: Client, username: str) -> str:
    response = client.post(LOGIN, {"username": username, "password": "wrong-password-123"})
    assert response.status_code == 200
    html = response.content.decode()
    html = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "CSRF", html)
    return html.replace(f'value="{username}"', 'value="USERNAME"')


def test_wrong_password_and_unknown_user_look_the_same(client, alice):
    wrong_password = _normalised_page(client, "alice")
    unknown_user = _normalised_page(client, "nobody")
    assert SIGN_IN_FAILED in wrong_password
    assert wrong_password == unknown_user
    failed = AuditEvent.objects.filter(action="user.sign_in_failed").order_by("id")
    assert [event.actor_name for event in failed] == ["alice", "nobody"]
    assert all(event.actor_id is None for event in failed)
    assert not AuditEvent.objects.filter(action="user.signed_in").exists()


def test_inactive_user_gets_the_generic_message(client, alice):
    alice.is_active = False
    alice.save()
    response = client.post(LOGIN, {"username": "alice", "password": PASSWORD})
    assert SIGN_IN_FAILED in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_signed_in_user_skips_the_sign_in_page(client, alice):
    client.force_login(alice)
    assert client.get(LOGIN).status_code == 302


def test_sign_out_needs_a_post(client, alice):
    client.force_login(alice)
    assert client.get(LOGOUT).status_code == 405
    assert client.get(TOKENS).status_code == 200
    assert not AuditEvent.objects.filter(action="user.signed_out").exists()


def test_sign_out_is_audited(client, alice):
    client.force_login(alice)
    response = client.post(LOGOUT)
    assert response.status_code == 302
    assert response.url == LOGIN
    assert AuditEvent.objects.get(action="user.signed_out").actor_id == alice.pk
    assert "You have signed out." in client.get(LOGIN).content.decode()
    assert client.get(TOKENS).status_code == 302


# --- Password -------------------------------------------------------------------------------


def _change_password(client: Client, old: str) -> object:
    data = {"old_password": old, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    return client.post(PASSWORD_CHANGE, data)


def test_password_change_keeps_the_session(client, alice):
    client.force_login(alice)
    response = _change_password(client, PASSWORD)
    assert response.status_code == 302
    assert response.url == reverse("accounts:password_change_done")
    alice.refresh_from_db()
    assert alice.check_password(NEW_PASSWORD)
    assert client.get(TOKENS).status_code == 200
    assert AuditEvent.objects.get(action="user.password_changed").actor_id == alice.pk


def test_password_change_needs_the_old_password(client, alice):
    client.force_login(alice)
    response = _change_password(client, "not-my-password")
    assert response.status_code == 200
    assert "errorlist" in response.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)
    assert not AuditEvent.objects.filter(action="user.password_changed").exists()


# --- Tokens ---------------------------------------------------------------------------------


def test_created_token_is_shown_once_and_stored_hashed(client, alice):
    client.force_login(alice)
    data = {"name": "ci", "scope": "write", "expires_days": "30"}
    response = client.post(TOKEN_CREATE, data)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    plaintext = TOKEN_PATTERN.search(response.content.decode()).group(0)
    token = ApiToken.objects.get(user=alice)
    assert (token.name, token.scope, token.expires_at is not None) == ("ci", "write", True)
    secret = plaintext.split("_", 2)[2]
    stored = ApiToken.objects.filter(pk=token.pk).values().get()
    assert all(secret not in str(value) for value in stored.values())
    assert AuditEvent.objects.get(action="token.created").actor_id == alice.pk
    listing = client.get(TOKENS).content.decode()
    assert secret not in listing
    assert f"rgt_{token.prefix}_…" in listing
    assert client.get("/api/v1/me", **bearer(plaintext)).json()["username"] == "alice"


def test_token_without_expiry(client, alice):
    client.force_login(alice)
    client.post(TOKEN_CREATE, {"name": "forever", "scope": "read", "expires_days": "never"})
    assert ApiToken.objects.get(user=alice).expires_at is None


@pytest.mark.parametrize(
    "data",
    [
        {"name": "ci", "scope": "admin", "expires_days": "30"},
        {"name": "ci", "scope": "read", "expires_days": "0"},
        {"name": "ci", "scope": "read", "expires_days": "abc"},
        {"name": "ci", "scope": "read"},
        {"name": "   ", "scope": "read", "expires_days": "30"},
        {"name": "x" * 101, "scope": "read", "expires_days": "30"},
    ],
)
def test_bad_token_input_creates_nothing(client, alice, data):
    client.force_login(alice)
    response = client.post(TOKEN_CREATE, data)
    assert response.status_code == 400
    assert "errorlist" in response.content.decode()
    assert not ApiToken.objects.exists()
    assert not AuditEvent.objects.filter(action="token.created").exists()


def test_token_list_shows_status_and_scope(client, alice):
    token_create(user=alice, name="reader", scope=TokenScope.READ)
    revoked, _ = token_create(user=alice, name="old", scope=TokenScope.WRITE)
    client.force_login(alice)
    client.post(revoke_url(revoked))
    html = client.get(TOKENS).content.decode()
    assert "read only" in html
    assert "read &amp; write" in html
    assert ">active<" in html
    assert ">revoked<" in html


def test_revoked_token_stops_working(client, alice, write_token):
    token = ApiToken.objects.get(user=alice)
    client.force_login(alice)
    response = client.post(revoke_url(token))
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditEvent.objects.get(action="token.revoked").actor_id == alice.pk
    assert Client().get("/api/v1/me", **bearer(write_token)).status_code == 401


def test_revoking_someone_elses_token_is_a_404(client, outsider, write_token):
    token = ApiToken.objects.get()
    client.force_login(outsider)
    assert client.post(revoke_url(token)).status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    assert not AuditEvent.objects.filter(action="token.revoked").exists()
    assert Client().get("/api/v1/me", **bearer(write_token)).status_code == 200


def test_revoke_needs_a_post(client, alice, write_token):
    client.force_login(alice)
    assert client.get(revoke_url(ApiToken.objects.get())).status_code == 405
    assert ApiToken.objects.active().count() == 1


def test_token_create_without_csrf_is_refused(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(TOKEN_CREATE, {"name": "ci", "scope": "read", "expires_days": "30"})
    assert response.status_code == 403
    assert "This form has expired" in response.content.decode()
    assert not ApiToken.objects.exists()


@pytest.mark.parametrize(
    "url", [TOKENS, PASSWORD_CHANGE, reverse("accounts:password_change_done"), "/audit/"]
)
def test_anonymous_is_sent_to_sign_in(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response.url == f"{LOGIN}?next={url}"


def test_anonymous_cannot_create_a_token(client, db):
    response = client.post(TOKEN_CREATE, {"name": "ci", "scope": "read", "expires_days": "30"})
    assert response.status_code == 302
    assert not ApiToken.objects.exists()


# --- The look: no inline styles or scripts (CSP), the nav, the error pages -------------------


def test_pages_have_no_inline_style_or_script(client, alice, write_token):
    pages = [client.get(LOGIN)]
    client.force_login(alice)
    pages += [client.get(TOKENS), client.get(PASSWORD_CHANGE), client.get("/audit/")]
    for response in pages:
        html = response.content.decode()
        assert response.status_code == 200
        assert " style=" not in html
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []


def test_nav_shows_admin_only_to_staff(client, alice, superuser):
    client.force_login(alice)
    assert 'href="/admin/"' not in client.get(TOKENS).content.decode()
    client.force_login(superuser)
    assert 'href="/admin/"' in client.get(TOKENS).content.decode()


def test_unknown_page_is_our_styled_404(client, alice):
    client.force_login(alice)
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert "404.html" in [template.name for template in response.templates]
    html = response.content.decode()
    assert '<nav class="mainnav"' in html
    assert "regent.css" in html


def test_server_error_page_renders_without_a_request():
    html = render_to_string("500.html")
    assert "Something went wrong" in html
    assert "regent.css" in html
