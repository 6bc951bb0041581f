"""The worker fixture runs a real Celery worker on the test database and Redis."""

import pytest

from apps.audit.models import AuditCheck
from apps.audit.services import audit_record
from apps.audit.tasks import audit_verify_task
from tests.e2e.conftest import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_worker_runs_the_audit_chain_check(celery_worker):
    audit_record(actor=None, action="test.worker_probe", changes={"after": {"n": 1}})

    audit_verify_task.apply_async(queue=celery_worker.queue)

    check = wait_until(lambda: AuditCheck.objects.first(), timeout=30)
    assert check.ok, check.message
    assert check.events_checked >= 1
    assert "audit_verify_task" in celery_worker.log()
