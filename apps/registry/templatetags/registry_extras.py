"""Registry template helpers: `{% load registry_extras %}`."""

import re
from typing import Any

from django import template

register = template.Library()

_UNITS = ("bytes", "kB", "MB", "GB", "TB", "PB")
_STATUS_BADGES = {
    "pending": "badge-warning",
    "verifying": "badge-info",
    "ready": "badge-success",
    "failed": "badge-danger",
}


@register.filter
def filesize(value: Any) -> str:
    """Decimal units, as the upload progress shows them: 999 bytes, 1.2 kB, 12.3 MB."""
    try:
        size = int(value)
    except (TypeError, ValueError):
        return ""
    if abs(size) < 1000:
        return "1 byte" if size == 1 else f"{size} bytes"
    exponent = _exponent(abs(size))
    return f"{size / 1000**exponent:.1f} {_UNITS[exponent]}"


def _exponent(size: int) -> int:
    """The largest power of 1000 not above `size` (integer maths: no 999.99… rounding)."""
    exponent = 0
    while size >= 1000 ** (exponent + 1) and exponent < len(_UNITS) - 1:
        exponent += 1
    return exponent


@register.filter
def short_sha(value: Any, length: int = 12) -> str:
    return str(value or "")[:length]


@register.filter
def status_badge(status: Any) -> str:
    """The badge modifier class for a version status."""
    return _STATUS_BADGES.get(str(status), "")


@register.filter
def get_item(mapping: Any, key: Any) -> Any:
    """`mapping|get_item:key` for keys that are not identifiers (metric names)."""
    if isinstance(mapping, dict):
        return mapping.get(key)
    return None


@register.filter
def metric(value: Any) -> str:
    """A metric as people read it: 0.9431, 12, 1.2e-05."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:.4g}"


@register.filter
def percent_of(part: Any, whole: Any) -> int:
    try:
        return max(0, min(100, int(int(part) * 100 / int(whole))))
    except (TypeError, ValueError, ZeroDivisionError):
        return 0


_SKIPPED_LINE = re.compile(r"\s*(#|```|~~~|\||<|---|===|!\[)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"[*_`]+")


@register.filter
def card_excerpt(text: Any, length: int = 140) -> str:
    """The first line of prose of a Markdown card, without its markup, for a list row."""
    for line in str(text or "").splitlines():
        if not line.strip() or _SKIPPED_LINE.match(line):
            continue
        plain = _EMPHASIS.sub("", _LINK.sub(r"\1", line)).strip(" >-+")
        if plain:
            return plain if len(plain) <= length else plain[: length - 1].rstrip() + "…"
    return ""


@register.filter
def bytes_of(done: Any, total: Any) -> str:
    """ "12.3 of 40.0 MB": one unit for both, chosen by the total (as upload.js shows it)."""
    try:
        done, total = int(done), int(total)
    except (TypeError, ValueError):
        return ""
    if total < 1000:
        return f"{done} of {total} bytes"
    exponent = _exponent(total)
    scale = 1000**exponent
    return f"{done / scale:.1f} of {total / scale:.1f} {_UNITS[exponent]}"
