"""Site-wide template helpers: `{% load regent %}`.

They live here rather than in a context processor so that pages work without a settings
change, including the error pages rendered without a request.
"""

import json
import tomllib
from functools import cache
from typing import Any

from django import template
from django.conf import settings

register = template.Library()


@cache
def _version() -> str:
    """The running version: REGENT_VERSION if set, else pyproject.toml's, else "dev"."""
    configured = getattr(settings, "REGENT_VERSION", "")
    if configured:
        return str(configured)
    try:
        with (settings.BASE_DIR / "pyproject.toml").open("rb") as handle:
            return str(tomllib.load(handle)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "dev"


@register.simple_tag
def regent_version() -> str:
    return _version()


@register.filter
def pretty_json(value: Any) -> str:
    """Indented JSON for <pre> blocks (the template escapes it like any string)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


# Pages under a model (its stages, access, comparisons) belong to the "Models" section.
MODEL_PAGES = {"stage-list", "stage-create", "stage-detail", "stage-policy", "promotion-create"}
MODEL_ACCESS_PAGES = {"model-access", "model-access-revoke"}


@register.simple_tag(takes_context=True)
def nav_section(context: dict[str, Any]) -> str:
    """The main-navigation section of the current page: models, reviews, teams or audit."""
    match = getattr(context.get("request"), "resolver_match", None)
    if match is None:
        return ""
    namespace, name = match.namespace, match.url_name
    if namespace in ("registry", "insight") or name in MODEL_PAGES | MODEL_ACCESS_PAGES:
        return "models"
    return {"approvals": "reviews", "access": "teams", "audit": "audit"}.get(namespace, "")
