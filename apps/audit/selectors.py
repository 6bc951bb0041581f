"""Reads of the audit log."""

from collections.abc import Iterator
from typing import Any

from apps.audit.chain import CHAINED_FIELDS, ChainReport, verify_rows
from apps.audit.models import AuditEvent


def chain_rows(chunk_size: int = 5000) -> Iterator[dict[str, Any]]:
    """Every event in chain order, as plain dicts, streamed from the database."""
    columns = ("id", "prev_hash", "hash", *CHAINED_FIELDS)
    return AuditEvent.objects.order_by("id").values(*columns).iterator(chunk_size=chunk_size)


def audit_verify_chain() -> ChainReport:
    return verify_rows(chain_rows())
