"""Every change to accounts and tokens, each in one transaction with its audit event."""

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from apps.accounts.models import ApiToken, TokenScope, User
from apps.accounts.tokens import NewToken, digest_matches, generate_token, split_token
from apps.audit.services import audit_record

MAX_TOKEN_DAYS = 3650
# last_used_at is refreshed at most this often, so a busy pipeline does not write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenError(ValueError):
    """A token request that cannot be honoured; the message names the field."""


@transaction.atomic
def token_create(
    *, user: User, name: str, scope: str = TokenScope.READ, expires_days: int | None = None
) -> tuple[ApiToken, str]:
    """Create a token for `user`; returns it and its plaintext, which is never stored."""
    name = name.strip()
    if not name or len(name) > 100:
        raise TokenError("name: give the token a name of 1 to 100 characters.")
    if scope not in TokenScope.values:
        raise TokenError(f"scope: must be one of {', '.join(TokenScope.values)}.")
    if expires_days is not None and not 1 <= expires_days <= MAX_TOKEN_DAYS:
        raise TokenError(f"expires_days: must be between 1 and {MAX_TOKEN_DAYS}.")
    new: NewToken = generate_token()
    expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=new.prefix,
        digest=new.digest,
        scope=scope,
        expires_at=expires_at,
    )
    audit_record(
        actor=user,
        action="token.created",
        target=token,
        changes={"after": {"name": name, "scope": scope, "expires_at": expires_at}},
    )
    return token, new.plaintext


@transaction.atomic
def token_revoke(*, token: ApiToken, actor: User) -> ApiToken:
    """Revoke a token at once; revoking twice changes nothing and records nothing."""
    updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    token.refresh_from_db()
    if updated:
        audit_record(
            actor=actor,
            action="token.revoked",
            target=token,
            changes={"before": {"revoked": False}, "after": {"revoked": True}},
        )
    return token


def token_authenticate(plaintext: str) -> ApiToken | None:
    """The active token of an active user matching `plaintext`, or None."""
    parts = split_token(plaintext)
    if parts is None:
        return None
    prefix, secret = parts
    token = (
        ApiToken.objects.active()
        .select_related("user")
        .filter(prefix=prefix, user__is_active=True)
        .first()
    )
    if token is None or not digest_matches(secret, token.digest):
        return None
    _touch_last_used(token)
    return token


def _touch_last_used(token: ApiToken) -> None:
    now = timezone.now()
    if token.last_used_at and now - token.last_used_at < LAST_USED_RESOLUTION:
        return
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    token.last_used_at = now
