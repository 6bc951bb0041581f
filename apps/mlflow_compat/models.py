"""MLflow aliases: named pointers from a registered model to one of its versions.

Stage names are not stored here: an alias that names a stage of the model is that stage,
held by `apps.approvals.models.Stage` and moved only through a promotion request.
"""

from django.db import models

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
