"""Token services and the create_api_token command."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from apps.accounts.models import ApiToken, TokenScope
from apps.accounts.services import TokenError, token_authenticate, token_create, token_revoke
from apps.audit.models import AuditEvent
from tests.conftest import bearer

pytestmark = pytest.mark.django_db


def test_token_is_stored_hashed(alice):
    token, plaintext = token_create(user=alice, name="ci", scope=TokenScope.WRITE)
    assert plaintext.startswith(f"rgt_{token.prefix}_")
    secret = plaintext.split("_", 2)[2]
    stored = ApiToken.objects.filter(pk=token.pk).values().get()
    assert all(secret not in str(value) for value in stored.values())
    assert token_authenticate(plaintext) == token


def test_token_creation_is_audited(alice):
    token, _ = token_create(user=alice, name="ci", expires_days=30)
    event = AuditEvent.objects.get(action="token.created")
    assert event.actor_id == alice.pk
    assert event.target_id == str(token.pk)
    assert event.changes["after"]["scope"] == "read"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "ok", "scope": "admin"}, "scope"),
        ({"name": "ok", "expires_days": 0}, "expires_days"),
        ({"name": "ok", "expires_days": 100000}, "expires_days"),
    ],
)
def test_bad_token_requests_change_nothing(alice, kwargs, field):
    with pytest.raises(TokenError, match=field):
        token_create(user=alice, **kwargs)
    assert not ApiToken.objects.exists()
    assert not AuditEvent.objects.exists()


def test_revoke_twice_records_once(alice):
    token, _ = token_create(user=alice, name="ci")
    token_revoke(token=token, actor=alice)
    token_revoke(token=token, actor=alice)
    assert AuditEvent.objects.filter(action="token.revoked").count() == 1


def test_command_prints_a_working_token(alice):
    out = StringIO()
    call_command("create_api_token", "alice", "--scope", "write", "--expires-days", "7", stdout=out)
    plaintext = out.getvalue().strip()
    token = ApiToken.objects.get()
    assert token.scope == "write" and token.expires_at is not None
    response = Client().get("/api/v1/me", **bearer(plaintext))
    assert response.json()["username"] == "alice"
    assert AuditEvent.objects.get(action="token.created").via == "cli"


def test_command_rejects_unknown_user(db):
    with pytest.raises(CommandError, match="No active user"):
        call_command("create_api_token", "nobody")
    assert not ApiToken.objects.exists()
