"""Personal email approval links: signed, bound, expiring, single-use.

The URL carries a signed token naming a `ReviewLink` row, its approver, the request's
revision and a digest of the version's editable metadata; it dies when any of them moves.
Opening it (GET) never changes anything; the decision is a POST from the approver's own
signed-in session with CSRF, and the row's `used_at` is claimed by a conditional update.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.urls import reverse
from django.utils import timezone

from apps.approvals.models import PromotionRequest, ReviewLink
from apps.registry.models import ModelVersion

SALT = "regent.approvals.review-link"
MAX_TOKEN_LENGTH = 512


def link_ttl() -> timedelta:
    return timedelta(hours=getattr(settings, "REGENT_REVIEW_LINK_HOURS", 72))


def version_fingerprint(version: ModelVersion) -> str:
    """Changes whenever the version's status, description or tags change."""
    payload = json.dumps(
        [version.status, version.description, version.tags], sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def link_issue(promotion: PromotionRequest, approver: object) -> str:
    """Create a link row and return the absolute URL built from REGENT_BASE_URL."""
    link = ReviewLink.objects.create(
        promotion=promotion,
        approver=approver,
        revision=promotion.revision,
        expires_at=timezone.now() + link_ttl(),
    )
    token = signing.dumps(
        {
            "l": link.pk,
            "u": approver.pk,
            "r": promotion.revision,
            "v": version_fingerprint(promotion.version),
        },
        salt=SALT,
        compress=True,
    )
    return settings.REGENT_BASE_URL + reverse("approvals:link-open", args=[token])


@dataclass(frozen=True)
class LinkClaim:
    link_id: int
    user_id: int
    revision: int
    fingerprint: str


class LinkInvalid(Exception):
    """Tampered, truncated, foreign-purpose or garbage: one generic answer for all."""


class LinkExpired(Exception):
    pass


def link_read(token: str) -> LinkClaim:
    """Verify the signature and age; says nothing about the request's current state."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise LinkInvalid()
    try:
        data = signing.loads(token, salt=SALT, max_age=link_ttl())
    except signing.SignatureExpired:
        raise LinkExpired() from None
    except signing.BadSignature:
        raise LinkInvalid() from None
    try:
        return LinkClaim(int(data["l"]), int(data["u"]), int(data["r"]), str(data["v"]))
    except (KeyError, TypeError, ValueError):
        raise LinkInvalid() from None
