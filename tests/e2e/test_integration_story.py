"""The integration story of the issue's "Done when", end to end with real parts.

"A training script written for MLflow registers a version in Regent by changing only the
registry URI and a token, the version waits for verification, the request for production
shows up for reviewers, and on approval a signed webhook reaches the deploy hook, which
fetches and verifies the manifest."

Real parts: the stock MLflow client (mlflow-skinny, unchanged) and plain HTTP against
`live_server`; a real `celery worker` subprocess (Redis broker, the test database) that
verifies the version's files and sends the webhook; a deploy hook that is a real HTTP server
on 127.0.0.1 checking the signature with the function printed in docs/INTEGRATIONS.md, then
downloading the stage manifest's files with a read-only token and checking every SHA-256.
Only the queue name is redirected, to the test worker's.

Personas: bob, an ML engineer, registers "churn" through MLflow (so he owns it), names erin
and frank production approvers and registers the deploy hook; erin approves through the REST
API, frank on the web (the service, via="web").

The training script points MLFLOW_TRACKING_URI at Regent: the run, its params and metrics
and `log_artifacts`' files go to Regent's tracking staging area, and `register_model` makes a
version that waits while the worker copies those files in and verifies them.
"""

import hashlib
import json
import threading
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import mlflow
import pytest
import requests
from django.test import Client
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from apps.accounts.models import TokenScope
from apps.accounts.services import role_grant, token_create
from apps.approvals import tasks as approval_tasks
from apps.approvals.models import PromotionRequest, PromotionStatus, Stage
from apps.approvals.selectors import inbox
from apps.approvals.services import approver_set, promotion_approve
from apps.audit import tasks as audit_tasks
from apps.audit.context import Via
from apps.mlflow_compat import tasks as mlflow_tasks
from apps.registry import tasks as registry_tasks
from apps.registry.models import ModelVersion, RegisteredModel, VersionStatus
from tests.conftest import make_user
from tests.e2e.conftest import CeleryWorker, wait_until
from tests.mlflow_compat.test_client import _closing_request, _wait_for_request_threads
from tests.webhooks.conftest import docs_block

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

MODEL = "churn"
# An MLflow model directory, as `mlflow.sklearn.save_model` writes it.
FILES = {
    "MLmodel": b"artifact_path: model\nflavors:\n  sklearn:\n    pickled_model: model.pkl\n",
    "model.pkl": b"\x80\x04\x95churn-gbt\x00" * 4096,
    "requirements.txt": b"scikit-learn==1.5.2\n",
}
PENDING = "PENDING_REGISTRATION"
# Tasks the code under test publishes with `.delay`: each goes to the test worker's queue.
DELAYED_TASKS = (
    mlflow_tasks.import_staged_files_task,
    registry_tasks.version_verify_task,
    approval_tasks.notify_approvers_task,
    approval_tasks.notify_decision_task,
)
TIMEOUT = 30.0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- The deploy hook --------------------------------------------------------------------------


