"""The API's authentication, scopes and error shape (foundation)."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.accounts.models import ApiToken
from apps.accounts.services import token_revoke
from apps.audit.models import AuditEvent
from tests.conftest import bearer

pytestmark = pytest.mark.django_db

UNAUTHENTICATED = {
    "error": {"code": "not_authenticated", "message": "Authentication required.", "details": {}}
}


def test_me_with_token(api_client, alice, read_token):
    response = api_client.get("/api/v1/me", **bearer(read_token))
    assert response.status_code == 200
    assert response.json() == {
        "username": "alice",
        "email": "alice@example.com",
        "is_superuser": False,
    }


def test_me_with_session(api_client, alice):
    api_client.force_login(alice)
    assert api_client.get("/api/v1/me").json()["username"] == "alice"


def test_token_use_records_last_used(api_client, read_token):
    api_client.get("/api/v1/me", **bearer(read_token))
    assert ApiToken.objects.get().last_used_at is not None


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer ",
        "Bearer garbage",
        "Bearer rgt_000000000000_nope",
        "Basic YWxpY2U6cGFzcw==",
        "Bearer " + "x" * 5000,
    ],
)
def test_absent_or_garbage_token_is_401_with_one_body(api_client, alice, header):
    extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    response = api_client.get("/api/v1/me", **extra)
    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_wrong_secret_for_a_real_prefix_is_401(api_client, read_token):
    tampered = read_token[:-2] + ("AA" if not read_token.endswith("AA") else "BB")
    response = api_client.get("/api/v1/me", **bearer(tampered))
    assert response.json() == UNAUTHENTICATED


def test_expired_token_is_401(api_client, read_token):
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = api_client.get("/api/v1/me", **bearer(read_token))
    assert response.status_code == 401
    assert response.json() == UNAUTHENTICATED


def test_revoked_token_is_401_at_once(api_client, alice, read_token):
    assert api_client.get("/api/v1/me", **bearer(read_token)).status_code == 200
    token_revoke(token=ApiToken.objects.get(), actor=alice)
    response = api_client.get("/api/v1/me", **bearer(read_token))
    assert response.json() == UNAUTHENTICATED


def test_token_of_deactivated_user_is_401(api_client, alice, read_token):
    alice.is_active = False
    alice.save()
    assert api_client.get("/api/v1/me", **bearer(read_token)).status_code == 401


def test_token_in_query_string_is_ignored(api_client, read_token):
    response = api_client.get(f"/api/v1/me?token={read_token}&access_token={read_token}")
    assert response.status_code == 401


def test_read_token_refused_on_write(api_client, read_token):
    prefix = ApiToken.objects.get().prefix
    response = api_client.delete(f"/api/v1/tokens/{prefix}", **bearer(read_token))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert ApiToken.objects.get().revoked_at is None


def test_write_token_revokes_itself(api_client, write_token):
    prefix = ApiToken.objects.get().prefix
    listed = api_client.get("/api/v1/tokens", **bearer(write_token)).json()
    assert [token["prefix"] for token in listed] == [prefix]
    assert api_client.delete(f"/api/v1/tokens/{prefix}", **bearer(write_token)).status_code == 204
    assert api_client.get("/api/v1/me", **bearer(write_token)).status_code == 401
    assert AuditEvent.objects.filter(action="token.revoked", via="api").count() == 1


def test_cannot_revoke_someone_elses_token(api_client, outsider, write_token):
    from apps.accounts.services import token_create

    _, outsider_token = token_create(user=outsider, name="x", scope="write")
    prefix = ApiToken.objects.get(user__username="alice").prefix
    response = api_client.delete(f"/api/v1/tokens/{prefix}", **bearer(outsider_token))
    assert response.status_code == 404
    assert ApiToken.objects.get(prefix=prefix).revoked_at is None


def test_write_token_passes_auth_and_gets_405_on_wrong_method(api_client, write_token):
    response = api_client.post(
        "/api/v1/me", {}, content_type="application/json", **bearer(write_token)
    )
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in response["Allow"]


def test_session_write_without_csrf_is_403(alice, read_token):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    prefix = ApiToken.objects.get().prefix
    response = client.delete(f"/api/v1/tokens/{prefix}")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"
    assert ApiToken.objects.get().revoked_at is None


def test_session_write_with_csrf_works(alice, read_token):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    secret = "a" * 32  # a CSRF cookie value as the browser would hold it
    client.cookies["csrftoken"] = secret
    prefix = ApiToken.objects.get().prefix
    response = client.delete(f"/api/v1/tokens/{prefix}", HTTP_X_CSRFTOKEN=secret)
    assert response.status_code == 204


def test_unknown_api_route_is_json_404(api_client, read_token):
    response = api_client.get("/api/v1/no/such/route", **bearer(read_token))
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"


def test_unknown_api_route_is_json_404_for_anonymous(api_client):
    response = api_client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_oversized_json_body_is_413(api_client, write_token, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = '{"x": "' + "a" * 5000 + '"}'
    response = api_client.post(
        "/api/v1/me", body, content_type="application/json", **bearer(write_token)
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_openapi_document_and_docs(api_client):
    schema = api_client.get("/api/v1/openapi.json")
    assert schema.status_code == 200
    assert "/api/v1/me" in schema.json()["paths"]
    docs = api_client.get("/api/docs")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()


def test_failed_auth_writes_no_audit_event(api_client):
    api_client.get("/api/v1/me", **bearer("rgt_000000000000_nope"))
    assert not AuditEvent.objects.exists()
