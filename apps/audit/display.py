"""Showing stored audit values to people without letting them act on the reader.

Events are stored verbatim (AU-06): a comment may hold CR/LF, ANSI escapes, bidi overrides,
`<script>` or a megabyte of text. Templates escape HTML; these helpers also make invisible
and terminal-controlling characters visible (`\\x1b`, `\\u202e`) and bound the length
shown. The JSONL export stays exact; the CSV export uses `printable` on every cell.
"""

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_SHOWN_CHARS = 300
MAX_SHOWN_FIELDS = 30

# C0 controls but tab and newline, DEL, C1 controls; zero-width, bidi and line-separator
# characters that can reorder or hide text.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)
_LINE_BREAKS = re.compile("[\t\n]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, multiline: bool = True) -> str:
    """`text` with invisible and control characters spelled out as `\\x..`/`\\u....`.

    With `multiline` False, tabs and newlines are spelled out too (for one-line cells such
    as an actor name or an object label, where a forged line break could fake a row).
    """
    text = _INVISIBLE.sub(_escape, str(text))
    return text if multiline else _LINE_BREAKS.sub(_escape, text)


def shorten(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """At most `limit` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def show_value(value: Any) -> str:
    """A stored JSON value as a short, printable string (strings without quotes)."""
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    return shorten(printable(value))


@dataclass(frozen=True)
class ChangeRow:
    """One line of an event's change list: `field: before → after`, or `field: value`."""

    field: str
    before: str = ""
    after: str = ""
    has_before: bool = False
    has_after: bool = False
    is_diff: bool = False
    after_empty: bool = False


def _is_diff(changes: dict[str, Any]) -> bool:
    """An edit: "before"/"after" maps, possibly beside other keys (a rollback's reason)."""
    sides = {"before", "after"} & set(changes)
    return bool(sides) and all(isinstance(changes[key], dict) for key in sides)


def _diff_rows(before: dict[str, Any], after: dict[str, Any]) -> list[ChangeRow]:
    fields = list(dict.fromkeys([*after, *before]))
    return [
        ChangeRow(
            field=shorten(printable(field, multiline=False), 80),
            before=show_value(before[field]) if field in before else "",
            after=show_value(after[field]) if field in after else "",
            # A null or empty value reads as "(none)", not as a struck-out "null".
            has_before=_present(before, field),
            has_after=_present(after, field),
            after_empty=field in after and not _present(after, field),
            is_diff=True,
        )
        for field in fields[:MAX_SHOWN_FIELDS]
    ]


def _present(side: dict[str, Any], field: str) -> bool:
    return field in side and side[field] not in (None, "", [], {})


def change_rows(changes: Any) -> list[ChangeRow]:
    """An event's `changes` as a short list: before → after per field for edits
    ({"before": {...}, "after": {...}}), `key: value` for anything else."""
    if not changes:
        return []
    if isinstance(changes, dict) and _is_diff(changes):
        extra = {k: v for k, v in changes.items() if k not in ("before", "after")}
        return _diff_rows(changes.get("before", {}), changes.get("after", {})) + [
            ChangeRow(
                field=shorten(printable(key, multiline=False), 80),
                after=show_value(value),
                has_after=True,
            )
            for key, value in extra.items()
        ]
    if not isinstance(changes, dict):
        return [ChangeRow(field="", after=show_value(changes), has_after=True)]
    return [
        ChangeRow(
            field=shorten(printable(key, multiline=False), 80),
            after=show_value(value),
            has_after=True,
        )
        for key, value in list(changes.items())[:MAX_SHOWN_FIELDS]
    ]


def hidden_fields(changes: Any) -> int:
    """How many fields `change_rows` left out."""
    if not isinstance(changes, dict):
        return 0
    fields = (
        set(changes.get("before", {})) | set(changes.get("after", {}))
        if _is_diff(changes)
        else set(changes)
    )
    return max(0, len(fields) - MAX_SHOWN_FIELDS)
