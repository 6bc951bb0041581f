"""The audit log: append-only, hash-chained events."""

from datetime import datetime

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    """One thing that happened, written in the same transaction as the change it records.

    Rows are never updated or deleted (a PostgreSQL trigger refuses it). Each row's `hash`
    covers its content and the previous row's hash, so editing, deleting, inserting or
    reordering rows breaks the chain at that point (`manage.py audit_verify`).
    """

    at = models.DateTimeField(db_index=True)
    # No database constraint and no cascade: deleting a user must not touch their trail.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.DO_NOTHING,
        null=True,
        blank=True,
        db_constraint=False,
        related_name="+",
    )
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=300, blank=True)
    # The registered model the event concerns, for permission filtering; a plain id, not a
    # foreign key, because the log outlives the objects it describes.
    model_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    changes = models.JSONField(default=dict, blank=True)
    via = models.CharField(max_length=16, db_index=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["target_type", "target_id"], name="audit_target_idx"),
            models.Index(fields=["actor", "-id"], name="audit_actor_idx"),
        ]
        constraints = [
            # Two events can never claim the same predecessor: the chain stays linear.
            models.UniqueConstraint(fields=["prev_hash"], name="audit_prev_hash_unique"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.target_label}"


class AuditChainHead(models.Model):
    """The chain's newest hash, in one row that appends update (PostgreSQL).

    The row lock serialises writers: a second append waits for the first to commit, then
    PostgreSQL re-reads the row and computes from its new hash, so the lock, the head read,
    the hashing and the INSERT are one statement (apps.audit.services). Derived state: seeded
    from the last event when missing; a row rewound to an older hash makes the next append
    claim a predecessor already taken, which the unique `prev_hash` refuses, and any other
    wrong hash breaks the link at the next event, which `audit_verify` names. SQLite
    serialises write transactions itself and reads the head from the events.
    """

    id = models.PositiveSmallIntegerField(primary_key=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="audit_head_single")]

    def __str__(self) -> str:
        return self.hash


class AuditCheck(models.Model):
    """The result of the last chain verifications, shown on the audit page."""

    checked_at = models.DateTimeField(auto_now_add=True)
    ok = models.BooleanField()
    events_checked = models.BigIntegerField()
    first_broken_id = models.BigIntegerField(null=True, blank=True)
    message = models.TextField(blank=True)
    head_hash = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-checked_at"]
        get_latest_by = "checked_at"

    def __str__(self) -> str:
        return f"{'intact' if self.ok else 'broken'} at {self.checked_at:%Y-%m-%d %H:%M}"


# --- Webhooks --------------------------------------------------------------------------------
# Outbound notifications ride on the log: `audit_record` hands each event to
# `apps.audit.webhooks.webhook_fanout`, which writes one WebhookDelivery per subscribed
# endpoint in the same transaction (an outbox); a Celery task then sends it, signed.

# The audit actions an endpoint may subscribe to, in the order the API documents them.
WEBHOOK_EVENTS = (
    "version.created",
    "version.ready",
    "version.failed",
    "promotion.requested",
    "promotion.approved",
    "promotion.rejected",
    "stage.changed",
    "stage.rolled_back",
)


class Webhook(models.Model):
    """An endpoint that receives signed POSTs for some events of one model, or of every
    model (`model` null: a global webhook, which only superusers manage)."""

    model = models.ForeignKey(
        "registry.RegisteredModel",
        models.CASCADE,
        null=True,
        blank=True,
        related_name="webhooks",
    )
    # Stored in the canonical form the SSRF guard produced (validated = stored = used).
    url = models.CharField(max_length=2048)
    events = models.JSONField(default=list)
    description = models.CharField(max_length=1000, blank=True)
    # "whsec_" + base64(24 random bytes). Needed in clear to sign every delivery, so it is
    # stored; it is shown once at creation and never again: not by the API, not in the
    # audit log, not in logs.
    secret = models.CharField(max_length=64, editable=False)
    # After a rotation, the secret it replaced still signs deliveries (a second signature)
    # until `previous_secret_until`, so receivers can switch without rejecting any.
    previous_secret = models.CharField(max_length=64, blank=True, editable=False)
    previous_secret_until = models.DateTimeField(null=True, blank=True, editable=False)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        # The host only: paths and queries of webhook URLs often carry a token of their own.
        from urllib.parse import urlsplit

        return f"webhook #{self.pk} to {urlsplit(self.url).hostname or '?'}"

    @property
    def audit_model_id(self) -> int | None:
        return self.model_id

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets that sign a delivery now: the current one, then the one it replaced
        while its overlap lasts."""
        until = self.previous_secret_until
        if self.previous_secret and until is not None and now < until:
            return [self.secret, self.previous_secret]
        return [self.secret]


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERING = "delivering", "Delivering"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    """One event for one endpoint: the outbox row, then the log of its latest attempt."""

    webhook = models.ForeignKey(Webhook, models.CASCADE, related_name="deliveries")
    # The audit event's id (the `webhook-id` header is derived from it, stable across retries).
    event_id = models.CharField(max_length=64)
    event_type = models.CharField(max_length=64)
    # Built once at fan-out: retries and redeliveries send the same document.
    payload = models.JSONField()
    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # pending: when the next attempt is due; delivering: when the sender's claim lapses (a
    # worker killed mid-send), after which the sweep hands the row out again.
    next_attempt_at = models.DateTimeField(db_default=models.functions.Now())
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            # One delivery per endpoint per event: a fan-out or a task run twice sends once.
            models.UniqueConstraint(fields=["webhook", "event_id"], name="webhook_delivery_once"),
            models.CheckConstraint(
                condition=models.Q(status__in=DeliveryStatus.values),
                name="webhook_delivery_status_valid",
            ),
        ]
        indexes = [
            # The sweep: due pending rows and lapsed claims.
            models.Index(fields=["status", "next_attempt_at"], name="webhook_delivery_due_idx"),
            # The delivery log of one endpoint, newest first.
            models.Index(fields=["webhook", "-id"], name="webhook_delivery_log_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} #{self.event_id} to webhook #{self.webhook_id} ({self.status})"
