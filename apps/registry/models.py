"""The catalog: registered models, their immutable versions, artifacts and lineage."""

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.urls import reverse
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase


class Visibility(models.TextChoices):
    PRIVATE = "private", "Private"
    INTERNAL = "internal", "Internal"


class RegisteredModel(models.Model):
    """A named model; its versions carry the files. Access is granted per model."""

    name = models.CharField(max_length=128)
    # NFKC + casefold of the name: look-alike and case-only duplicates collide here.
    name_key = models.CharField(max_length=128, unique=True, editable=False)
    description = models.TextField(blank=True)
    tags = models.JSONField(default=dict, blank=True)
    visibility = models.CharField(
        max_length=8, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    # Per metric name: "higher" or "lower" is better (compare and metric gates).
    metric_directions = models.JSONField(default=dict, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The last number handed out; bumped under a row lock so numbers never repeat or skip.
    last_version_number = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["name_key"]
        permissions = [("manage_registeredmodel", "Can grant roles and configure stages")]
        constraints = [
            models.CheckConstraint(
                condition=Q(visibility__in=Visibility.values), name="model_visibility_valid"
            ),
        ]
        indexes = [
            models.Index(fields=["-updated_at"], name="model_recent_idx"),
            # MLflow's `name = 'x'`, `name IN (…)` and `name LIKE 'prefix%'` (an anchored
            # regex) use it: pattern ops compare bytes, so a prefix is a range whatever the
            # database's collation.
            models.Index(
                fields=["name"], name="model_name_pattern_idx", opclasses=["varchar_pattern_ops"]
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("registry:model-detail", args=[self.name])

    @property
    def audit_model_id(self) -> int:
        return self.pk

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None


class RegisteredModelUserObjectPermission(UserObjectPermissionBase):
    """Guardian's direct foreign-key table: grants vanish with the model (no orphan rows)."""

    content_object = models.ForeignKey(RegisteredModel, models.CASCADE)


class RegisteredModelGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(RegisteredModel, models.CASCADE)


class VersionStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    VERIFYING = "verifying", "Verifying"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class ModelVersion(models.Model):
    """One immutable version: files are fixed once sealed; metadata edits are audited."""

    model = models.ForeignKey(RegisteredModel, models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(
        max_length=10, choices=VersionStatus.choices, default=VersionStatus.PENDING
    )
    status_reason = models.TextField(blank=True)
    description = models.TextField(blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    params = models.JSONField(default=dict, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    training_data = models.JSONField(default=list, blank=True)
    dependencies = models.JSONField(default=dict, blank=True)
    source = models.JSONField(default=dict, blank=True)
    framework = models.CharField(max_length=32, blank=True)
    framework_details = models.JSONField(default=dict, blank=True)
    # Files live outside Regent (an MLflow `source` only): never fetched, never verified.
    external_artifacts = models.BooleanField(default=False)
    parents = models.ManyToManyField(
        "self", through="VersionParent", symmetrical=False, related_name="children"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    sealed_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    # Progress of the checksum worker, for "verifying — 1.2 of 2.8 GB".
    bytes_total = models.BigIntegerField(default=0)
    bytes_verified = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["model", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="version_number_unique"),
            models.CheckConstraint(condition=Q(number__gte=1), name="version_number_positive"),
            models.CheckConstraint(
                condition=Q(status__in=VersionStatus.values), name="version_status_valid"
            ),
        ]
        indexes = [models.Index(fields=["status"], name="version_status_idx")]

    def __str__(self) -> str:
        return f"{self.model.name}/{self.number}"

    def get_absolute_url(self) -> str:
        return reverse("registry:version-detail", args=[self.model.name, self.number])

    @property
    def audit_model_id(self) -> int:
        return self.model_id

    @property
    def is_sealed(self) -> bool:
        return self.status != VersionStatus.PENDING


class VersionParent(models.Model):
    """Lineage: `child` was derived from `parent` (fine-tuned, distilled…)."""

    child = models.ForeignKey(ModelVersion, models.CASCADE, related_name="parent_links")
    parent = models.ForeignKey(ModelVersion, models.CASCADE, related_name="child_links")
    relation = models.CharField(max_length=32, default="derived_from", blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["child", "parent"], name="lineage_edge_unique"),
            models.CheckConstraint(condition=~Q(child=F("parent")), name="lineage_no_self_edge"),
        ]

    def __str__(self) -> str:
        return f"{self.child} ← {self.parent}"


class Artifact(models.Model):
    """A file of a version, stored under a key derived from ids, never from its path."""

    version = models.ForeignKey(ModelVersion, models.CASCADE, related_name="files")
    path = models.CharField(max_length=1024)
    # casefold(NFC(path)): two files that would collide on a case-insensitive disk are refused.
    path_key = models.CharField(max_length=1024, editable=False)
    size = models.BigIntegerField()
    upload_sha256 = models.CharField(max_length=64)
    claimed_sha256 = models.CharField(max_length=64, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    storage_key = models.CharField(max_length=255, unique=True)
    kind = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    verified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["path"]
        constraints = [
            models.UniqueConstraint(fields=["version", "path_key"], name="artifact_path_unique"),
            models.CheckConstraint(condition=Q(size__gte=0), name="artifact_size_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"{self.version}:{self.path}"

    @property
    def audit_model_id(self) -> int:
        return self.version.model_id
