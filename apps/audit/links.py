"""Where an audit event's object lives in the app: target type → page URL.

Built from the event's own columns (`target_type`, `target_id`, `target_label`), never by
loading the object, so a page of 50 events costs no extra query. The label is the object's
`str()` when the event was written: "name" for a model, "name/3" for a version, "name:stage"
for a stage, "name/3:path" for a file. Model names cannot contain "/" or ":", which makes
these labels unambiguous. A target with no page (users, API tokens), a label that does not
parse, or a route that does not exist gives None: the page then shows plain text.
"""

from collections.abc import Callable
from typing import Any

from django.urls import NoReverseMatch, reverse

_Builder = Callable[[str, str], str | None]


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdecimal() and len(text) <= 9 else None


def _model_url(target_id: str, label: str) -> str | None:
    return reverse("registry:model-detail", args=[label]) if label else None


def _version_url(target_id: str, label: str) -> str | None:
    name, _, number = label.partition(":")[0].rpartition("/")
    found = _number(number)
    if not name or found is None:
        return None
    return reverse("registry:version-detail", args=[name, found])


def _artifact_url(target_id: str, label: str) -> str | None:
    # "name/3:path/to/file": the version page lists the file.
    return _version_url(target_id, label.partition(":")[0])


def _promotion_url(target_id: str, label: str) -> str | None:
    found = _number(target_id)
    return reverse("approvals:promotion-detail", args=[found]) if found else None


def _stage_url(target_id: str, label: str) -> str | None:
    name, colon, stage = label.removeprefix("policy of ").partition(":")
    if not (name and colon and stage):
        return None
    return reverse("approvals:stage-detail", args=[name, stage])


BUILDERS: dict[str, _Builder] = {
    "registry.registeredmodel": _model_url,
    "registry.modelversion": _version_url,
    "registry.artifact": _artifact_url,
    "approvals.promotionrequest": _promotion_url,
    "approvals.stage": _stage_url,
    "approvals.stagepolicy": _stage_url,
}


def object_url(target_type: str, target_id: str, target_label: str) -> str | None:
    """The page of the event's object, or None when it has none (users, tokens…)."""
    builder = BUILDERS.get(target_type)
    if builder is None:
        return None
    try:
        return builder(str(target_id), str(target_label))
    except NoReverseMatch:  # a label the URL patterns refuse (e.g. an empty segment)
        return None


def event_object_url(event: Any) -> str | None:
    """`object_url` for an AuditEvent (or anything with the three target attributes)."""
    return object_url(event.target_type, event.target_id, event.target_label)
