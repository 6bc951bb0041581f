"""The History tabs of the model, version, request and stage pages.

The events come from `apps.audit.selectors.history_for` (the one permission rule for the
log) and are shown by `templates/audit/_history.html`, bounded to the latest
`HISTORY_EVENTS` (the audit log's own page has the rest). Names of models the reader may
not view (a hidden parent of a version) are dropped from what is shown, not from the log,
by the same `redact_events` the audit page and exports use.
"""

from typing import Any

from django.db.models import Model

from apps.audit.models import AuditEvent
from apps.audit.selectors import history_for, redact_events

HISTORY_EVENTS = 100


def recent_history(user: Any, target: Model) -> list[AuditEvent]:
    """The latest events about `target` that `user` may read, newest first."""
    return redact_events(user, list(history_for(user, target)[:HISTORY_EVENTS]))
