"""The Argo CD receiver of docs/INTEGRATIONS.md, run as printed (with a fake `argocd` on
PATH that records its arguments), receiving real signed deliveries from Regent.
"""

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from apps.approvals.models import Stage
from apps.approvals.services import stage_assign
from apps.audit.models import DeliveryStatus, WebhookDelivery
from apps.audit.webhook_delivery import webhook_deliver
from apps.registry.models import ModelVersion, VersionStatus
from tests.webhooks.conftest import docs_block, make_webhook

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("allow_private")]

FAKE_ARGOCD = '#!/bin/sh\necho "$@" >> "$ARGOCD_LOG"\n'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the receiver never listened on {port}")


@pytest.fixture
def argo(owner, ml_model, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The documented receiver on a free port, registered as a webhook of `ml_model`."""
    port = free_port()
    webhook, secret = make_webhook(
        owner, f"http://127.0.0.1:{port}/", ["stage.changed", "stage.rolled_back"], ml_model
    )
    (tmp_path / "verify_webhook.py").write_text(docs_block("# verify_webhook.py", "python"))
    receiver = tmp_path / "regent_argo_receiver.py"
    receiver.write_text(docs_block("# regent_argo_receiver.py", "python"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "argocd").write_text(FAKE_ARGOCD)
    (bin_dir / "argocd").chmod(0o755)
    log = tmp_path / "argocd.log"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "ARGOCD_LOG": str(log),
        "REGENT_WEBHOOK_SECRET": secret,
        "ARGO_APP": "fraud-prod",
        "MODEL": ml_model.name,
        "STAGE": "production",
        "PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, str(receiver)], cwd=tmp_path, env=env, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield {"port": port, "log": log, "webhook": webhook}
    finally:
        process.terminate()
        process.wait(timeout=10)


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def move_stage(model: Any, owner: Any, stage_name: str, number: int) -> None:
    model.last_version_number = number
    model.save(update_fields=["last_version_number"])
    version = ModelVersion.objects.create(
        model=model,
        number=number,
        status=VersionStatus.READY,
        created_by=owner,
        verified_at=timezone.now(),
    )
    with transaction.atomic():
        stage_assign(
            stage=Stage.objects.get(model=model, name=stage_name), version=version, actor=owner
        )


def deliver_all() -> list[WebhookDelivery]:
    for delivery in WebhookDelivery.objects.order_by("pk"):
        webhook_deliver(delivery.pk)
    return list(WebhookDelivery.objects.order_by("pk"))


def test_a_production_change_sets_the_version_and_syncs(owner, ml_model, argo):
    move_stage(ml_model, owner, "production", 1)
    (delivery,) = deliver_all()
    assert delivery.status == DeliveryStatus.SUCCEEDED, delivery.last_error
    assert delivery.response_code == 204
    assert calls(argo["log"]) == [
        "app set fraud-prod --helm-set-string modelVersion=1",
        "app sync fraud-prod --async",
    ]


def test_other_stages_are_ignored(owner, ml_model, argo):
    move_stage(ml_model, owner, "staging", 1)
    (delivery,) = deliver_all()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert calls(argo["log"]) == []


def test_a_forged_request_is_refused(argo):
    request = urllib.request.Request(
        f"http://127.0.0.1:{argo['port']}/",
        data=b'{"type": "stage.changed", "data": {"model": "fraud-detector", '
        b'"stage": "production", "version": 666}}',
        headers={
            "webhook-id": "evt_1",
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": "v1,bm90IGEgc2lnbmF0dXJl",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401
    assert calls(argo["log"]) == []
