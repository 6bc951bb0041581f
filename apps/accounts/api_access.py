"""Who may do what with a model: `/api/v1/models/{name}/access` (owners only).

Only owners ("manage") see and change grants: someone who can view the model gets a 403,
anyone else the same 404 as for a model that does not exist. Bodies forbid unknown fields
(a 422), like every input schema of the API.
"""

from typing import Literal

from django.http import HttpRequest
from ninja import Field, Router, Schema
from pydantic import ConfigDict

from apps.accounts.services import role_grant, role_revoke
from apps.registry import access
from apps.registry.models import RegisteredModel

router = Router(tags=["access"])

RoleName = Literal["viewer", "editor", "owner"]


class PrincipalIn(Schema):
    """Exactly one of `user` (a username) or `group` (a team name)."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(None, max_length=150, description="A username")
    group: str | None = Field(None, max_length=150, description="A team (group) name")


class GrantIn(PrincipalIn):
    role: RoleName = Field(description="Replaces the role the user or team held on the model")


class GrantOut(Schema):
    principal: str = Field(description='"user:bob" or "group:vision"')
    type: Literal["user", "group"]
    name: str
    role: RoleName | None = Field(description="null: permissions that form no role")
    active: bool = Field(description="false for a deactivated user (the grant has no effect)")


class EffectiveOut(Schema):
    user: str
    role: RoleName
    via: list[str] = Field(description='Where the role comes from: "direct", "group:vision"…')


class AccessOut(Schema):
    model: str
    visibility: str
    grants: list[GrantOut]
    effective: list[EffectiveOut] = Field(
        description="Every active user holding a role, with the strongest of their roles"
    )


def _access_out(model: RegisteredModel) -> dict:
    grants = [
        {
            "principal": grant.principal,
            "type": grant.principal_type,
            "name": grant.principal_name,
            "role": grant.role,
            "active": grant.is_active,
        }
        for grant in access.model_grants(model)
    ]
    effective = [
        {
            "user": entry.username,
            "role": entry.role,
            "via": [source.label for source in entry.sources],
        }
        for entry in access.effective_access(model)
    ]
    return {
        "model": model.name,
        "visibility": model.visibility,
        "grants": grants,
        "effective": effective,
    }


@router.get("/{name}/access", response=AccessOut, summary="Who holds which role (owners)")
def access_list(request: HttpRequest, name: str) -> dict:
    model = access.access_model(request.auth, name, "manage")
    return _access_out(model)


@router.post("/{name}/access", response=AccessOut, summary="Grant or change a role (owners)")
def access_grant(request: HttpRequest, name: str, payload: GrantIn) -> dict:
    model = access.access_model(request.auth, name, "manage")
    role_grant(
        actor=request.auth, model=model, role=payload.role, user=payload.user, group=payload.group
    )
    return _access_out(model)


@router.delete("/{name}/access", response=AccessOut, summary="Revoke a role (owners)")
def access_revoke(request: HttpRequest, name: str, payload: PrincipalIn) -> dict:
    model = access.access_model(request.auth, name, "manage")
    role_revoke(actor=request.auth, model=model, user=payload.user, group=payload.group)
    return _access_out(model)
