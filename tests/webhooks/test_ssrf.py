"""SSRF (SECURITY AR-05): refused at registration in every spelling, re-checked at connect
time against every resolved address, pinned to the checked address, never redirected.

Registration goes through the API (a 400 naming `url`, nothing written); connect-time
checks patch the resolver (no real DNS) and count the hits of a real local receiver, which
must stay at 0 for every refused case.
"""

import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apps.audit import webhook_delivery
from apps.audit.models import AuditEvent, DeliveryStatus, Webhook, WebhookDelivery
from apps.audit.webhook_delivery import webhook_deliver
from apps.audit.webhook_guard import UnsafeWebhookUrl, address_problem, parse_webhook_url
from apps.registry.services import version_create
from tests.registry.conftest import post_json
from tests.webhooks.conftest import URLS, make_webhook

pytestmark = pytest.mark.django_db

WEBHOOKS_URL = "/api/v1/webhooks"

# AR-05, every spelling (https, so that only the address is wrong).
REFUSED_HOSTS = [
    "169.254.169.254",
    "127.0.0.1:6379",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "127.1",
    "0x7f.1",
    "017700000001",
    "127.0.0.1.",
    "\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11",  # fullwidth
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "192.0.0.9",
    "0.0.0.0",
    "0",
    "[::]",
    "224.0.0.1",
    "[ff02::1]",
    "[fe80::1]",
    "[fc00::1]",
    "[64:ff9b::a9fe:a9fe]",
    "[64:ff9b::7f00:1]",
    "[64:ff9b:1::1]",
    "[2002:7f00:1::1]",
    "[::127.0.0.1]",
    "localhost",
    "LOCALHOST.",
    "api.localhost",
    "240.0.0.1",
    "255.255.255.255",
]
REFUSED_URLS = [
    *(f"https://{host}/hook" for host in REFUSED_HOSTS),
    "http://169.254.169.254/latest/meta-data/",
    "http://hooks.example.com/",  # plain http
    "gopher://hooks.example.com/",
    "file:///etc/passwd",
    "ftp://hooks.example.com/",
    "javascript:alert(1)",
    "data:text/plain,hi",
    "//hooks.example.com/hook",
    "hooks.example.com/hook",
    "https://a@hooks.example.com/",
    "https://a:b@hooks.example.com/",
    "https://hooks.example.com@127.0.0.1/",
    "https://hooks.example.com\\@127.0.0.1/",
    "https://hooks.example.com/#fragment",
    "https://hooks.example.com:0/",
    "https://hooks.example.com:65536/",
    "https://[fe80::1%25eth0]/",
    "https://hooks example.com/",
    "https://hooks.example.com/\x00",
    "https://hooks.example.com/a\r\nX-Injected: 1",
    "https://1.2.3.4.5/",
    "https://256.0.0.1/",
    "https://0x100000000/",
    "https:///hook",
    "https://" + "a" * 2050 + ".com/",
    "",
]
# Odd spellings stay refused even where private addresses are allowed: one canonical form.
ODD_SPELLINGS = ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.0.0.1"]


def assert_refused_naming_url(response: Any) -> None:
    """A 400 naming `url` (our rules), or the schema's 422 naming it (over 2048 chars)."""
    assert response.status_code in (400, 422), response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    if response.status_code == 400:
        assert error["details"] == {"field": "url"}
        assert error["message"].startswith("url: ")
    else:
        assert [entry["field"] for entry in error["details"]["errors"]] == ["url"]


@pytest.fixture
def no_delivery_sent(receiver):
    yield
    assert receiver.hits == 0


# --- Registration ------------------------------------------------------------------------------


@pytest.mark.urls(URLS)
@pytest.mark.usefixtures("deny_private")
@pytest.mark.parametrize("url", REFUSED_URLS)
def test_registration_refuses_unsafe_urls(client, ml_model, owner_auth, url):
    response = post_json(
        client,
        WEBHOOKS_URL,
        {"url": url, "events": ["stage.changed"], "model": ml_model.name},
        owner_auth,
    )
    assert_refused_naming_url(response)
    assert not Webhook.objects.exists()
    assert not AuditEvent.objects.filter(action="webhook.created").exists()


