"""Shared fixtures: personas and API clients."""

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from guardian.shortcuts import assign_perm

from apps.accounts.models import TokenScope, User
from apps.accounts.services import token_create
from apps.registry import access

PASSWORD = "correct-horse-battery-staple"


def grant(user: User, model: Any, role: str) -> None:
    """Give `user` a role (viewer, editor, owner) on a registered model, as guardian rows."""
    for codename in access.ROLE_PERMISSIONS[role]:
        assign_perm(f"registry.{codename}", user, model)


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


@pytest.fixture
def artifact_root(settings: Any, tmp_path: Path) -> Path:
    """STORAGES["artifacts"] on a fresh local folder (the settings change resets the cache),
    so what a test leaves behind can be listed on disk."""
    root = tmp_path / "artifacts"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {
                "location": str(root),
                "file_permissions_mode": 0o600,
                "directory_permissions_mode": 0o700,
            },
        },
    }
    return root


def run_concurrently(count: int, work: Callable[[int], Any]) -> list[Any]:
    """`work(0)` … `work(count - 1)` in threads released together; each result, or the
    exception it raised. Each thread closes its own database connection."""
    from django.db import connection

    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = work(index)
        except Exception as error:  # collected and asserted by the test
            results[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