@dataclass
class DeployHook:
    """A receiver for `stage.changed`: signature check, then manifest download and check.

    `secret` is set once the webhook is registered; `deployed` lists what was fetched and
    verified (one dict per delivery), `refused` the requests whose signature failed,
    `errors` what went wrong after a valid signature (answered 500).
    """

    read_token: str
    verify_webhook: Callable[..., bool]
    secret: str = ""
    deployed: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/regent"

    def get(self, url: str) -> bytes:
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {self.read_token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # Connection: close
            return response.read()

    def deploy(self, headers: Any, data: dict[str, Any]) -> dict[str, Any]:
        """Fetch the manifest the event names; download and check every file."""
        manifest = json.loads(self.get(data["manifest_url"]))
        if manifest["version"] != data["version"]:
            raise ValueError(f"manifest holds v{manifest['version']}, event says {data}")
        digests = {}
        for entry in manifest["files"]:
            body = self.get(entry["url"])
            if len(body) != entry["size"] or sha256(body) != entry["sha256"]:
                raise ValueError(f"{entry['path']} differs from its verified digest")
            digests[entry["path"]] = sha256(body)
        return {
            "webhook_id": headers["webhook-id"],
            "version": manifest["version"],
            "files": digests,
        }


def _deploy_handler(hook: DeployHook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status = 200
            # The raw bytes, before parsing: exactly as docs/INTEGRATIONS.md says.
            if not hook.verify_webhook(hook.secret, self.headers, body):
                hook.refused.append(self.headers.get("webhook-id", ""))
                status = 401
            else:
                event = json.loads(body)
                data = event["data"]
                if event["type"] == "stage.changed" and (data["model"], data["stage"]) == (
                    MODEL,
                    "production",
                ):
                    try:
                        hook.deployed.append(hook.deploy(self.headers, data))
                    except Exception as error:  # reported to Regent as a failed attempt
                        hook.errors.append(repr(error))
                        status = 500
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def deploy_hook_factory() -> Iterator[Callable[[str], DeployHook]]:
    """`deploy_hook_factory(read_token)`: a started deploy hook on 127.0.0.1."""
    namespace: dict[str, Any] = {}
    exec(docs_block("# verify_webhook.py", "python"), namespace)  # the docs' function, verbatim
    servers: list[ThreadingHTTPServer] = []

    def start(read_token: str) -> DeployHook:
        hook = DeployHook(read_token=read_token, verify_webhook=namespace["verify_webhook"])
        hook.server = ThreadingHTTPServer(("127.0.0.1", 0), _deploy_handler(hook))
        hook.server.daemon_threads = True
        threading.Thread(target=hook.server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(hook.server)
        return hook

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# --- The worker, MLflow and HTTP ----------------------------------------------------------------


@pytest.fixture
def worker(
    celery_worker_factory: Callable[..., CeleryWorker],
    live_server: Any,
    settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> CeleryWorker:
    """A worker sharing this process's artifact root and allowed to call 127.0.0.1; from now
    on verification, approval emails and webhook deliveries go to its queue."""
    settings.REGENT_WEBHOOK_ALLOW_PRIVATE = True
    settings.REGENT_BASE_URL = live_server.url
    root = tmp_path / "artifacts"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root)},
        },
    }
    started = celery_worker_factory(
        extra_env={
            "REGENT_ARTIFACTS": str(root),
            "REGENT_WEBHOOK_ALLOW_PRIVATE": "1",
            "REGENT_BASE_URL": live_server.url,
        }
    )
    for task in DELAYED_TASKS:
        monkeypatch.setattr(task, "delay", _to_queue(task, started.queue))
    # Deliveries are published with apply_async (a countdown on retries): keep it, add the queue.
    publish = audit_tasks.deliver_webhook_task.apply_async
    monkeypatch.setattr(
        audit_tasks.deliver_webhook_task,
        "apply_async",
        lambda args, **options: publish(args, **{**options, "queue": started.queue}),
    )
    return started


def _to_queue(task: Any, queue: str) -> Callable[..., None]:
    def delay(*args: Any) -> None:
        task.apply_async(args, queue=queue)

    return delay


