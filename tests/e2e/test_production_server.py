"""The production web server (`python -m registry_site.serve`, granian) serving Regent for real.

Started as docs/OPERATIONS.md says, on the test database; driven with `http.client`.
"""

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.registry.models import Artifact
from tests.e2e.conftest import REPO_ROOT, free_port, wait_until, worker_environment

# Would reach Django as a request header if the server's copy of the process environment
# were passed on (granian starts every WSGI environ from os.environ).
ENV_CANARY = "canary-from-the-process-environment"


class Server:
    def __init__(self, port: int, process: subprocess.Popen, log_path: Path) -> None:
        self.port, self.process, self.log_path = port, process, log_path

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            conn = self.connection()
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False


@pytest.fixture
def server(transactional_db: None, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    log_path = tmp_path / "regent-web.log"
    env = worker_environment(
        {"PORT": str(port), "WEB_HOST": "127.0.0.1", "HTTP_X_REQUEST_ID": ENV_CANARY}
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "registry_site.serve"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = Server(port, process, log_path)
    try:
        wait_until(running.answers, timeout=30)
        yield running
    finally:
        process.terminate()
        process.wait(timeout=30)


def call(
    conn: http.client.HTTPConnection, method: str, path: str, token: str, body: object = None
) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def test_probes_answer_with_the_security_headers(server):
    conn = server.connection()
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    assert response.getheader("X-Content-Type-Options") == "nosniff"


def test_the_process_environment_never_reads_as_a_request_header(server):
    conn = server.connection()
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    response.read()
    generated = response.getheader("X-Request-ID")
    assert generated and generated != ENV_CANARY
    # A header the client does send is the client's.
    conn.request("GET", "/healthz", headers={"X-Request-ID": "from-the-client"})
    response = conn.getresponse()
    response.read()
    assert response.getheader("X-Request-ID") == "from-the-client"


def test_mlflow_calls_share_one_kept_alive_connection(server, write_token):
    conn = server.connection()
    create = "/api/2.0/mlflow/registered-models/create"
    status, body = call(conn, "POST", create, write_token, {"name": "kept-alive"})
    assert (status, body["registered_model"]["name"]) == (200, "kept-alive")
    socket_before = conn.sock
    get = "/api/2.0/mlflow/registered-models/get?name=kept-alive"
    status, body = call(conn, "GET", get, write_token)
    assert (status, body["registered_model"]["name"]) == (200, "kept-alive")
    assert conn.sock is socket_before  # the same TCP connection answered both
    status, body = call(conn, "POST", create, write_token, {"name": "kept-alive"})
    assert (status, body["error_code"]) == (400, "RESOURCE_ALREADY_EXISTS")


def test_a_chunked_upload_streams_into_a_version(server, write_token):
    conn = server.connection()
    assert call(conn, "POST", "/api/v1/models", write_token, {"name": "chunked"})[0] == 201
    status, version = call(conn, "POST", "/api/v1/models/chunked/versions", write_token, {})
    assert status == 201
    chunks = [b"a" * 70_000, b"b" * 5, b"c" * 100_000]
    conn.request(
        "PUT",
        f"/api/v1/models/chunked/versions/{version['version']}/files/weights/model.bin",
        body=iter(chunks),
        headers={"Authorization": f"Bearer {write_token}"},
        encode_chunked=True,
    )
    response = conn.getresponse()
    assert response.status == 201, response.read()
    assert json.loads(response.read()) == {"path": "weights/model.bin", "size": 170_005}
    assert Artifact.objects.get(path="weights/model.bin").size == 170_005
