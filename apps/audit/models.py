"""The audit log: append-only, hash-chained events."""

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