@pytest.mark.parametrize("host", ODD_SPELLINGS)
def test_odd_spellings_are_refused_even_when_private_addresses_are_allowed(host):
    with pytest.raises(UnsafeWebhookUrl, match=r"127\.0\.0\.1"):
        parse_webhook_url(f"http://{host}/hook", allow_private=True)


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("https://Hooks.Example.COM.:443/x?y=1", "https://hooks.example.com/x?y=1"),
        ("  https://hooks.example.com  ", "https://hooks.example.com/"),
        ("HTTPS://hooks.example.com:8443/a/b", "https://hooks.example.com:8443/a/b"),
        ("https://bücher.example/p", "https://xn--bcher-kva.example/p"),
        ("https://8.8.8.8/hook", "https://8.8.8.8/hook"),
        ("https://[2606:4700:4700::1111]/", "https://[2606:4700:4700::1111]/"),
        ("https://[64:ff9b::808:808]/", "https://[64:ff9b::808:808]/"),  # NAT64 of public
    ],
)
def test_public_urls_are_stored_in_their_canonical_form(url, stored):
    assert parse_webhook_url(url, allow_private=False).url == stored


@pytest.mark.urls(URLS)
@pytest.mark.usefixtures("deny_private")
def test_registration_does_not_resolve_names(client, ml_model, owner_auth, resolve_to):
    """A lookup could hang a web request; names are checked when delivering."""
    lookups = resolve_to({"hooks.example.com": ["127.0.0.1"]})
    body = {
        "url": "https://hooks.example.com/hook",
        "events": ["stage.changed"],
        "model": ml_model.name,
    }
    response = post_json(client, WEBHOOKS_URL, body, owner_auth)
    assert response.status_code == 201
    assert response.json()["url"] == "https://hooks.example.com/hook"
    assert lookups == []


@pytest.mark.urls(URLS)
@pytest.mark.usefixtures("allow_private")
def test_with_allow_private_a_local_http_receiver_is_accepted(client, ml_model, owner_auth):
    body = {
        "url": "http://127.0.0.1:8080/hook",
        "events": ["stage.changed"],
        "model": ml_model.name,
    }
    assert post_json(client, WEBHOOKS_URL, body, owner_auth).status_code == 201
    # …but still no credentials, no other scheme.
    for url in ("http://a@127.0.0.1/", "ftp://127.0.0.1/", "http://127.1/"):
        response = post_json(client, WEBHOOKS_URL, {**body, "url": url}, owner_auth)
        assert_refused_naming_url(response)


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("64:ff9b::808:808", False),
        ("127.0.0.1", True),
        ("169.254.169.254", True),
        ("::ffff:8.8.8.8", True),  # IPv4-mapped: refused whatever it maps to
        ("64:ff9b::a9fe:a9fe", True),
        ("2002:a00:1::1", True),  # 6to4 of 10.0.0.1
        ("fec0::1", True),
        ("2001:db8::1", True),
    ],
)
def test_address_classes(address, refused):
    import ipaddress

    assert (address_problem(ipaddress.ip_address(address)) is not None) is refused


# --- Connect time ------------------------------------------------------------------------------


@pytest.mark.usefixtures("deny_private", "no_delivery_sent")
@pytest.mark.parametrize(
    "answers",
    [
        ["127.0.0.1"],
        ["10.0.0.1"],
        ["169.254.169.254"],
        ["::1"],
        ["::ffff:127.0.0.1"],
        ["64:ff9b::a9fe:a9fe"],
        ["93.184.216.34", "127.0.0.1"],  # one bad answer among good ones
        ["2606:4700:4700::1111", "fd00::1"],
    ],
)
def test_a_name_resolving_to_a_refused_address_is_never_called(
    owner, ml_model, receiver, resolve_to, answers
):
    make_webhook(
        owner, f"https://hooks.example.com:{receiver.port}/hook", ["version.created"], ml_model
    )
    lookups = resolve_to({"hooks.example.com": answers})
    version_create(actor=owner, model=ml_model)
    webhook_deliver(WebhookDelivery.objects.get().pk)
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED  # no retries: it cannot get better
    assert delivery.attempts == 1
    assert delivery.last_error.startswith("refused: url: hooks.example.com resolves to ")
    assert lookups == ["hooks.example.com"]


@pytest.mark.usefixtures("no_delivery_sent")
def test_stored_urls_are_checked_again_when_delivering(owner, ml_model, receiver, settings):
    settings.REGENT_WEBHOOK_ALLOW_PRIVATE = True
    make_webhook(owner, receiver.url, ["version.created"], ml_model)
    settings.REGENT_WEBHOOK_ALLOW_PRIVATE = False  # production settings from now on
    version_create(actor=owner, model=ml_model)
    webhook_deliver(WebhookDelivery.objects.get().pk)
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED
    assert "plain http is refused" in delivery.last_error


