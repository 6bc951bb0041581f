"""Files a training script logs through `mlflow-artifacts`, and versions registered from them.

The stock client uploads `log_model`'s files with `PUT /api/2.0/mlflow-artifacts/artifacts/
<experiment>/<run id>/artifacts/<path>` (run files) or `…/<experiment>/models/<model id>/
artifacts/<path>` (MLflow 3 logged models). Regent streams each body to storage under an
id-derived key (`mlflow-staging/<uuid>`), hashing and counting it under the artifact size
limit; the user's path is only a column, checked by the registry's one path validator.

`create_model_version` with a source naming such files (`models:/m-…`, `runs:/<run>/<path>`,
`mlflow-artifacts:/…`) makes a `pending` version carrying the run's metrics and params, then a
task copies the files into it through `artifact_upload` and seals it, so it is verified like
any upload: the client's wait-for-READY loop sees PENDING_REGISTRATION, then READY or
FAILED_REGISTRATION with the reason.
"""

import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import IO, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from apps.audit.services import audit_record
from apps.mlflow_compat import tracking
from apps.mlflow_compat.errors import RESOURCE_DOES_NOT_EXIST, MlflowError, invalid
from apps.mlflow_compat.models import LoggedModel, Run, StagedFile
from apps.registry import services as registry
from apps.registry.artifacts import (
    ArtifactTooLarge,
    MeteredBody,
    artifact_path_key,
    artifact_upload,
    max_artifact_bytes,
    sweep_orphan_objects,
    version_seal,
)
from apps.registry.models import ModelVersion, RegisteredModel, VersionStatus
from apps.registry.paths import InvalidArtifactPath, normalize_artifact_path
from apps.registry.storage import delete_quietly, open_stream, save_stream
from apps.registry.validation import MAX_ENTRIES

logger = logging.getLogger(__name__)

STAGING_PREFIX = "mlflow-staging"
# <experiment id>/<run id>/artifacts[/path] or <experiment id>/models/<model id>/artifacts[/path]
_RUN_LOCATION = re.compile(r"(\d{1,18})/([0-9a-f]{32})/artifacts(?:/(.*))?")
_MODEL_LOCATION = re.compile(r"(\d{1,18})/models/(m-[0-9a-f]{32})/artifacts(?:/(.*))?")
_MODELS_URI = re.compile(r"models:/(m-[0-9a-f]{32})/?")
_RUNS_URI = re.compile(r"runs:/([0-9a-f]{32})(?:/(.*))?")
_ARTIFACTS_URI = re.compile(r"mlflow-artifacts:/(?!/)(.*)")


@dataclass(frozen=True)
class Location:
    """Where staged files live: a run or a logged model, and a path prefix inside it."""

    run: Run | None
    logged_model: LoggedModel | None
    prefix: str  # "" or a normalized relative path

    @property
    def owner_filter(self) -> Q:
        if self.run is not None:
            return Q(run=self.run)
        return Q(logged_model=self.logged_model)

    def files(self) -> list[StagedFile]:
        rows = StagedFile.objects.filter(self.owner_filter).order_by("path")
        if not self.prefix:
            return list(rows)
        return list(
            rows.filter(
                Q(path_key=artifact_path_key(self.prefix)) | Q(path__startswith=f"{self.prefix}/")
            )
        )

    def relative(self, path: str) -> str:
        """`path` relative to the prefix (a file named by the prefix itself keeps its name)."""
        if self.prefix and path.startswith(f"{self.prefix}/"):
            return path[len(self.prefix) + 1 :]
        return path.rsplit("/", 1)[-1] if self.prefix else path


def _not_found() -> MlflowError:
    return MlflowError(RESOURCE_DOES_NOT_EXIST, "No such artifact location.")


