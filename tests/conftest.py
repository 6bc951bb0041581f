"""Shared fixtures: personas and API clients."""

import pytest
from django.test import Client

from apps.accounts.models import TokenScope, User
from apps.accounts.services import token_create

PASSWORD = "correct-horse-battery-staple"


def make_user(username: str, **extra: object) -> User:
    return User.objects.create_user(username, f"{username}@example.com", PASSWORD, **extra)


@pytest.fixture
def alice(db) -> User:
    return make_user("alice")


@pytest.fixture
def outsider(db) -> User:
    return make_user("dave")


@pytest.fixture
def superuser(db) -> User:
    return User.objects.create_superuser("root", "root@example.com", PASSWORD)


@pytest.fixture
def write_token(alice) -> str:
    _, plaintext = token_create(user=alice, name="ci", scope=TokenScope.WRITE)
    return plaintext


@pytest.fixture
def read_token(alice) -> str:
    _, plaintext = token_create(user=alice, name="reader", scope=TokenScope.READ)
    return plaintext


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


@pytest.fixture
def api_client() -> Client:
    return Client()
