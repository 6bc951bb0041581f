"""Background work for the audit log."""

import logging

from celery import shared_task

from apps.audit.selectors import audit_verify_chain
from apps.audit.services import audit_check_record

logger = logging.getLogger(__name__)


@shared_task(acks_late=True)
def audit_verify_task() -> bool:
    """The daily chain check: recompute the hash chain and remember the result.

    Safe to run twice or late: it only reads the chain and adds one `AuditCheck` row.
    """
    report = audit_verify_chain()
    audit_check_record(report)
    if not report.ok:
        logger.error(
            "Audit chain BROKEN at %s (%d events verified before it)",
            report.message,
            report.events_checked,
        )
    return report.ok