def _normalized(raw: str | None) -> str:
    if not raw:
        return ""
    try:
        # Only a trailing slash is tolerated (a folder, as listings name it): stripping a
        # leading one would accept `…/artifacts//etc/passwd`, an absolute path.
        return normalize_artifact_path(raw.rstrip("/") or raw)
    except InvalidArtifactPath as error:
        raise invalid(f"Invalid artifact path: {error}") from None


def location_for(user: Any, artifact_path: str) -> Location:
    """The caller's run or logged model an `mlflow-artifacts` path points into."""
    if match := _RUN_LOCATION.fullmatch(artifact_path):
        run = tracking.run_for(user, match.group(2))
        if str(run.experiment_id) != match.group(1):
            raise _not_found()
        return Location(run, None, _normalized(match.group(3)))
    if match := _MODEL_LOCATION.fullmatch(artifact_path):
        model = tracking.logged_model_for(user, match.group(2))
        if str(model.experiment_id) != match.group(1):
            raise _not_found()
        return Location(None, model, _normalized(match.group(3)))
    raise _not_found()


# --- Upload and download -------------------------------------------------------------------------


def staged_file_put(
    *, actor: Any, location: Location, stream: IO[bytes], content_length: int | None
) -> StagedFile:
    """Store one file at `location.prefix` (its path); the same path again replaces it."""
    path = location.prefix
    if not path:
        raise invalid("The artifact path must name a file.")
    limit = max_artifact_bytes()
    if content_length is not None and content_length > limit:
        raise ArtifactTooLarge(limit)
    key = f"{STAGING_PREFIX}/{uuid.uuid4().hex}"
    body = MeteredBody(stream, limit=limit, expected=content_length)
    try:
        save_stream(key, body)
        return _staged_record(actor, location, path, key, body)
    except BaseException:
        delete_quietly(key)
        raise


def _staged_record(
    actor: Any, location: Location, path: str, key: str, body: MeteredBody
) -> StagedFile:
    owner = {"run": location.run, "logged_model": location.logged_model}
    with transaction.atomic():
        replaced = (
            StagedFile.objects.select_for_update()
            .filter(location.owner_filter, path_key=artifact_path_key(path))
            .first()
        )
        if replaced is not None:
            replaced.delete()
            transaction.on_commit(partial(delete_quietly, replaced.storage_key))
        try:
            with transaction.atomic():
                staged = StagedFile.objects.create(
                    **owner,
                    path=path,
                    path_key=artifact_path_key(path),
                    size=body.size,
                    sha256=body.digest.hexdigest(),
                    storage_key=key,
                )
        except IntegrityError:  # a concurrent upload of the same path won
            raise MlflowError(
                "RESOURCE_CONFLICT", f"Another upload of {path!r} is in progress."
            ) from None
        audit_record(
            actor=actor,
            action="artifact.staged",
            target=staged,
            changes={"after": {"path": path, "size": body.size, "sha256": staged.sha256}},
        )
    return staged


def listing(location: Location) -> list[dict[str, Any]]:
    """MLflow's `list artifacts` answer for staged files: the direct children of the prefix."""
    files = ((staged.path, staged.size) for staged in location.files())
    return children_of(files, location.prefix)


def children_of(files: Iterable[tuple[str, int]], prefix: str) -> list[dict[str, Any]]:
    """The files and folders directly under `prefix`, as MLflow lists artifacts."""
    children: dict[str, dict[str, Any]] = {}
    base = f"{prefix}/" if prefix else ""
    for path, size in files:
        if not path.startswith(base):
            continue
        name, _, rest = path[len(base) :].partition("/")
        if rest:
            children.setdefault(name, {"path": name, "is_dir": True})
        else:
            children[name] = {"path": name, "is_dir": False, "file_size": size}
    return [children[name] for name in sorted(children)]


def staged_file_at(location: Location) -> StagedFile:
    found = (
        StagedFile.objects.filter(
            location.owner_filter, path_key=artifact_path_key(location.prefix)
        ).first()
        if location.prefix
        else None
    )
    if found is None:
        raise _not_found()
    return found


