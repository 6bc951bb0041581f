"""Registry personas and catalog fixtures.

`owner` (alice) creates `ml_model` and so owns it; `editor` (bob) and `viewer` (carol) are
granted their roles on it; `outsider` (dave) has no grant. Each has a read-write token, so a
refusal in a test comes from their role, never from the token's scope.
"""

from typing import Any

import pytest

from apps.accounts.models import TokenScope, User
from apps.accounts.services import token_create
from apps.registry.models import ModelVersion, RegisteredModel
from apps.registry.services import model_create, version_create
from tests.conftest import bearer, grant, make_user

MODELS_URL = "/api/v1/models"


def token_for(user: User) -> dict[str, str]:
    _, plaintext = token_create(user=user, name="tests", scope=TokenScope.WRITE)
    return bearer(plaintext)


def fullwidth(text: str) -> str:
    """The fullwidth look-alike of ASCII text ("ab" → U+FF41 U+FF42); NFKC maps it back."""
    return "".join(chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char for char in text)


def post_json(client: Any, url: str, data: Any, headers: dict[str, str]) -> Any:
    return client.post(url, data, content_type="application/json", **headers)


def patch_json(client: Any, url: str, data: Any, headers: dict[str, str]) -> Any:
    return client.patch(url, data, content_type="application/json", **headers)


@pytest.fixture
def owner(alice: User) -> User:
    return alice


@pytest.fixture
def ml_model(owner: User) -> RegisteredModel:
    return model_create(
        actor=owner,
        name="fraud-detector",
        description="# Fraud detector\nFlags card transactions.",
        tags={"team": "risk"},
    )


@pytest.fixture
def editor(ml_model: RegisteredModel) -> User:
    user = make_user("bob")
    grant(user, ml_model, "editor")
    return user


@pytest.fixture
def viewer(ml_model: RegisteredModel) -> User:
    user = make_user("carol")
    grant(user, ml_model, "viewer")
    return user


@pytest.fixture
def owner_auth(owner: User) -> dict[str, str]:
    return token_for(owner)


@pytest.fixture
def editor_auth(editor: User) -> dict[str, str]:
    return token_for(editor)


@pytest.fixture
def viewer_auth(viewer: User) -> dict[str, str]:
    return token_for(viewer)


@pytest.fixture
def outsider_auth(outsider: User) -> dict[str, str]:
    return token_for(outsider)


@pytest.fixture
def version(ml_model: RegisteredModel, editor: User) -> ModelVersion:
    return version_create(
        actor=editor,
        model=ml_model,
        description="First cut",
        metrics={"auc": 0.91, "loss": 0.2},
        params={"lr": 0.001, "optimizer": "adam"},
        tags={"stage": "candidate"},
        training_data=[{"uri": "s3://datasets/fraud/2024.parquet", "sha256": "a" * 64}],
        dependencies={"framework": "torch==2.3", "requirements": ["numpy>=1.26"]},
        source={"run_id": "run-42", "commit": "abc123"},
    )
