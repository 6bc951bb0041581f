"""The hash chain: a canonical form of each event and the digest that links it to the last.

The digest is computed from column values exactly as they read back from the database, so
`verify_chain` can recompute it later. JSON numbers are canonicalised as floats because
PostgreSQL's jsonb does not round-trip every spelling of a number (1e100 reads back as an
integer); strings lose NUL characters, which jsonb cannot store.
"""

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

GENESIS_HASH = "0" * 64

CHAINED_FIELDS = (
    "at",
    "actor_id",
    "actor_name",
    "action",
    "target_type",
    "target_id",
    "target_label",
    "model_id",
    "changes",
    "via",
    "ip",
    "user_agent",
    "request_id",
)


def to_storable_json(value: Any) -> Any:
    """Plain JSON data (no Decimal/datetime/NUL), as it will be stored and read back."""
    plain = json.loads(json.dumps(value, cls=DjangoJSONEncoder, allow_nan=False))
    return _strip_nul(plain)


def _strip_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_strip_nul(item) for item in value]
    if isinstance(value, dict):
        return {_strip_nul(key): _strip_nul(item) for key, item in value.items()}
    return value


def _canonical_numbers(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_canonical_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: _canonical_numbers(item) for key, item in value.items()}
    return value


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_form(fields: dict[str, Any]) -> str:
    """The exact text that is hashed for one event."""
    body = {name: fields[name] for name in CHAINED_FIELDS}
    body["at"] = _timestamp(body["at"])
    body["changes"] = _canonical_numbers(body["changes"])
    return _json(body)


def canonical_form_parts(fields: dict[str, Any], keys: dict[str, bool]) -> list[str]:
    """`canonical_form` cut where the fields named in `keys` go, for the database to fill
    in with a new row's key: the form is these texts joined by each key's digits, in the
    order of the names (sorted), quoted where `keys[name]` (a text field, e.g. target_id).

    Each keyed field is written as a mark holding NUL, which no stored text can hold
    (`to_storable_json` replaces it; PostgreSQL text refuses it), then cut out."""
    form = canonical_form({**fields, **{name: f"\x00{name}\x00" for name in keys}})
    parts = [form]
    for name in sorted(keys):
        mark = _json(f"\x00{name}\x00")
        if keys[name]:
            mark = mark[1:-1]  # a text: its quotes stay in the form, around the digits
        pieces = parts.pop().split(mark)
        if len(pieces) != 2:
            raise ValueError(f"An event's field holds NUL: cannot mark {name} in its form.")
        parts += pieces
    return parts


def event_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    payload = prev_hash + "\n" + canonical_form(fields)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events_checked: int
    head_hash: str
    first_broken_id: int | None = None
    message: str = ""


def verify_rows(rows: Iterable[dict[str, Any]]) -> ChainReport:
    """Walk events in id order; report the first whose link or digest does not hold."""
    expected_prev = GENESIS_HASH
    checked = 0
    for row in rows:
        if row["prev_hash"] != expected_prev:
            return _broken(row["id"], checked, expected_prev, "does not follow the event before it")
        if event_hash(row["prev_hash"], row) != row["hash"]:
            return _broken(row["id"], checked, expected_prev, "content does not match its hash")
        expected_prev = row["hash"]
        checked += 1
    return ChainReport(ok=True, events_checked=checked, head_hash=expected_prev)


def _broken(event_id: int, checked: int, head: str, reason: str) -> ChainReport:
    return ChainReport(
        ok=False,
        events_checked=checked,
        head_hash=head,
        first_broken_id=event_id,
        message=f"event #{event_id} {reason}",
    )
