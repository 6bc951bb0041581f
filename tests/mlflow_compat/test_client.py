"""The stock MLflow client (mlflow-skinny, unchanged) against a live Regent on loopback.

The client is configured the way a training script is: `MlflowClient(registry_uri=…)` with
MLFLOW_TRACKING_TOKEN (a Regent API token) or MLFLOW_TRACKING_USERNAME/PASSWORD.
"""

import re
import threading
import time
import warnings
from collections.abc import Iterator

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.rest_utils import MlflowHostCreds
from mlflow.utils.server_info import fetch_server_info

from apps.accounts.models import TokenScope
from apps.approvals.models import PromotionRequest, PromotionStatus, StagePolicy
from apps.audit.models import AuditEvent
from apps.mlflow_compat.models import ModelAlias
from apps.registry.models import ModelVersion, RegisteredModel
from apps.registry.services import model_create
from tests.conftest import PASSWORD
from tests.mlflow_compat.conftest import token_of

pytestmark = pytest.mark.django_db(transaction=True)

S3 = "s3://bucket/run/model"


@pytest.fixture(autouse=True)
def offline_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """No telemetry, no retries worth waiting for, no credentials from the environment."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    warnings.filterwarnings("ignore", category=FutureWarning)  # stages are deprecated in MLflow


@pytest.fixture
def connect(live_server, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """A client acting with `token` (Bearer) or `username` + `password` (Basic).

    The client reads these variables on every request, as a training script's does: use
    one client at a time (the last one connected sets the credentials).
    """
    monkeypatch.setattr(requests.Session, "request", _closing_request)

    def client_for(token: str | None = None, username: str | None = None) -> MlflowClient:
        if token:
            monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
        if username:
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        return MlflowClient(registry_uri=live_server.url, tracking_uri=live_server.url)

    yield client_for
    _wait_for_request_threads()


_session_request = requests.Session.request


def _closing_request(self: requests.Session, *args: object, **kwargs: object) -> object:
    """Each client request on its own connection, which the server closes after answering.

    live_server serves each connection in a thread that holds a database connection until
    the socket closes; pooled keep-alive sockets would keep them open, and the test database
    could not be flushed. `Connection: close` makes the server hang up; closing the session
    keeps the client from reusing a socket the server has closed.
    """
    headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
    headers["Connection"] = "close"
    try:
        return _session_request(self, *args, headers=headers, **kwargs)
    finally:
        self.close()


def _wait_for_request_threads(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        "process_request_thread" in thread.name for thread in threading.enumerate()
    ):
        time.sleep(0.02)


@pytest.fixture
def editor_client(connect, ml_model, editor) -> MlflowClient:
    return connect(token=token_of(editor))


def error_code(raised: pytest.ExceptionInfo) -> str:
    return raised.value.error_code


def test_register_and_read_back(connect, owner):
    client = connect(token=token_of(owner))
    model = client.create_registered_model("churn", tags={"team": "growth"}, description="Churn.")
    assert (model.name, model.description, model.tags) == ("churn", "Churn.", {"team": "growth"})
    version = client.create_model_version("churn", S3, run_id="0a1b2c", tags={"k": "v"})
    # The client waits for READY the way it always does; a source-only version is ready at once.
    assert (version.version, version.status, version.current_stage) == ("1", "READY", "None")
    assert (version.source, version.run_id, version.user_id) == (S3, "0a1b2c", "alice")
    fetched = client.get_model_version("churn", "1")
    assert fetched.tags == {"k": "v"} and fetched.creation_timestamp == version.creation_timestamp
    assert client.get_model_version_download_uri("churn", "1") == S3
    got = client.get_registered_model("churn")
    assert [v.version for v in got.latest_versions] == ["1"]
    stored = ModelVersion.objects.get(model__name="churn")
    assert stored.external_artifacts and stored.source == {"uri": S3, "run_id": "0a1b2c"}
    events = AuditEvent.objects.filter(
        action__in=["model.created", "version.created", "version.ready"]
    )
    assert events.count() == 3
    for event in events:
        assert event.via == "mlflow" and event.user_agent.startswith("mlflow-python-client/")


def test_search_with_filters_and_paging(connect, owner):
    for name, team in (("alpha", "risk"), ("beta", "risk"), ("gamma", "ops"), ("delta", "risk")):
        model_create(actor=owner, name=name, tags={"team": team})
    client = connect(token=token_of(owner))
    first = client.search_registered_models(filter_string="tags.team = 'risk'", max_results=2)
    assert [m.name for m in first] == ["alpha", "beta"] and first.token
    second = client.search_registered_models(
        filter_string="tags.team = 'risk'", max_results=2, page_token=first.token
    )
    assert [m.name for m in second] == ["delta"] and not second.token
    assert [m.name for m in client.search_registered_models("name LIKE '%ta'")] == ["beta", "delta"]
    for run in ("r1", "r2", "r3"):
        client.create_model_version("alpha", S3, run_id=run)
    found = client.search_model_versions("name = 'alpha' AND version_number >= 2")
    assert sorted(v.version for v in found) == ["2", "3"]
    assert [v.version for v in client.search_model_versions("run_id IN ('r1')")] == ["1"]
    with pytest.raises(MlflowException) as raised:
        client.search_registered_models("name = 'a' OR 1=1")
    assert error_code(raised) == "INVALID_PARAMETER_VALUE"


def test_tags_set_and_delete(editor_client, ml_model):
    editor_client.create_model_version("fraud-detector", S3)
    editor_client.set_registered_model_tag("fraud-detector", "team", "risk")
    editor_client.set_model_version_tag("fraud-detector", "1", "validated", "yes")
    assert editor_client.get_registered_model("fraud-detector").tags == {"team": "risk"}
    assert editor_client.get_model_version("fraud-detector", "1").tags == {"validated": "yes"}
    editor_client.delete_registered_model_tag("fraud-detector", "team")
    editor_client.delete_model_version_tag("fraud-detector", "1", "validated")
    assert editor_client.get_registered_model("fraud-detector").tags == {}
    assert editor_client.get_model_version("fraud-detector", "1").tags == {}
    editor_client.update_registered_model("fraud-detector", description="Card fraud.")
    editor_client.update_model_version("fraud-detector", "1", description="First.")
    assert editor_client.get_model_version("fraud-detector", "1").description == "First."


def test_free_alias_champion(editor_client, ml_model):
    for _ in range(2):
        editor_client.create_model_version("fraud-detector", S3)
    editor_client.set_registered_model_alias("fraud-detector", "champion", "2")
    assert editor_client.get_model_version_by_alias("fraud-detector", "champion").version == "2"
    assert editor_client.get_registered_model("fraud-detector").aliases == {"champion": "2"}
    assert editor_client.get_model_version("fraud-detector", "2").aliases == ["champion"]
    editor_client.delete_registered_model_alias("fraud-detector", "champion")
    with pytest.raises(MlflowException) as raised:
        editor_client.get_model_version_by_alias("fraud-detector", "champion")
    assert error_code(raised) == "RESOURCE_DOES_NOT_EXIST"
    assert not ModelAlias.objects.exists()
    assert (
        AuditEvent.objects.filter(action__in=["alias.set", "alias.deleted"], via="mlflow").count()
        == 2
    )


def test_protected_alias_production_opens_a_promotion_request(editor_client, ml_model, editor):
    editor_client.create_model_version("fraud-detector", S3)
    with pytest.raises(MlflowException) as raised:
        editor_client.set_registered_model_alias("fraud-detector", "production", "1")
    assert error_code(raised) == "PERMISSION_DENIED"
    promotion = PromotionRequest.objects.get()
    assert (promotion.stage.name, promotion.version.number) == ("production", 1)
    assert promotion.status == PromotionStatus.PENDING and promotion.requested_by == editor
    assert f"promotion request #{promotion.pk} opened; it needs 2 approvals" in raised.value.message
    assert re.search(rf"review at http://testserver/reviews/{promotion.pk}/", raised.value.message)


def test_transition_stage_to_staging_needs_an_approval(editor_client, ml_model):
    editor_client.create_model_version("fraud-detector", S3)
    with pytest.raises(MlflowException) as raised:
        editor_client.transition_model_version_stage("fraud-detector", "1", "Staging")
    assert error_code(raised) == "PERMISSION_DENIED"
    assert "it needs 1 approval" in raised.value.message
    assert PromotionRequest.objects.get().stage.name == "staging"
    # A stage whose policy needs no approval moves at once, as in MLflow.
    StagePolicy.objects.filter(stage__model=ml_model, stage__name="production").update(
        required_approvals=0
    )
    moved = editor_client.transition_model_version_stage("fraud-detector", "1", "Production")
    assert moved.current_stage == "Production"
    [latest] = editor_client.get_latest_versions("fraud-detector", stages=["Production"])
    assert latest.version == "1"


def test_delete_archives_and_hides(connect, ml_model, owner):
    client = connect(token=token_of(owner))
    client.create_model_version("fraud-detector", S3)
    with pytest.raises(MlflowException) as raised:
        client.delete_model_version("fraud-detector", "1")
    assert error_code(raised) == "PERMISSION_DENIED"
    client.delete_registered_model("fraud-detector")
    assert RegisteredModel.objects.get(name="fraud-detector").is_archived
    with pytest.raises(MlflowException) as raised:
        client.get_registered_model("fraud-detector")
    assert error_code(raised) == "RESOURCE_DOES_NOT_EXIST"
    assert ModelVersion.objects.count() == 1


def test_missing_and_duplicate_objects(editor_client, ml_model):
    with pytest.raises(MlflowException) as raised:
        editor_client.get_registered_model("no-such-model")
    assert error_code(raised) == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as raised:
        editor_client.get_model_version("fraud-detector", "42")
    assert error_code(raised) == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as raised:
        editor_client.create_registered_model("fraud-detector")
    assert error_code(raised) == "RESOURCE_ALREADY_EXISTS"
    with pytest.raises(MlflowException) as raised:
        editor_client.create_model_version("fraud-detector", "file:///etc/passwd")
    assert error_code(raised) == "INVALID_PARAMETER_VALUE"


def test_an_outsider_sees_nothing_and_a_reader_writes_nothing(
    connect, ml_model, outsider, owner, viewer
):
    """Not visible: RESOURCE_DOES_NOT_EXIST, as for a missing model. Visible but not
    allowed (a viewer, or a read-only token): PERMISSION_DENIED."""
    hidden = connect(token=token_of(outsider))
    with pytest.raises(MlflowException) as raised:
        hidden.get_registered_model("fraud-detector")
    assert error_code(raised) == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as raised:
        hidden.create_model_version("fraud-detector", S3)
    assert error_code(raised) == "RESOURCE_DOES_NOT_EXIST"
    assert list(hidden.search_registered_models()) == []
    as_viewer = connect(token=token_of(viewer))
    assert as_viewer.get_registered_model("fraud-detector").name == "fraud-detector"
    with pytest.raises(MlflowException) as raised:
        as_viewer.set_registered_model_tag("fraud-detector", "team", "risk")
    assert error_code(raised) == "PERMISSION_DENIED"
    reader = connect(token=token_of(owner, TokenScope.READ))
    assert reader.get_registered_model("fraud-detector").name == "fraud-detector"
    with pytest.raises(MlflowException) as raised:
        reader.create_model_version("fraud-detector", S3)
    assert error_code(raised) == "PERMISSION_DENIED"
    assert not ModelVersion.objects.exists()


def test_basic_auth_with_username_and_password(connect, ml_model):
    client = connect(username="bob")
    version = client.create_model_version("fraud-detector", S3)
    assert version.user_id == "bob"


def test_no_credentials_is_unauthenticated(connect, ml_model):
    with pytest.raises(MlflowException) as raised:
        connect().get_registered_model("fraud-detector")
    assert error_code(raised) == "UNAUTHENTICATED"


@pytest.fixture(autouse=True)
def _no_outbound_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if anything tries to reach beyond loopback."""
    import socket

    real_connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        local = ("127.0.0.1", "::1", "localhost")
        # A str that starts with "/" is a unix socket path: local too.
        if isinstance(host, str) and host not in local and not host.startswith("/"):
            raise AssertionError(f"outbound connection to {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    yield


def test_the_stock_client_reads_server_info_without_credentials(live_server):
    info = fetch_server_info(MlflowHostCreds(host=live_server.url))

    assert info.status_code == 200
    assert info.data["multipart_uploads_enabled"] is False
    assert info.data["workspaces_enabled"] is False
