"""MLflow aliases: named pointers from a registered model to one of its versions.

Stage names are not stored here: an alias that names a stage of the model is that stage,
held by `apps.approvals.models.Stage` and moved only through a promotion request.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.registry.models import ModelVersion, RegisteredModel


class ModelAlias(models.Model):
    """A free alias (`champion`, `challenger`…) of a model, pointing at one of its versions.

    `version` always belongs to `model`: `alias_set` is the only writer and checks it.
    """

    model = models.ForeignKey(RegisteredModel, models.CASCADE, related_name="mlflow_aliases")
    alias = models.CharField(max_length=64)
    version = models.ForeignKey(ModelVersion, models.CASCADE, related_name="mlflow_aliases")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model", "alias"]
        constraints = [
            # An alias names one version at a time: moving it replaces the row's version.
            models.UniqueConstraint(fields=["model", "alias"], name="mlflow_alias_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.alias}"

    @property
    def audit_model_id(self) -> int:
        return self.model_id


# --- The tracking staging area -----------------------------------------------------------------
#
# Regent is a registry, not a tracking server. These rows exist so that a training script that
# points MLFLOW_TRACKING_URI at Regent can run `mlflow.<flavor>.log_model(...,
# registered_model_name=...)` unchanged: the run, its params and metrics, the logged model and
# its files are kept here, private to the user who created them, until a model version is
# registered from them. Registration copies the files into the version (then verified like any
# upload) and the run's latest metrics and params into the version's metadata.


class Experiment(models.Model):
    """An MLflow experiment: a name grouping runs. Id 0 ("Default") is everyone's; others
    belong to their creator and are visible to nobody else."""

    DEFAULT_ID = 0

    name = models.CharField(max_length=500)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.CASCADE,
        null=True,
        blank=True,
        related_name="mlflow_experiments",
    )
    tags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pk"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="mlflow_experiment_unique"),
        ]

    def __str__(self) -> str:
        return self.name


class RunStatus(models.TextChoices):
    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class Run(models.Model):
    """One training run: params, tags, metric history and staged files; its creator's only."""

    run_id = models.CharField(max_length=32, unique=True)
    experiment = models.ForeignKey(Experiment, models.PROTECT, related_name="runs")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="mlflow_runs")
    name = models.CharField(max_length=250, blank=True)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.RUNNING)
    start_time = models.BigIntegerField(null=True, blank=True)  # ms since the epoch, as sent
    end_time = models.BigIntegerField(null=True, blank=True)
    params = models.JSONField(default=dict, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "experiment"], name="mlflow_run_owner_exp")]

    def __str__(self) -> str:
        return self.run_id


class RunMetric(models.Model):
    """One logged metric value; the run's value of a key is its latest (step, timestamp)."""

    run = models.ForeignKey(Run, models.CASCADE, related_name="metrics")
    key = models.CharField(max_length=250)
    value = models.FloatField()
    timestamp = models.BigIntegerField()
    step = models.BigIntegerField(default=0)
    model_id = models.CharField(max_length=40, blank=True)

    class Meta:
        ordering = ["run", "key", "step", "timestamp", "pk"]
        indexes = [models.Index(fields=["run", "key", "step"], name="mlflow_metric_run_key")]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.key}={self.value}"


class LoggedModelStatus(models.TextChoices):
    PENDING = "LOGGED_MODEL_PENDING"
    READY = "LOGGED_MODEL_READY"
    FAILED = "LOGGED_MODEL_UPLOAD_FAILED"


class LoggedModel(models.Model):
    """MLflow 3's logged model (`models:/m-…`): the files `log_model` wrote, before registry."""

    model_id = models.CharField(max_length=40, unique=True)
    experiment = models.ForeignKey(Experiment, models.PROTECT, related_name="logged_models")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="mlflow_logged_models"
    )
    source_run = models.ForeignKey(
        Run, models.CASCADE, null=True, blank=True, related_name="logged_models"
    )
    name = models.CharField(max_length=250)
    model_type = models.CharField(max_length=250, blank=True)
    status = models.CharField(
        max_length=32, choices=LoggedModelStatus.choices, default=LoggedModelStatus.PENDING
    )
    params = models.JSONField(default=dict, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.model_id


class StagedFile(models.Model):
    """A file uploaded through `mlflow-artifacts` for a run or a logged model (exactly one).

    Stored under an id-derived key outside the registry's prefix (`mlflow-staging/…`); the
    user's path is only a column. Uploading the same path again replaces the file, as in MLflow.
    """

    run = models.ForeignKey(Run, models.CASCADE, null=True, blank=True, related_name="files")
    logged_model = models.ForeignKey(
        LoggedModel, models.CASCADE, null=True, blank=True, related_name="files"
    )
    path = models.CharField(max_length=1024)
    path_key = models.CharField(max_length=1024)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["path"]
        constraints = [
            models.CheckConstraint(
                condition=Q(run__isnull=False, logged_model__isnull=True)
                | Q(run__isnull=True, logged_model__isnull=False),
                name="mlflow_staged_one_owner",
            ),
            models.UniqueConstraint(
                fields=["run", "path_key"],
                condition=Q(run__isnull=False),
                name="mlflow_staged_run_path_unique",
            ),
            models.UniqueConstraint(
                fields=["logged_model", "path_key"],
                condition=Q(logged_model__isnull=False),
                name="mlflow_staged_model_path_unique",
            ),
            models.CheckConstraint(condition=Q(size__gte=0), name="mlflow_staged_size"),
        ]

    def __str__(self) -> str:
        return self.path
