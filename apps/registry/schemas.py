"""Request and response schemas of the model, version and lineage endpoints.

Project-wide decision (SECURITY AC-04, mass assignment): every input schema FORBIDS unknown
fields. A body carrying `status`, `number`, `sha256`, `created_by`, `model_id`… is a 422
that names the field, and nothing changes; read-only fields are never silently ignored.

Shapes are checked here (types: a 422); business rules (lengths, finite metrics, digests,
parents that exist) are checked by the services (a 400 naming the field), so the web pages
and the MLflow endpoints get the same rules.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Field, Schema
from pydantic import ConfigDict

from apps.registry.models import Artifact, ModelVersion, RegisteredModel
from apps.registry.selectors import model_stage_summary

VisibilityName = Literal["private", "internal"]


class StrictIn(Schema):
    """Base of every input schema: unknown fields are a 422 (no mass assignment)."""

    model_config = ConfigDict(extra="forbid")


class ModelCreateIn(StrictIn):
    name: str = Field(description="1-128 characters: letters, digits, '.', '_', '-'")
    description: str = Field("", description="Markdown model card")
    tags: dict[str, str] | None = None
    visibility: VisibilityName = "private"


class ModelPatchIn(StrictIn):
    description: str | None = None
    tags: dict[str, str] | None = Field(None, description="Replaces all tags")
    visibility: VisibilityName | None = Field(None, description="Needs the owner role")


class TrainingDataIn(StrictIn):
    uri: str = Field(description="Stored as metadata; Regent never opens it")
    sha256: str | None = Field(None, description="64 lowercase hex digits")
    description: str | None = None


class SourceIn(StrictIn):
    uri: str | None = None
    run_id: str | None = None
    commit: str | None = None


class VersionCreateIn(StrictIn):
    description: str = ""
    # Values are checked by the service, so NaN, infinities and booleans get a 400
    # naming the metric rather than a type error.
    metrics: dict[str, Any] | None = Field(None, description="name → finite number")
    params: dict[str, Any] | None = Field(None, description="name → scalar")
    tags: dict[str, str] | None = None
    training_data: list[TrainingDataIn] | None = None
    dependencies: dict[str, str | list[str]] | None = None
    source: SourceIn | None = None
    parents: list[str] | None = Field(None, description='["model-name/3", ...]')


class VersionPatchIn(StrictIn):
    description: str | None = None
    tags: dict[str, str] | None = Field(None, description="Replaces all tags")


def _username(obj: RegisteredModel | ModelVersion) -> str | None:
    return obj.created_by.username if obj.created_by_id else None


class ModelOut(Schema):
    name: str
    description: str
    tags: dict[str, str]
    visibility: str
    created_by: str | None
    created_at: datetime
    latest_version: int | None
    stages: dict[str, int | None]

    @staticmethod
    def resolve_created_by(obj: RegisteredModel) -> str | None:
        return _username(obj)

    @staticmethod
    def resolve_latest_version(obj: RegisteredModel) -> int | None:
        # Annotated by the selectors; a model just created has no versions.
        return getattr(obj, "latest_version", None)

    @staticmethod
    def resolve_stages(obj: RegisteredModel) -> dict[str, int | None]:
        return model_stage_summary(obj)


class ModelPage(Schema):
    items: list[ModelOut]
    count: int
    page: int
    pages: int


class FileOut(Schema):
    path: str
    size: int
    sha256: str | None = Field(description="Computed by the worker; null until verified")
    verified_at: datetime | None

    @staticmethod
    def resolve_sha256(obj: Artifact) -> str | None:
        return obj.sha256 or None


class TrainingDataOut(Schema):
    uri: str
    sha256: str | None = None
    description: str = ""


class VersionOut(Schema):
    version: int
    status: str
    status_reason: str
    framework: str | None
    files: list[FileOut]
    stages: list[str]
    created_by: str | None
    created_at: datetime
    description: str
    metrics: dict[str, float | int]
    params: dict[str, Any]
    tags: dict[str, str]
    training_data: list[TrainingDataOut]
    dependencies: dict[str, str | list[str]]
    source: dict[str, str]
    parents: list[str] = Field(description='Visible parents as "model-name/3"')

    @staticmethod
    def resolve_version(obj: ModelVersion) -> int:
        return obj.number

    @staticmethod
    def resolve_framework(obj: ModelVersion) -> str | None:
        return obj.framework or None

    @staticmethod
    def resolve_stages(obj: ModelVersion) -> list[str]:
        return sorted(stage.name for stage in obj.held_stages.all())

    @staticmethod
    def resolve_created_by(obj: ModelVersion) -> str | None:
        return _username(obj)

    @staticmethod
    def resolve_parents(obj: ModelVersion) -> list[str]:
        # Set by selectors.version_list/version_detail, filtered by the viewer.
        parents = getattr(obj, "visible_parents", [])
        return [f"{parent.model.name}/{parent.number}" for parent in parents]


class VersionPage(Schema):
    items: list[VersionOut]
    count: int
    page: int
    pages: int


class VersionNode(Schema):
    id: str = Field(examples=["version:fraud-detector/3"])
    type: Literal["version"]
    model: str
    version: int
    status: str


class DatasetNode(Schema):
    id: str = Field(examples=["data:s3://datasets/fraud/2024-06.parquet"])
    type: Literal["dataset"]
    uri: str
    sha256: str | None


class LineageEdge(Schema):
    from_: str = Field(alias="from")
    to: str
    kind: Literal["parent", "training_data"]


class LineageOut(Schema):
    nodes: list[Annotated[VersionNode | DatasetNode, Field(discriminator="type")]]
    edges: list[LineageEdge]
    truncated: bool = Field(description="True when the depth or node bound cut the graph")
