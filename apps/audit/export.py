"""The audit export: CSV for people, JSON Lines for verifiers, streamed in constant memory.

Rows come from keyset pages of 500 (`id > last`) and leave in blocks of about 64 KB, so
a million events never sit in memory at once.

- JSONL is exact: one object per line with `id`, every chained field exactly as hashed
  (`at` in the chain's canonical UTC form), `prev_hash` and `hash`. ASCII-only output
  (`\\u` escapes), so control characters can never reach a terminal or an editor raw.
  `docs/AUDIT.md` has the script that re-verifies it offline.
- CSV is for spreadsheets: invisible and control characters are spelled out (`\\x1b`) and a
  cell starting with `=`, `+`, `-`, `@`, tab or CR gets a leading `'` so no spreadsheet
  evaluates it as a formula (CWE-1236). `changes` is one JSON cell.
"""

import csv
import io
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from django.db.models import QuerySet

from apps.audit.chain import CHAINED_FIELDS
from apps.audit.chain import _timestamp as chain_timestamp
from apps.audit.display import printable
from apps.audit.models import AuditEvent

CHUNK_ROWS = 500
BLOCK_BYTES = 64 * 1024
COLUMNS = ("id", *CHAINED_FIELDS, "prev_hash", "hash")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
FORMATS = {
    "csv": ("text/csv; charset=utf-8", "csv"),
    "jsonl": ("application/x-ndjson; charset=utf-8", "jsonl"),
}


def export_rows(events: QuerySet[AuditEvent]) -> Iterator[dict[str, Any]]:
    """`events` in chain order (oldest first) as plain dicts, a keyset page at a time.

    Not a server-side cursor: outside a transaction Django declares it WITH HOLD, and
    PostgreSQL then materialises the whole result before the first row leaves.
    """
    rows = events.order_by("id").values(*COLUMNS)
    last_id = 0
    while True:
        batch = list(rows.filter(id__gt=last_id)[:CHUNK_ROWS])
        if not batch:
            return
        yield from batch
        last_id = batch[-1]["id"]


def export_filename(export_format: str, now: datetime) -> str:
    extension = FORMATS[export_format][1]
    return f"regent-audit-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}.{extension}"


def _blocks(pieces: Iterable[str]) -> Iterator[bytes]:
    """Join small strings into blocks of about BLOCK_BYTES (fewer, larger writes)."""
    buffer: list[str] = []
    size = 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if size >= BLOCK_BYTES:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode()


# --- JSON Lines ------------------------------------------------------------------------------


def jsonl_line(row: dict[str, Any]) -> str:
    """One event as one line of JSON, every field exactly as the chain hashed it."""
    record = {**row, "at": chain_timestamp(row["at"])}
    return json.dumps(record, ensure_ascii=True, allow_nan=False, separators=(",", ":")) + "\n"


def jsonl_stream(rows: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    return _blocks(jsonl_line(row) for row in rows)


# --- CSV -------------------------------------------------------------------------------------


def neutralise(cell: str) -> str:
    """A spreadsheet-safe cell: formula-like text gets a leading apostrophe."""
    return f"'{cell}" if cell.startswith(FORMULA_PREFIXES) else cell


def _csv_cell(name: str, value: Any) -> Any:
    if value is None:
        return ""
    if name == "at":
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if name == "changes":
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, str):
        return printable(neutralise(value))
    return value


def csv_stream(rows: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """The header, then one line per event (a header alone when nothing matched).

    One writer over one buffer, emptied every BLOCK_BYTES: no per-row objects to build.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(name, row[name]) for name in COLUMNS])
        if buffer.tell() >= BLOCK_BYTES:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def stream(export_format: str, rows: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    return csv_stream(rows) if export_format == "csv" else jsonl_stream(rows)
