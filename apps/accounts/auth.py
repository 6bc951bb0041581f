"""API authentication: `Authorization: Bearer <token>` or a browser session with CSRF.

One callable decides, so a bad token is always a 401 (never a fall-through to the session
check and its CSRF error), and a read-only token is refused on every unsafe method here,
once, instead of in each endpoint.
"""

from typing import Any

from django.http import HttpRequest
from ninja.security import HttpBearer
from ninja.utils import check_csrf

from apps.accounts.services import token_authenticate
from registry_site.api_errors import Forbidden, NotAuthenticated

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class BearerOrSession(HttpBearer):
    """Authenticates API requests; sets `request.api_token` (None for a session)."""

    def __call__(self, request: HttpRequest) -> Any:
        header = request.headers.get("Authorization")
        if header is not None:
            return self._from_header(request, header)
        return self._from_session(request)

    def _from_header(self, request: HttpRequest, header: str) -> Any:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise NotAuthenticated()
        return self.authenticate(request, credentials.strip())

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        api_token = token_authenticate(token)
        if api_token is None:
            raise NotAuthenticated()
        if request.method not in SAFE_METHODS and not api_token.can_write:
            raise Forbidden("This token is read-only.", code="forbidden")
        request.api_token = api_token
        request.user = api_token.user
        return api_token.user

    def _from_session(self, request: HttpRequest) -> Any:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            raise NotAuthenticated()
        if not getattr(request, "_ninja_csrf_exempt", False) and check_csrf(request):
            raise Forbidden("CSRF verification failed.", code="csrf_failed")
        request.api_token = None
        return user


api_auth = BearerOrSession()
