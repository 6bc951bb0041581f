"""Account endpoints of the REST API."""

from datetime import datetime

from django.http import HttpRequest
from ninja import Router, Schema, Status

from apps.accounts.models import ApiToken
from apps.accounts.services import token_revoke
from registry_site.api_errors import NotFound

router = Router(tags=["accounts"])


class MeOut(Schema):
    username: str
    email: str
    is_superuser: bool


@router.get("/me", response=MeOut, summary="The authenticated user")
def me(request: HttpRequest) -> MeOut:
    return request.auth


class TokenOut(Schema):
    name: str
    prefix: str
    scope: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool

    @staticmethod
    def resolve_revoked(token: ApiToken) -> bool:
        return token.revoked_at is not None


@router.get("/tokens", response=list[TokenOut], summary="Your API tokens")
def token_list(request: HttpRequest) -> list[ApiToken]:
    return list(ApiToken.objects.filter(user=request.auth))


@router.delete("/tokens/{prefix}", response={204: None}, summary="Revoke one of your tokens")
def token_delete(request: HttpRequest, prefix: str) -> Status:
    token = ApiToken.objects.filter(user=request.auth, prefix=prefix).first()
    if token is None:
        raise NotFound()
    token_revoke(token=token, actor=request.auth)
    return Status(204, None)