# --- Registering a version from staged files -------------------------------------------------


def staged_source(user: Any, source: str) -> Location | None:
    """The caller's staged files that `source` names; None for a location outside Regent.

    A run or logged model that is not Regent's, or not the caller's, is outside Regent as far
    as this caller can tell: the source is then kept as inert lineage metadata, as before.
    """
    try:
        if match := _MODELS_URI.fullmatch(source):
            return Location(None, tracking.logged_model_for(user, match.group(1)), "")
        if match := _RUNS_URI.fullmatch(source):
            return _run_location(tracking.run_for(user, match.group(1)), match.group(2))
        if match := _ARTIFACTS_URI.fullmatch(source):
            return location_for(user, match.group(1))
    except MlflowError as error:
        if error.code == RESOURCE_DOES_NOT_EXIST:
            return None
        raise
    return None


def _run_location(run: Run, raw_path: str | None) -> Location:
    """`runs:/<id>/<path>`: the run's own files under path, else its logged model so named."""
    path = _normalized(raw_path)
    own = Location(run, None, path)
    if own.files():
        return own
    named = LoggedModel.objects.filter(source_run=run, name=path or "model").order_by("-created_at")
    logged_model = named.first()
    return Location(None, logged_model, "") if logged_model is not None else own


def _version_metadata(location: Location) -> tuple[dict[str, float], dict[str, Any]]:
    """The run's latest finite metrics and its params (the logged model's win on a clash)."""
    run = location.run or (location.logged_model.source_run if location.logged_model else None)
    metrics = tracking.finite_metrics(run) if run is not None else {}
    params: dict[str, Any] = dict(run.params) if run is not None else {}
    if location.logged_model is not None:
        params.update(location.logged_model.params)
    return dict(list(metrics.items())[:MAX_ENTRIES]), dict(list(params.items())[:MAX_ENTRIES])


def _source_run_id(location: Location, run_id: str | None) -> str | None:
    run = location.run or (location.logged_model.source_run if location.logged_model else None)
    return run.run_id if run is not None else run_id


@transaction.atomic
def version_register_staged(
    *,
    actor: Any,
    model: RegisteredModel,
    source: str,
    location: Location,
    run_id: str | None,
    description: str,
    tags: dict[str, str],
) -> ModelVersion:
    """A `pending` version that receives `location`'s files in the background, then seals."""
    files = location.files()
    if not files:
        raise invalid(f"No files were logged at {source[:200]!r}: nothing to register.")
    metrics, params = _version_metadata(location)
    version = registry.version_create(
        actor=actor,
        model=model,
        description=description,
        metrics=metrics,
        params=params,
        tags=tags,
        source={"uri": source, "run_id": _source_run_id(location, run_id) or ""},
    )
    reason = f"Copying {len(files)} file{'s' if len(files) != 1 else ''} from the MLflow run."
    ModelVersion.objects.filter(pk=version.pk).update(status_reason=reason)
    version.status_reason = reason
    file_ids = [staged.pk for staged in files]
    transaction.on_commit(partial(_enqueue_import, version.pk, actor.pk, file_ids, location.prefix))
    return version


def _enqueue_import(version_id: int, actor_id: int, file_ids: list[int], prefix: str) -> None:
    from apps.mlflow_compat.tasks import import_staged_files_task

    try:
        import_staged_files_task.delay(version_id, actor_id, file_ids, prefix)
    except Exception:
        logger.exception("Could not enqueue the file import of version %s", version_id)
        version_import_failed(version_id, "Regent could not queue the file copy; try again.")


