"""The request context behind audit rows: client address, channel, request id."""

import pytest
from django.test import RequestFactory

from apps.audit.context import client_ip, context_from_request, via_for_path
from apps.audit.models import AuditEvent
from tests.conftest import bearer


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "6.6.6.6", "10.0.0.9"),  # no trusted proxy: the header is ignored
        (1, "6.6.6.6, 203.0.113.7", "203.0.113.7"),  # the proxy appended the real client
        (1, "", "10.0.0.9"),
        (2, "6.6.6.6, 203.0.113.7, 10.0.0.2", "203.0.113.7"),
        (2, "203.0.113.7", "10.0.0.9"),  # fewer hops than proxies: do not trust it
    ],
)
def test_client_ip_trusts_only_configured_proxies(settings, proxies, forwarded, expected):
    settings.REGENT_TRUSTED_PROXY_COUNT = proxies
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.9", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


@pytest.mark.parametrize(
    ("path", "via"),
    [
        ("/api/v1/models", "api"),
        ("/api/2.0/mlflow/registered-models/get", "mlflow"),
        ("/admin/", "admin"),
        ("/models/", "web"),
    ],
)
def test_channel_follows_the_path(path, via):
    assert via_for_path(path) == via


def test_request_id_is_kept_only_when_safe():
    factory = RequestFactory()
    assert (
        context_from_request(factory.get("/", HTTP_X_REQUEST_ID="abc-123")).request_id == "abc-123"
    )
    unsafe = context_from_request(factory.get("/", HTTP_X_REQUEST_ID="x\r\nSet-Cookie: a=b"))
    assert "\n" not in unsafe.request_id and len(unsafe.request_id) == 32


@pytest.mark.django_db
def test_api_event_carries_request_context(client, write_token):
    from apps.accounts.models import ApiToken

    prefix = ApiToken.objects.get().prefix
    client.delete(
        f"/api/v1/tokens/{prefix}",
        HTTP_USER_AGENT="pipeline/1.0",
        HTTP_X_REQUEST_ID="req-42",
        REMOTE_ADDR="192.0.2.10",
        **bearer(write_token),
    )
    event = AuditEvent.objects.get(action="token.revoked")
    assert (event.via, event.user_agent, event.request_id, event.ip) == (
        "api",
        "pipeline/1.0",
        "req-42",
        "192.0.2.10",
    )