@pytest.mark.usefixtures("allow_private")
def test_the_connection_is_pinned_to_the_checked_address(
    owner, ml_model, receiver_factory, resolve_to
):
    """DNS answers 127.0.0.1 for the check, then 127.0.0.2: the POST still goes to the
    address that was checked, under the host name."""
    checked = receiver_factory("127.0.0.1")
    flipped = receiver_factory("127.0.0.2", checked.port)
    answers = iter([["127.0.0.1"]])
    lookups = resolve_to({"hooks.example.com": lambda: next(answers, ["127.0.0.2"])})
    make_webhook(
        owner, f"http://hooks.example.com:{checked.port}/hook", ["version.created"], ml_model
    )
    version_create(actor=owner, model=ml_model)
    webhook_deliver(WebhookDelivery.objects.get().pk)
    assert (checked.hits, flipped.hits) == (1, 0)
    assert lookups == ["hooks.example.com"]
    assert checked.requests[0].headers["host"] == f"hooks.example.com:{checked.port}"
    assert WebhookDelivery.objects.get().status == DeliveryStatus.SUCCEEDED


@pytest.mark.usefixtures("allow_private")
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed(owner, ml_model, receiver_factory, status):
    first, target = receiver_factory(), receiver_factory()
    first.status = status
    first.headers = {"Location": target.url}
    make_webhook(owner, first.url, ["version.created"], ml_model)
    version_create(actor=owner, model=ml_model)
    webhook_deliver(WebhookDelivery.objects.get().pk)
    delivery = WebhookDelivery.objects.get()
    assert (first.hits, target.hits) == (1, 0)
    assert delivery.status == DeliveryStatus.PENDING  # a failed attempt, retried later
    assert delivery.response_code == status
    assert delivery.last_error == f"HTTP {status}: redirects are not followed"


# --- TLS: the pinned connection still verifies the host name's certificate ---------------------


def _certificate(directory: Path, hostname: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{hostname}.pem", directory / f"{hostname}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def https_receiver(tmp_path, receiver_factory, monkeypatch):
    """`https_receiver(cert_hostname)`: an https receiver on 127.0.0.1 with a certificate
    for that name, trusted by Regent's TLS context; `.server_names` records the SNI sent."""

    def start(cert_hostname: str) -> Any:
        cert, key = _certificate(tmp_path, cert_hostname)
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(cert, key)
        server_names: list[str | None] = []
        server_context.sni_callback = lambda sock, name, context: server_names.append(name)
        monkeypatch.setattr(
            webhook_delivery, "tls_context", lambda: ssl.create_default_context(cafile=cert)
        )
        receiver = receiver_factory(tls=server_context)
        receiver.server_names = server_names
        return receiver

    return start


@pytest.mark.usefixtures("allow_private")
def test_https_to_a_pinned_address_sends_the_host_name_and_checks_its_certificate(
    owner, ml_model, https_receiver, resolve_to
):
    receiver = https_receiver("hooks.example.com")
    resolve_to({"hooks.example.com": ["127.0.0.1"]})
    make_webhook(
        owner, f"https://hooks.example.com:{receiver.port}/hook", ["version.created"], ml_model
    )
    version_create(actor=owner, model=ml_model)
    webhook_deliver(WebhookDelivery.objects.get().pk)
    assert WebhookDelivery.objects.get().status == DeliveryStatus.SUCCEEDED
    assert receiver.server_names == ["hooks.example.com"]
    assert receiver.requests[0].headers["host"] == f"hooks.example.com:{receiver.port}"


@pytest.mark.usefixtures("allow_private")
def test_https_with_a_certificate_for_another_name_is_refused(
    owner, ml_model, https_receiver, resolve_to
):
    receiver = https_receiver("other.example.com")
    resolve_to({"hooks.example.com": ["127.0.0.1"]})
    make_webhook(
        owner, f"https://hooks.example.com:{receiver.port}/hook", ["version.created"], ml_model
    )
    version_create(actor=owner, model=ml_model)
    webhook_deliver(WebhookDelivery.objects.get().pk)
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.PENDING
    assert "certificate" in delivery.last_error.lower()
    assert receiver.hits == 0


@pytest.mark.urls(URLS)
@pytest.mark.usefixtures("deny_private", "no_delivery_sent")
def test_a_receiver_on_this_machine_is_refused_without_the_setting(
    client, ml_model, owner_auth, receiver
):
    for url in (receiver.url, receiver.url.replace("http://", "https://")):
        body = {"url": url, "events": ["version.created"], "model": ml_model.name}
        assert_refused_naming_url(post_json(client, WEBHOOKS_URL, body, owner_auth))
    assert not Webhook.objects.exists()
