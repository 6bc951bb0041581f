"""MLflow personas: `owner` (alice) owns `fraud-detector`; `editor` (bob) and `viewer`
(carol) hold those roles on it; `outsider` (dave) has none. Each has a read-write token;
`read_only` is alice's read-only token. The model has Regent's default stages: staging
(1 approval) and production (2), with erin approving both.
"""

import base64
import json
import re
from typing import Any

import pytest
from django.test import Client
from mlflow.utils.proto_json_utils import message_to_json, parse_dict

from apps.accounts.models import TokenScope, User
from apps.accounts.services import token_create
from apps.approvals.access import set_approver
from apps.approvals.models import Stage, StagePolicy
from apps.audit.models import AuditEvent
from apps.registry import access
from apps.registry.models import RegisteredModel
from apps.registry.services import model_create
from tests.conftest import PASSWORD, make_user

MLFLOW = "/api/2.0/mlflow"
AJAX = "/ajax-api/2.0/mlflow"
USER_AGENT = "mlflow-python-client/3.17.2"
S3 = "s3://bucket/run/model"


class MlflowHttp:
    """Raw HTTP to the MLflow endpoints as one caller (the Django test client underneath)."""

    def __init__(self, client: Client, authorization: str | None, prefix: str = MLFLOW) -> None:
        self.client = client
        self.prefix = prefix
        self.headers: dict[str, str] = {"HTTP_USER_AGENT": USER_AGENT}
        if authorization:
            self.headers["HTTP_AUTHORIZATION"] = authorization

    def get(self, path: str, params: Any = None) -> Any:
        return self.client.get(self.prefix + path, params or {}, **self.headers)

    def send(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body if body is not None else {})
        call = getattr(self.client, method.lower())
        return call(self.prefix + path, data, content_type="application/json", **self.headers)

    def post(self, path: str, body: Any = None) -> Any:
        return self.send("POST", path, body)

    def patch(self, path: str, body: Any = None) -> Any:
        return self.send("PATCH", path, body)

    def delete(self, path: str, body: Any = None) -> Any:
        return self.send("DELETE", path, body)


def token_of(user: User, scope: str = TokenScope.WRITE) -> str:
    _, plaintext = token_create(user=user, name="mlflow", scope=scope)
    return plaintext


def bearer_header(token: str) -> str:
    return f"Bearer {token}"


def basic_header(username: str, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def grant(user: User, model: RegisteredModel, role: str) -> None:
    access.set_role(user, model, role)


@pytest.fixture
def owner(alice: User) -> User:
    return alice


@pytest.fixture
def editor(db: Any) -> User:
    return make_user("bob")


@pytest.fixture
def viewer(db: Any) -> User:
    return make_user("carol")


@pytest.fixture
def approver(db: Any) -> User:
    return make_user("erin")


@pytest.fixture
def ml_model(owner: User, editor: User, viewer: User, approver: User) -> RegisteredModel:
    model = model_create(actor=owner, name="fraud-detector", description="Flags fraud.")
    grant(editor, model, "editor")
    grant(viewer, model, "viewer")
    for stage in Stage.objects.filter(model=model):
        set_approver(approver, stage, True)
    # External (MLflow-source) versions may be promoted: the owner accepts unverified files.
    StagePolicy.objects.filter(stage__model=model).update(requires_verified_files=False)
    return model


@pytest.fixture
def as_owner(client: Client, owner: User) -> MlflowHttp:
    return MlflowHttp(client, bearer_header(token_of(owner)))


@pytest.fixture
def as_editor(client: Client, editor: User) -> MlflowHttp:
    return MlflowHttp(client, bearer_header(token_of(editor)))


@pytest.fixture
def as_viewer(client: Client, viewer: User) -> MlflowHttp:
    return MlflowHttp(client, bearer_header(token_of(viewer)))


@pytest.fixture
def as_outsider(client: Client, outsider: User) -> MlflowHttp:
    return MlflowHttp(client, bearer_header(token_of(outsider)))


@pytest.fixture
def as_read_only(client: Client, owner: User) -> MlflowHttp:
    return MlflowHttp(client, bearer_header(token_of(owner, TokenScope.READ)))


# --- Assertions and shortcuts shared by the raw-HTTP tests -------------------------------------


def assert_proto_exact(body: dict[str, Any], message: Any) -> None:
    """`body` is what MLflow's own server would write for the same message: parsing it into
    the proto (unknown fields dropped) and writing it back gives the same JSON."""
    parse_dict(body, message)
    assert json.loads(message_to_json(message)) == body


def assert_error(response: Any, status: int, code: str, message: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] == code
    if message is not None:
        assert re.fullmatch(message, body["message"]), body["message"]
    return body


def create_version(http: MlflowHttp, **extra: Any) -> dict:
    body = {"name": "fraud-detector", "source": S3, **extra}
    response = http.post("/model-versions/create", body)
    assert response.status_code == 200, response.content
    return response.json()["model_version"]


def mlflow_events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def create_raw(http: MlflowHttp, **extra: Any) -> Any:
    return http.post("/model-versions/create", {"name": "fraud-detector", "source": S3, **extra})