def import_staged_files(
    *, version_id: int, actor: Any, file_ids: list[int], prefix: str
) -> ModelVersion | None:
    """Copy the staged files into the version (skipping any already there), then seal it.

    Idempotent: a redelivered task finds the copied files and a sealed version. A staged file
    that is gone or broken fails the version with the reason.
    """
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None or version.status != VersionStatus.PENDING:
        return version
    location = Location(None, None, prefix)
    present = set(version.files.values_list("path_key", flat=True))
    for staged in StagedFile.objects.filter(pk__in=file_ids).order_by("path"):
        path = location.relative(staged.path)
        if artifact_path_key(path) in present:
            continue
        try:
            with open_stream(staged.storage_key) as stream:
                artifact_upload(
                    actor=actor,
                    version=version,
                    path=path,
                    stream=stream,
                    content_length=staged.size,
                    claimed_sha256=staged.sha256,
                )
        except FileNotFoundError:
            version_import_failed(version_id, f"The logged file {staged.path!r} is gone.")
            return None
        except OSError:
            raise  # storage trouble: the task retries
        except Exception as error:
            version_import_failed(version_id, f"Copying {staged.path!r} failed: {error}")
            return None
    if version.files.count() != len(file_ids):
        version_import_failed(version_id, "Some logged files were deleted before the copy.")
        return None
    return version_seal(actor=actor, version=version)


def version_import_failed(version_id: int, reason: str) -> None:
    """Mark a still-pending version failed with `reason`; audited "version.failed"."""
    with transaction.atomic():
        won = ModelVersion.objects.filter(pk=version_id, status=VersionStatus.PENDING).update(
            status=VersionStatus.FAILED, status_reason=reason[:1000], sealed_at=timezone.now()
        )
        if not won:
            return
        version = ModelVersion.objects.select_related("model").get(pk=version_id)
        audit_record(
            actor=None,
            action="version.failed",
            target=version,
            changes={
                "before": {"status": VersionStatus.PENDING.value},
                "after": {"status": VersionStatus.FAILED.value, "status_reason": reason[:1000]},
            },
        )


# --- Retention ----------------------------------------------------------------------------------

EXPIRY_BATCH = 500
MAX_LISTED_OWNERS = 100  # run and logged model ids named in one expiry event


def staged_files_expire(*, days: int | None = None, batch: int = EXPIRY_BATCH) -> int:
    """Delete the staged files older than `days` (REGENT_MLFLOW_STAGING_DAYS; 0 keeps them),
    then staging objects no row refers to (a crash mid-upload), once older than the registry's
    orphan grace. Files registered as versions live on as the versions' own copies. Each
    batch is one transaction audited "artifact.staging_expired"; objects go after commit.
    Returns how many files were deleted.
    """
    days = settings.REGENT_MLFLOW_STAGING_DAYS if days is None else days
    deleted = 0
    if days > 0:
        cutoff = timezone.now() - timedelta(days=days)
        while count := _expire_batch(cutoff, days, batch):
            deleted += count
    sweep_orphan_objects(prefix=STAGING_PREFIX, owner=StagedFile)
    return deleted


@transaction.atomic
def _expire_batch(cutoff: datetime, days: int, batch: int) -> int:
    rows = list(
        StagedFile.objects.select_for_update(skip_locked=True)
        .filter(created_at__lt=cutoff)
        .order_by("pk")[:batch]
    )
    if not rows:
        return 0
    StagedFile.objects.filter(pk__in=[row.pk for row in rows]).delete()
    runs = sorted({row.run_id for row in rows if row.run_id})
    logged_models = sorted({row.logged_model_id for row in rows if row.logged_model_id})
    audit_record(
        actor=None,
        action="artifact.staging_expired",
        changes={
            "files": len(rows),
            "bytes": sum(row.size for row in rows),
            "older_than_days": days,
            "runs": runs[:MAX_LISTED_OWNERS],
            "logged_models": logged_models[:MAX_LISTED_OWNERS],
        },
    )
    transaction.on_commit(partial(_delete_objects, [row.storage_key for row in rows]))
    return len(rows)


def _delete_objects(keys: list[str]) -> None:
    for key in keys:
        delete_quietly(key)
