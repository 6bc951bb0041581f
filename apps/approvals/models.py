"""Stages, their policies and history, promotion requests, reviews and notifications."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from apps.registry.models import ModelVersion, RegisteredModel

DEFAULT_STAGES = (("staging", 1), ("production", 2))


class Stage(models.Model):
    """A named slot of a model (staging, production…) holding at most one version."""

    model = models.ForeignKey(RegisteredModel, models.CASCADE, related_name="stages")
    name = models.CharField(max_length=32)
    position = models.PositiveSmallIntegerField(default=0)
    # PROTECT: a version that holds a stage cannot disappear from under it.
    current_version = models.ForeignKey(
        ModelVersion, models.PROTECT, null=True, blank=True, related_name="held_stages"
    )
    since = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["model", "position", "name"]
        default_permissions = ("view",)
        permissions = [("approve_stage", "Can approve promotions to this stage")]
        constraints = [
            models.UniqueConstraint(fields=["model", "name"], name="stage_name_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}:{self.name}"

    def get_absolute_url(self) -> str:
        return reverse("approvals:stage-detail", args=[self.model.name, self.name])

    @property
    def audit_model_id(self) -> int:
        return self.model_id


class StageUserObjectPermission(UserObjectPermissionBase):
    """Guardian's direct foreign-key table for approvers: grants vanish with the stage."""

    content_object = models.ForeignKey(Stage, models.CASCADE)


class StageGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Stage, models.CASCADE)


class StagePolicy(models.Model):
    """What a promotion to a stage needs: approvals, gates, expiry."""

    stage = models.OneToOneField(Stage, models.CASCADE, related_name="policy")
    required_approvals = models.PositiveSmallIntegerField(default=1)
    request_ttl_hours = models.PositiveIntegerField(default=7 * 24)
    # Stage order: a version must have held this stage before (e.g. staging before production).
    requires_stage = models.ForeignKey(
        Stage, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # [{"metric": "accuracy", "op": ">=", "against": "holder"|"threshold", "threshold": 0.9}]
    metric_gates = models.JSONField(default=list, blank=True)
    required_card_sections = models.JSONField(default=list, blank=True)
    required_metadata = models.JSONField(default=list, blank=True)
    requires_verified_files = models.BooleanField(default=True)

    class Meta:
        verbose_name_plural = "stage policies"
        constraints = [
            models.CheckConstraint(
                condition=Q(request_ttl_hours__gte=1), name="policy_ttl_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"policy of {self.stage}"

    @property
    def audit_model_id(self) -> int:
        return self.stage.model_id


class PromotionStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    CANCELLED = "cancelled", "Cancelled"
    SUPERSEDED = "superseded", "Superseded"
    EXPIRED = "expired", "Expired"


class PromotionRequest(models.Model):
    """A request to put `version` into `stage`; decided by reviews under the stage's policy."""

    version = models.ForeignKey(ModelVersion, models.CASCADE, related_name="promotions")
    stage = models.ForeignKey(Stage, models.CASCADE, related_name="promotions")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    reason = models.TextField(blank=True)
    status = models.CharField(
        max_length=12, choices=PromotionStatus.choices, default=PromotionStatus.PENDING
    )
    required_approvals = models.PositiveSmallIntegerField()
    gate_results = models.JSONField(default=list, blank=True)
    # Bumped on every change; email links are bound to it and die when it moves.
    revision = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # At most one open request per version and stage: a double submit cannot fork.
            models.UniqueConstraint(
                fields=["version", "stage"],
                condition=Q(status="pending"),
                name="promotion_one_pending",
            ),
            models.CheckConstraint(
                condition=Q(status__in=PromotionStatus.values), name="promotion_status_valid"
            ),
        ]
        indexes = [models.Index(fields=["status", "expires_at"], name="promotion_open_idx")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.version} → {self.stage.name}"

    def get_absolute_url(self) -> str:
        return reverse("approvals:promotion-detail", args=[self.pk])

    @property
    def audit_model_id(self) -> int:
        return self.stage.model_id


class Decision(models.TextChoices):
    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"


class Review(models.Model):
    """One reviewer's decision on one promotion request."""

    promotion = models.ForeignKey(PromotionRequest, models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="+")
    decision = models.CharField(max_length=8, choices=Decision.choices)
    comment = models.TextField(blank=True)
    via = models.CharField(max_length=16)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["at"]
        constraints = [
            # A reviewer counts once toward the quorum, whatever the channel.
            models.UniqueConstraint(fields=["promotion", "reviewer"], name="review_once"),
        ]

    def __str__(self) -> str:
        return f"{self.reviewer} {self.decision} {self.promotion}"


class StageAssignment(models.Model):
    """History: `version` held `stage` from `started_at` until `ended_at` (None: still)."""

    stage = models.ForeignKey(Stage, models.CASCADE, related_name="history")
    version = models.ForeignKey(ModelVersion, models.PROTECT, related_name="stage_history")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    assigned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+"
    )
    promotion = models.ForeignKey(
        PromotionRequest, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    is_rollback = models.BooleanField(default=False)
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ["stage", "-started_at"]
        constraints = [
            # One open assignment per stage: the stage holds at most one version at a time.
            models.UniqueConstraint(
                fields=["stage"], condition=Q(ended_at__isnull=True), name="stage_one_holder"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.version} in {self.stage.name} from {self.started_at:%Y-%m-%d %H:%M}"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class Notification(models.Model):
    """One email to one recipient about one event; the unique row makes sending idempotent."""

    promotion = models.ForeignKey(PromotionRequest, models.CASCADE, related_name="notifications")
    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    kind = models.CharField(max_length=32)
    # Distinguishes repeated events of one kind (e.g. two rollbacks): the assignment id.
    event_key = models.CharField(max_length=64, blank=True)
    status = models.CharField(
        max_length=8, choices=NotificationStatus.choices, default=NotificationStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["promotion", "recipient", "kind", "event_key"],
                name="notification_once",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} to {self.recipient} ({self.status})"


class ReviewLink(models.Model):
    """A personal email approval link; single use is enforced by a conditional update."""

    promotion = models.ForeignKey(PromotionRequest, models.CASCADE, related_name="links")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    revision = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"link for {self.approver} on {self.promotion}"
