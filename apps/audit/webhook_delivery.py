"""Sending webhook deliveries: claim, sign, POST to a pinned address, record, retry.

At-least-once delivery, exactly-once effects on our side (SECURITY principles 8 and 9, WF-11):

1. claim — a conditional UPDATE moves the row `pending` → `delivering` only if it is due, and
   counts the attempt; a second task for the same row (a duplicate message, the sweep, a
   retry that fires twice) matches nothing and sends nothing. The claim is a lease: its
   `next_attempt_at` is when it lapses, so a worker killed mid-send does not strand the row.
2. send — outside any transaction: resolve the host, check every address (webhook_guard),
   connect to the checked IP with the host name as Host header and TLS server name, POST the
   signed body; connect timeout 5 s, 10 s in all (a watchdog closes the socket), at most 4 KiB
   of the response read, redirects never followed (a 3xx is a failure).
3. finish — a conditional UPDATE on `delivering`: 2xx → `succeeded`; anything else → back to
   `pending` with `next_attempt_at` = now + 30 s * 2^(attempt - 1), or `failed` after
   MAX_ATTEMPTS; a URL or address the guard refuses fails at once, without retries.

Signatures follow Standard Webhooks: `webhook-id` (stable across retries: evt_<audit event
id>), `webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`
(`v1,` + base64 HMAC-SHA256 of "{id}.{timestamp}.{body}" keyed with the base64-decoded part
of the secret after "whsec_"). docs/INTEGRATIONS.md shows how receivers verify them.
"""

import base64
import binascii
import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import F
from django.utils import timezone

from apps.audit.models import DeliveryStatus, WebhookDelivery
from apps.audit.webhook_guard import (
    ResolutionFailed,
    SockAddress,
    UnsafeWebhookUrl,
    WebhookTarget,
    allow_private,
    parse_webhook_url,
    resolve_checked,
)

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
TOTAL_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 4096
MAX_ERROR_CHARS = 500
MAX_ATTEMPTS = 8
BACKOFF_SECONDS = 30
# A claim lapses after this: far longer than one attempt can take (TOTAL_TIMEOUT).
CLAIM_LEASE = timedelta(minutes=2)
# The sweep leaves a due row alone this long, so its own scheduled task goes first.
SWEEP_GRACE = timedelta(seconds=60)
SWEEP_BATCH = 500
# A row is due this much early: the web host that stamped it and the worker that claims it
# need not agree to the millisecond (far shorter than the first 30 s backoff).
CLOCK_SKEW = timedelta(seconds=5)
USER_AGENT = "Regent-Webhooks/1"


# --- Signing -----------------------------------------------------------------------------------


def webhook_message_id(delivery: WebhookDelivery) -> str:
    """The `webhook-id` header: one per event, the same on every retry and redelivery."""
    return f"evt_{delivery.event_id}"


def webhook_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of "{id}.{timestamp}.{body}" (Standard Webhooks)."""
    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secrets: list[str], message_id: str, body: bytes) -> dict[str, str]:
    """The delivery's headers; one signature per secret, space-separated (Standard Webhooks:
    a receiver accepts the message if any signature verifies with its secret)."""
    timestamp = int(time.time())
    signatures = [webhook_signature(secret, message_id, timestamp, body) for secret in secrets]
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Connection": "close",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }


# --- The pinned HTTP client --------------------------------------------------------------------


class DeliveryFailed(Exception):
    """The attempt did not get an HTTP answer (connection refused, timeout, TLS error…)."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes


def tls_context() -> ssl.SSLContext:
    """Certificate and host name verification as browsers do (tests add their own CA)."""
    return ssl.create_default_context()


class PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to one already-checked address, whatever the host name resolves to now;
    the host name still goes into the Host header (and, over TLS, the SNI and the
    certificate check)."""

    def __init__(self, host: str, port: int, address: SockAddress, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        family, sockaddr = self._address
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(min(CONNECT_TIMEOUT, self.timeout))
            sock.connect(sockaddr)
            self.sock = sock  # from here on the watchdog can cut it (a trickled handshake)
            sock.settimeout(self.timeout)
            self.sock = self.wrap(sock)
        except BaseException:
            sock.close()
            raise

    def wrap(self, sock: socket.socket) -> Any:
        return sock


class PinnedHTTPSConnection(PinnedHTTPConnection):
    default_port = 443

    def wrap(self, sock: socket.socket) -> Any:
        return tls_context().wrap_socket(sock, server_hostname=self.host)


def http_post(
    target: WebhookTarget, addresses: list[SockAddress], body: bytes, headers: dict[str, str]
) -> HttpAnswer:
    """POST `body` to the first of `addresses` that accepts a connection; never redirects.

    A watchdog closes the socket when the total time is up, so a server trickling its TLS
    handshake or its headers one byte at a time cannot hold the worker.
    """
    deadline = time.monotonic() + TOTAL_TIMEOUT
    connection_class = PinnedHTTPSConnection if target.scheme == "https" else PinnedHTTPConnection
    problem = "no address to connect to"
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection = connection_class(target.host, target.port, address, remaining)
        with _watchdog(connection, remaining) as expired:
            try:
                connection.connect()
            except OSError as error:  # ssl.SSLError included
                connection.close()
                if _out_of_time(error, expired):
                    raise DeliveryFailed(f"no answer within {TOTAL_TIMEOUT:g} s") from None
                problem = f"cannot connect to {address[1][0]}: {_reason(error)}"
                continue
            return _exchange(connection, target, body, headers, expired)
    raise DeliveryFailed(problem)


@contextlib.contextmanager
def _watchdog(connection: PinnedHTTPConnection, seconds: float) -> Iterator[threading.Event]:
    expired = threading.Event()
    timer = threading.Timer(max(0.0, seconds), _abort, (connection, expired))
    timer.daemon = True
    timer.start()
    try:
        yield expired
    finally:
        timer.cancel()


def _exchange(
    connection: PinnedHTTPConnection,
    target: WebhookTarget,
    body: bytes,
    headers: dict[str, str],
    expired: threading.Event,
) -> HttpAnswer:
    """Send and read on a connected socket; at most MAX_RESPONSE_BYTES of the body."""
    try:
        connection.request("POST", target.target, body=body, headers=headers)
        response = connection.getresponse()
        return HttpAnswer(response.status, response.read(MAX_RESPONSE_BYTES))
    except (OSError, http.client.HTTPException, ValueError) as error:
        if _out_of_time(error, expired):
            raise DeliveryFailed(f"no answer within {TOTAL_TIMEOUT:g} s") from None
        raise DeliveryFailed(_reason(error)) from None
    finally:
        connection.close()


def _out_of_time(error: BaseException, expired: threading.Event) -> bool:
    """The total time is up: the watchdog fired, or the socket's own timeout (set to the
    time remaining) beat it by a hair."""
    return expired.is_set() or isinstance(error, TimeoutError)


def _abort(connection: PinnedHTTPConnection, expired: threading.Event) -> None:
    expired.set()
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError | socket.timeout):
        return "timed out"
    return f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]


# --- One delivery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """What one attempt gave: an HTTP status, or an error (`final`: retrying cannot help)."""

    status: int | None = None
    error: str = ""
    final: bool = False
    duration_ms: int | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def webhook_deliver(delivery_id: int) -> WebhookDelivery | None:
    """Make one attempt at a due delivery; None if there was nothing to do (not due, done,
    being sent by someone else, or gone). Returns the row as the attempt left it."""
    now = timezone.now()
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now + CLOCK_SKEW
    ).update(
        status=DeliveryStatus.DELIVERING,
        attempts=F("attempts") + 1,
        next_attempt_at=now + CLAIM_LEASE,
    )
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.select_related("webhook").get(pk=delivery_id)
    attempt = _attempt(delivery)
    _finish(delivery, attempt)
    logger.info(
        "Webhook delivery %s (%s, attempt %s): %s",
        delivery.pk,
        delivery.event_type,
        delivery.attempts,
        delivery.status if not delivery.last_error else delivery.last_error,
    )
    return delivery


def _attempt(delivery: WebhookDelivery) -> Attempt:
    webhook = delivery.webhook
    if not webhook.active:
        return Attempt(error="the webhook is disabled", final=True)
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    try:
        secrets = webhook.signing_secrets(timezone.now())
        headers = signed_headers(secrets, webhook_message_id(delivery), body)
    except (binascii.Error, ValueError):
        return Attempt(error="the signing secret is unusable; recreate the webhook", final=True)
    started = time.monotonic()
    try:
        allowed = allow_private()
        # The stored URL is parsed and checked again: the rules may have tightened since.
        target = parse_webhook_url(webhook.url, allow_private=allowed)
        addresses = resolve_checked(target, allow_private=allowed)
        answer = http_post(target, addresses, body, headers)
    except UnsafeWebhookUrl as error:
        return Attempt(error=f"refused: {error.message}", final=True)
    except (ResolutionFailed, DeliveryFailed) as error:
        return Attempt(error=str(error), duration_ms=_elapsed_ms(started))
    return Attempt(
        status=answer.status, error=_answer_problem(answer), duration_ms=_elapsed_ms(started)
    )


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _answer_problem(answer: HttpAnswer) -> str:
    if 200 <= answer.status < 300:
        return ""
    if 300 <= answer.status < 400:
        return f"HTTP {answer.status}: redirects are not followed"
    excerpt = answer.body.decode("utf-8", "replace")
    excerpt = "".join(char if char.isprintable() else " " for char in excerpt).strip()
    return f"HTTP {answer.status}" + (f": {excerpt}"[: MAX_ERROR_CHARS - 9] if excerpt else "")


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failure: 30 s, 1 min, 2 min … (doubling)."""
    return timedelta(seconds=BACKOFF_SECONDS * 2 ** max(0, attempts - 1))


