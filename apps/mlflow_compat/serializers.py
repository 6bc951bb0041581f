"""Regent objects in MLflow's wire format (`mlflow/protos/model_registry.proto`).

As MLflow's server writes them: proto field names, `version` as a string, timestamps as
integer milliseconds since the epoch, `status` as the enum name, and fields MLflow leaves
unset left out (no run_id → no `run_id` key). Objects come from `selectors` already loaded.
"""

from datetime import UTC, datetime
from typing import Any

from apps.mlflow_compat import registry_files
from apps.mlflow_compat.selectors import (
    NO_STAGE,
    alias_names,
    held_stage_names,
    mlflow_stage_name,
)
from apps.registry.models import ModelVersion, RegisteredModel, VersionStatus

MLFLOW_STATUS = {
    VersionStatus.PENDING: "PENDING_REGISTRATION",
    VersionStatus.VERIFYING: "PENDING_REGISTRATION",
    VersionStatus.READY: "READY",
    VersionStatus.FAILED: "FAILED_REGISTRATION",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in sorted(tags.items())]


def _status_message(version: ModelVersion) -> str:
    if version.status == VersionStatus.FAILED:
        return version.status_reason
    if version.status == VersionStatus.PENDING:
        # A version registered from an MLflow run says that its files are being copied in.
        return version.status_reason or (
            "Waiting for files to be uploaded to Regent and the version sealed."
        )
    if version.status == VersionStatus.VERIFYING:
        done, total = version.bytes_verified, version.bytes_total
        return f"Regent is verifying the files: {done} of {total} bytes."
    return ""


def _creator_name(version: ModelVersion) -> str | None:
    if hasattr(version, "mlflow_user_name"):  # from `selectors.versions_loaded`
        return version.mlflow_user_name
    return version.created_by.get_username() if version.created_by is not None else None


def version_json(version: ModelVersion) -> dict[str, Any]:
    """A ModelVersion message; `version` comes from `selectors.versions_loaded`."""
    held = held_stage_names(version)  # most advanced first
    aliases = sorted(alias_names(version) + held)
    last_updated = getattr(version, "last_updated", None) or version.created_at
    body: dict[str, Any] = {
        "name": version.model.name,
        "version": str(version.number),
        "creation_timestamp": timestamp_ms(version.created_at),
        "last_updated_timestamp": timestamp_ms(last_updated),
    }
    if (user_name := _creator_name(version)) is not None:
        body["user_id"] = user_name
    body["current_stage"] = mlflow_stage_name(held[0]) if held else NO_STAGE
    body["description"] = version.description
    if version.source.get("uri"):
        body["source"] = version.source["uri"]
    if version.source.get("run_id"):
        body["run_id"] = version.source["run_id"]
    body["status"] = MLFLOW_STATUS[version.status]
    if message := _status_message(version):
        body["status_message"] = message
    if version.tags:
        body["tags"] = _tags(version.tags)
    if aliases:
        body["aliases"] = aliases
    return body


def model_json(model: RegisteredModel) -> dict[str, Any]:
    """A RegisteredModel message; `model` comes from `selectors.models_loaded`."""
    body: dict[str, Any] = {
        "name": model.name,
        "creation_timestamp": timestamp_ms(model.created_at),
        "last_updated_timestamp": timestamp_ms(model.updated_at),
    }
    if model.created_by is not None:
        body["user_id"] = model.created_by.get_username()
    if model.description:
        body["description"] = model.description
    if model.mlflow_latest:
        body["latest_versions"] = [version_json(version) for version in model.mlflow_latest]
    if model.tags:
        body["tags"] = _tags(model.tags)
    if model.mlflow_alias_pairs:
        body["aliases"] = [
            {"alias": alias, "version": str(number)} for alias, number in model.mlflow_alias_pairs
        ]
    return body


def download_uri(version: ModelVersion) -> str:
    """Where the files are: Regent's URL for them (one MLflow's loaders can list and download
    from), or the source for external versions."""
    if version.external_artifacts:
        return version.source.get("uri", "")
    return registry_files.download_uri(version)
