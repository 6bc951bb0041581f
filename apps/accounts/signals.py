"""Sign-in, failed sign-in, sign-in lockout and sign-out go to the audit log."""

from typing import Any

from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import transaction
from django.dispatch import receiver

from apps.accounts.models import User
from apps.audit.services import audit_record

MAX_ATTEMPTED_NAME = 150


@receiver(user_logged_in)
def audit_sign_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    audit_record(actor=user, action="user.signed_in", target=user)


@receiver(user_logged_out)
def audit_sign_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None:
        audit_record(actor=user, action="user.signed_out", target=user)


@receiver(user_login_failed)
def audit_failed_sign_in(
    sender: Any, credentials: dict, request: Any = None, **kwargs: Any
) -> None:
    attempted = str(credentials.get("username", ""))[:MAX_ATTEMPTED_NAME]
    # Its own transaction: the failed attempt is recorded even if the caller rolls back.
    with transaction.atomic():
        audit_record(
            actor=None,
            actor_name=attempted or "anonymous",
            action="user.sign_in_failed",
            changes={"username": attempted},
        )


@receiver(user_locked_out)
def audit_lockout(
    sender: Any, request: Any = None, username: str | None = None, **kwargs: Any
) -> None:
    """django-axes locked an account out for one client address (the cool-off)."""
    attempted = str(username or "")[:MAX_ATTEMPTED_NAME]
    account = User.objects.filter(username=attempted).first() if attempted else None
    with transaction.atomic():
        audit_record(
            actor=None,
            actor_name=attempted or "anonymous",
            action="user.locked_out",
            target=account,
            changes={"username": attempted, "minutes": _cool_off_minutes()},
        )


def _cool_off_minutes() -> int:
    return int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
