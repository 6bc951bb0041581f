"""Access-control personas.

`alice` creates the private model `vision-net` and so owns it; `bob` is in team "vision",
which holds the editor role on it; `carol` is a viewer herself; `dave` (`outsider`) has
nothing. `staff` may manage teams. Every persona has a read-write token, so a refusal in a
test comes from the role, never from the token's scope.
"""

from typing import Any

import pytest
from django.contrib.auth.models import Group

from apps.accounts.models import TokenScope, User
from apps.accounts.services import role_grant, token_create
from apps.registry.models import RegisteredModel
from apps.registry.services import model_create
from tests.conftest import bearer, make_user

MODEL_NAME = "vision-net"


def new_model(owner: User, name: str = MODEL_NAME, visibility: str = "private") -> RegisteredModel:
    return model_create(actor=owner, name=name, visibility=visibility)


def token_for(user: User) -> dict[str, str]:
    _, plaintext = token_create(user=user, name="tests", scope=TokenScope.WRITE)
    return bearer(plaintext)


def send_json(client: Any, method: str, url: str, data: Any, headers: dict[str, str]) -> Any:
    return getattr(client, method)(url, data, content_type="application/json", **headers)


@pytest.fixture
def ml_model(alice: User) -> RegisteredModel:
    return new_model(alice)


@pytest.fixture
def vision(db) -> Group:
    return Group.objects.create(name="vision")


@pytest.fixture
def bob(ml_model: RegisteredModel, vision: Group, alice: User) -> User:
    user = make_user("bob")
    user.groups.add(vision)
    role_grant(actor=alice, model=ml_model, role="editor", group=vision)
    return user


@pytest.fixture
def carol(ml_model: RegisteredModel, alice: User) -> User:
    user = make_user("carol")
    role_grant(actor=alice, model=ml_model, role="viewer", user=user)
    return user


@pytest.fixture
def staff(db) -> User:
    return make_user("sam", is_staff=True)


@pytest.fixture
def personas(alice: User, bob: User, carol: User, outsider: User) -> dict[str, User]:
    return {"alice": alice, "bob": bob, "carol": carol, "dave": outsider}
