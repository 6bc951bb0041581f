"""Who is calling the MLflow endpoints: a Regent API token, or a user's password.

The stock client sends `Authorization: Bearer <MLFLOW_TRACKING_TOKEN>` or, with
`MLFLOW_TRACKING_USERNAME/PASSWORD`, `Authorization: Basic …`. Nothing else counts here: no
session cookie (these endpoints are CSRF-exempt, so a browser's ambient credentials must
never be enough). No header, a bad or expired token and a wrong password all get the same
401 UNAUTHENTICATED, with a `WWW-Authenticate` challenge.
"""

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import authenticate
from django.http import HttpRequest

from apps.accounts.services import token_authenticate
from apps.mlflow_compat.errors import PERMISSION_DENIED, UNAUTHENTICATED, MlflowError

UNAUTHENTICATED_MESSAGE = (
    "Authentication required: set MLFLOW_TRACKING_TOKEN to a Regent API token, "
    "or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD."
)
LOCKED_OUT_MESSAGE = "Too many failed sign-ins; try again later, or use an API token."
READ_ONLY_MESSAGE = "This token is read-only; create a read-write token to make changes."


@dataclass(frozen=True)
class Caller:
    """The authenticated user and whether the credentials allow changes."""

    user: Any
    can_write: bool


def _unauthenticated() -> MlflowError:
    return MlflowError(UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


def authenticate_caller(request: HttpRequest) -> Caller:
    """The caller behind the Authorization header, or 401 UNAUTHENTICATED."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    credentials = credentials.strip()
    if not credentials:
        raise _unauthenticated()
    if scheme.lower() == "bearer":
        return _from_token(credentials)
    if scheme.lower() == "basic":
        return _from_password(request, credentials)
    raise _unauthenticated()


def _from_token(plaintext: str) -> Caller:
    token = token_authenticate(plaintext)
    if token is None:
        raise _unauthenticated()
    return Caller(user=token.user, can_write=token.can_write)


def _from_password(request: HttpRequest, credentials: str) -> Caller:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _unauthenticated() from None
    username, separator, password = decoded.partition(":")
    # NUL cannot be stored or looked up in PostgreSQL text: no such user, not a 500.
    if not separator or not username or not password or "\x00" in decoded:
        raise _unauthenticated()
    # With `request`, sign-in lockout (django-axes) counts these attempts too.
    user = authenticate(request, username=username, password=password)
    if getattr(request, "axes_locked_out", False):
        # Answered here in MLflow's shape and as a 403: the lockout page's 429 would make
        # the stock client retry for minutes. So AxesMiddleware must leave this response.
        request.axes_locked_out = False
        raise MlflowError(PERMISSION_DENIED, LOCKED_OUT_MESSAGE)
    if user is None or not user.is_active:
        raise _unauthenticated()
    return Caller(user=user, can_write=True)


def ensure_can_write(caller: Caller) -> None:
    """A read-only token may call every read endpoint and nothing else (403)."""
    if not caller.can_write:
        raise MlflowError(PERMISSION_DENIED, READ_ONLY_MESSAGE)
