"""Keep email review tokens out of every log line.

Django logs the path of each 4xx response ("Not Found: /reviews/link/<token>/"), runserver
and gunicorn log every request line. Attached to the log handlers (settings.LOGGING), this
filter rewrites whatever follows `reviews/link/` to `[redacted]` in the message and its
arguments — tuples (Django) and mappings (gunicorn's access-log atoms) alike — before any
handler formats the record. The tokenless confirmation page `/reviews/link/` is untouched.
"""

import logging
import re
from typing import Any

REDACTED = "[redacted]"
# The `filters` entry of a logging dictConfig that attaches this filter (settings.LOGGING,
# registry_site.serve.LOGGING).
FILTER_CONFIG = {"redact_review_links": {"()": "apps.approvals.logging.RedactReviewLinks"}}
# `/` or its percent-encoding; the token ends at whitespace, a quote, or the end of the text.
_TOKEN_IN_PATH = re.compile(r"(reviews(?:/|%2F)link(?:/|%2F))[^\s\"'<>]+", re.IGNORECASE)


def redact(text: str) -> str:
    return _TOKEN_IN_PATH.sub(rf"\g<1>{REDACTED}", text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    return value


class RedactReviewLinks(logging.Filter):
    """A handler filter that never drops a record, only rewrites it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redact_value(arg) for arg in args)
        elif isinstance(args, dict):
            # In place: gunicorn passes a dict subclass whose lookups its format relies on.
            for key, value in list(args.items()):
                args[key] = _redact_value(value)
        return True