@pytest.fixture
def mlflow_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A training script's environment: no telemetry, no retries, one connection per call
    (live_server's threads hold a database connection while a socket stays open)."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(requests.Session, "request", _closing_request)
    warnings.filterwarnings("ignore", category=FutureWarning)  # stages are deprecated in MLflow
    yield
    _wait_for_request_threads()


def rest(base: str, method: str, path: str, token: str, **kwargs: Any) -> requests.Response:
    """One call to Regent's REST API (requests.Session.request is the closing one here)."""
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return requests.request(method, f"{base}/api/v1{path}", headers=headers, timeout=30, **kwargs)


def plaintext_token(user: Any, scope: str, name: str) -> str:
    _, plaintext = token_create(user=user, name=name, scope=scope)
    return plaintext


# --- The story --------------------------------------------------------------------------------


def test_mlflow_registration_to_a_verified_deploy(
    live_server, worker, mlflow_env, deploy_hook_factory, monkeypatch, tmp_path
):
    base = live_server.url
    bob, erin, frank = (make_user(name) for name in ("bob", "erin", "frank"))
    bob_write = plaintext_token(bob, TokenScope.WRITE, "training")
    bob_read = plaintext_token(bob, TokenScope.READ, "deploy-hook")
    erin_write = plaintext_token(erin, TokenScope.WRITE, "reviews")

    # 1. The training script: MLflow's own API, pointed at Regent by a URI and a token. It
    # logs a run with the model's files, then registers the version from the run.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", base)  # the registry URI follows it
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", bob_write)
    client = MlflowClient()
    registered = client.create_registered_model(
        MODEL, tags={"team": "growth"}, description="Monthly churn risk."
    )
    assert (registered.name, registered.tags) == (MODEL, {"team": "growth"})
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for path, data in FILES.items():
        (model_dir / path).write_bytes(data)
    with mlflow.start_run(run_name="churn-gbt") as run:
        mlflow.log_params({"n_estimators": 300, "max_depth": 6})
        mlflow.log_metric("auc", 0.91)
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        result = mlflow.register_model(
            f"runs:/{run.info.run_id}/model", MODEL, await_registration_for=0
        )
    number = result.version
    assert (result.status, result.run_id, result.user_id) == (PENDING, run.info.run_id, "bob")
    assert "Copying 3 files" in result.status_message

    # The version waits for verification, which the worker does; the script waits the way
    # MLflow's client does after create_model_version: get_model_version until not pending.
    seen: list[str] = []

    def settled() -> Any:
        current = client.get_model_version(MODEL, number)
        seen.append(current.status)
        return current if current.status != PENDING else None

    ready = wait_until(settled, timeout=TIMEOUT, interval=0.25)
    assert ready.status == "READY", ready.status_message
    version = ModelVersion.objects.get(model__name=MODEL, number=int(number))
    assert version.status == VersionStatus.READY and not version.external_artifacts
    assert "import_staged_files_task" in worker.log()
    assert "version_verify_task" in worker.log()
    assert (version.metrics, version.params) == (
        {"auc": 0.91},
        {"n_estimators": "300", "max_depth": "6"},
    )
    assert {artifact.path: artifact.sha256 for artifact in version.files.all()} == {
        path: sha256(data) for path, data in FILES.items()
    }
    assert client.get_model_version_download_uri(MODEL, number) == (
        f"{base}/api/2.0/mlflow-artifacts/artifacts/registry/{MODEL}/{number}"
    )

    # 2. bob owns what he registered: he names the approvers and registers the deploy hook.
    model = RegisteredModel.objects.get(name=MODEL)
    production = Stage.objects.get(model=model, name="production")
    for approver in (erin, frank):
        role_grant(actor=bob, model=model, role="viewer", user=approver)
        approver_set(actor=bob, stage=production, principal=approver, approve=True)
    hook = deploy_hook_factory(bob_read)
    registered_hook = rest(
        base,
        "POST",
        "/webhooks",
        bob_write,
        json={
            "url": hook.url,
            "model": MODEL,
            "events": ["stage.changed"],
            "description": "Deploy hook",
        },
    )
    assert registered_hook.status_code == 201, registered_hook.text
    webhook_id = registered_hook.json()["id"]
    hook.secret = registered_hook.json()["secret"]

    # 3. Production is a protected alias: asking opens a promotion request for reviewers.
    with pytest.raises(MlflowException) as refused:
        client.set_registered_model_alias(MODEL, "production", number)
    promotion = PromotionRequest.objects.get(version=version, stage=production)
    assert refused.value.error_code == "PERMISSION_DENIED"
    message = refused.value.message
    assert f"promotion request #{promotion.pk} opened; it needs 2 approvals" in message
    assert f"review at {base}/reviews/{promotion.pk}/" in message
    assert (promotion.status, promotion.requested_by) == (PromotionStatus.PENDING, bob)
    with pytest.raises(MlflowException) as again:  # a retrying script: the same request
        client.transition_model_version_stage(MODEL, number, "Production")
    assert f"promotion request #{promotion.pk} opened" in again.value.message
    for approver in (erin, frank):
        assert list(inbox(approver)["waiting"]) == [promotion]
    web = Client()
    web.force_login(erin)
    reviews = web.get("/reviews/")
    assert reviews.status_code == 200
    assert f"/reviews/{promotion.pk}/" in reviews.content.decode()
    assert client.get_latest_versions(MODEL, ["Production"]) == []
    assert hook.deployed == hook.refused == []

    # 4. Two approvals: erin through the REST API, frank on the web; the stage moves.
    approved = rest(base, "POST", f"/promotions/{promotion.pk}/approve", erin_write, json={})
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == PromotionStatus.PENDING
    promotion_approve(promotion=promotion, reviewer=frank, comment="Ship it.", via=Via.WEB)
    production.refresh_from_db()
    assert production.current_version_id == version.pk
    held = client.get_model_version_by_alias(MODEL, "production")
    assert (held.version, held.current_stage) == (number, "Production")

    # 5. The worker sends the signed webhook; the deploy hook checks the signature, fetches
    # the manifest with a read-only token and verifies every file it downloads.
    deployed = wait_until(lambda: hook.deployed or hook.errors or hook.refused, timeout=TIMEOUT)
    assert (hook.errors, hook.refused) == ([], [])
    assert deployed == [
        {
            "webhook_id": deployed[0]["webhook_id"],
            "version": int(number),
            "files": {path: sha256(data) for path, data in FILES.items()},
        }
    ]
    assert deployed[0]["webhook_id"].startswith("evt_")

    def delivered() -> Any:
        log = rest(base, "GET", f"/webhooks/{webhook_id}/deliveries", bob_read).json()
        items = log["items"]
        return items if items and items[0]["status"] != "delivering" else None

    (delivery,) = wait_until(delivered, timeout=TIMEOUT)
    assert delivery["status"] == "succeeded", delivery["last_error"]
    assert (delivery["response_code"], delivery["attempts"]) == (200, 1)
    assert delivery["event_type"] == "stage.changed"
    assert f"evt_{delivery['event_id']}" == deployed[0]["webhook_id"]
    assert delivery["payload"]["data"]["manifest_url"] == (
        f"{base}/api/v1/models/{MODEL}/stages/production/manifest"
    )
    assert "deliver_webhook_task" in worker.log()