def _finish(delivery: WebhookDelivery, attempt: Attempt) -> None:
    """Record the attempt, if the row is still ours (a lapsed claim may have been taken)."""
    now = timezone.now()
    values: dict[str, Any] = {
        "response_code": attempt.status,
        "duration_ms": attempt.duration_ms,
        "last_error": attempt.error,
    }
    if attempt.succeeded:
        values.update(status=DeliveryStatus.SUCCEEDED, delivered_at=now, next_attempt_at=now)
    elif attempt.final or delivery.attempts >= MAX_ATTEMPTS:
        values.update(status=DeliveryStatus.FAILED, next_attempt_at=now)
    else:
        values.update(
            status=DeliveryStatus.PENDING, next_attempt_at=now + backoff(delivery.attempts)
        )
    WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.DELIVERING).update(
        **values
    )
    for name, value in values.items():
        setattr(delivery, name, value)


def retry_in_seconds(delivery: WebhookDelivery | None) -> float | None:
    """Seconds until a delivery left `pending` by an attempt is due again (None: no retry)."""
    if delivery is None or delivery.status != DeliveryStatus.PENDING:
        return None
    return max(0.0, (delivery.next_attempt_at - timezone.now()).total_seconds())


# --- Enqueueing and the sweep ------------------------------------------------------------------


def enqueue_delivery(delivery_id: int, countdown: float | None = None) -> None:
    """Publish the delivery task; a broker failure is logged, never raised (the sweep will)."""
    from apps.audit.tasks import deliver_webhook_task

    try:
        deliver_webhook_task.apply_async((delivery_id,), countdown=countdown)
    except Exception:
        logger.exception("Could not enqueue webhook delivery %s; the sweep will", delivery_id)


def webhook_sweep(*, limit: int = SWEEP_BATCH) -> int:
    """Hand out lapsed claims again and re-enqueue due deliveries whose task was lost (the
    broker was down at commit, a worker died). Safe to run concurrently: the claim decides."""
    now = timezone.now()
    lapsed = WebhookDelivery.objects.filter(
        status=DeliveryStatus.DELIVERING, next_attempt_at__lte=now
    )
    lapsed.filter(attempts__gte=MAX_ATTEMPTS).update(
        status=DeliveryStatus.FAILED, last_error="the sender stopped during the last attempt"
    )
    lapsed.update(status=DeliveryStatus.PENDING)
    due = WebhookDelivery.objects.filter(
        status=DeliveryStatus.PENDING, next_attempt_at__lte=now - SWEEP_GRACE
    ).order_by("next_attempt_at")
    ids = list(due.values_list("pk", flat=True)[:limit])
    for delivery_id in ids:
        enqueue_delivery(delivery_id)
    return len(ids)
