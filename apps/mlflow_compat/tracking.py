"""Experiments, runs and logged models: the tracking calls `log_model` makes, kept private.

Regent keeps just enough of MLflow's tracking API for a training script to point
MLFLOW_TRACKING_URI at Regent and register what it logs (docs/MLFLOW.md, "Tracking"). Every
experiment except the shared Default (id 0), every run and every logged model belongs to the
user who created it; anybody else gets the same RESOURCE_DOES_NOT_EXIST as for a missing one.

Creations and run status changes are audited; the high-volume training telemetry (each metric
point, param and tag) is not — what reaches the registry is audited when a version is created
from the run, with the run's metrics and params in the event.
"""

import math
import posixpath
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Q

from apps.audit.services import audit_record
from apps.mlflow_compat.errors import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    MlflowError,
    invalid,
)
from apps.mlflow_compat.models import (
    Experiment,
    LoggedModel,
    LoggedModelStatus,
    Run,
    RunMetric,
    RunStatus,
)

DEFAULT_EXPERIMENT_NAME = "Default"
MAX_NAME_CHARS = 250
MAX_EXPERIMENT_NAME_CHARS = 500
MAX_KEY_CHARS = 250
MAX_PARAM_VALUE_CHARS = 6_000
MAX_TAG_VALUE_CHARS = 8_000
MAX_BATCH_METRICS, MAX_BATCH_PARAMS, MAX_BATCH_TAGS = 1_000, 100, 100
MAX_HISTORY = 25_000
_KEY = re.compile(r"[\w .\-/:]+")
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_LOGGED_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")


def _not_found(message: str) -> MlflowError:
    return MlflowError(RESOURCE_DOES_NOT_EXIST, message)


def now_ms() -> int:
    return int(time.time() * 1000)


def _key(key: Any, what: str) -> str:
    """An MLflow key: letters, digits, `_ - . space / :`, at most 250 characters, and (as
    MLflow's server checks, since its file store makes keys file names) a path that names
    only itself: no `..`, no leading `/`, nothing `normpath` would rewrite (`a//b`, `a/`)."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS or not _KEY.fullmatch(key):
        raise invalid(
            f"Invalid {what} name: {str(key)[:80]!r}. Names may only contain alphanumerics, "
            f"underscores, dashes, periods, spaces, slashes and colons (at most {MAX_KEY_CHARS})."
        )
    normalized = posixpath.normpath(key)
    if normalized != key or normalized == "." or normalized.startswith(("..", "/")):
        raise invalid(
            f"Invalid {what} name: {key[:80]!r}. Names may be treated as files in certain "
            "cases, and must not resolve to other names when treated as such. This name would "
            f"resolve to {normalized[:80]!r}."
        )
    return key


def _text(value: Any, what: str, max_chars: int) -> str:
    value = "" if value is None else value
    if not isinstance(value, str) or len(value) > max_chars or "\x00" in value:
        raise invalid(f"Invalid value for {what}: a string of at most {max_chars} characters.")
    return value


def _tags(tags: dict[str, Any]) -> dict[str, str]:
    if len(tags) > MAX_BATCH_TAGS:
        raise invalid(f"At most {MAX_BATCH_TAGS} tags per request.")
    return {_key(k, "tag"): _text(v, f"tag {k!r}", MAX_TAG_VALUE_CHARS) for k, v in tags.items()}


# --- Experiments ---------------------------------------------------------------------------------


def default_experiment() -> Experiment:
    experiment, _ = Experiment.objects.get_or_create(
        pk=Experiment.DEFAULT_ID, defaults={"name": DEFAULT_EXPERIMENT_NAME}
    )
    return experiment


def _visible_experiments(user: Any) -> Any:
    return Experiment.objects.filter(Q(owner=user) | Q(pk=Experiment.DEFAULT_ID))


def experiment_for(user: Any, experiment_id: Any) -> Experiment:
    """The experiment with this id if it is the caller's or the Default; else not found."""
    text = str(experiment_id if experiment_id is not None else "")
    if text == str(Experiment.DEFAULT_ID):
        return default_experiment()
    found = None
    if text.isdecimal() and text.isascii() and len(text) < 18:
        found = _visible_experiments(user).filter(pk=int(text)).first()
    if found is None:
        raise _not_found(f"Could not find experiment with ID {text[:40]}")
    return found


def experiment_by_name(user: Any, name: str) -> Experiment:
    if name == DEFAULT_EXPERIMENT_NAME:
        return default_experiment()
    found = Experiment.objects.filter(owner=user, name=name).first()
    if found is None:
        raise _not_found(f"Could not find experiment with name '{name[:200]}'")
    return found


def experiments_visible(user: Any) -> list[Experiment]:
    default_experiment()
    return list(_visible_experiments(user).order_by("pk"))


@transaction.atomic
def experiment_create(*, actor: Any, name: Any, tags: dict[str, Any]) -> Experiment:
    name = _text(name, "experiment name", MAX_EXPERIMENT_NAME_CHARS).strip()
    if not name:
        raise invalid("Invalid experiment name: ''. Experiment names cannot be empty.")
    if name == DEFAULT_EXPERIMENT_NAME:
        raise MlflowError(RESOURCE_ALREADY_EXISTS, f"Experiment '{name}' already exists.")
    try:
        with transaction.atomic():
            experiment = Experiment.objects.create(name=name, owner=actor, tags=_tags(tags))
    except IntegrityError:
        raise MlflowError(RESOURCE_ALREADY_EXISTS, f"Experiment '{name}' already exists.") from None
    audit_record(
        actor=actor,
        action="experiment.created",
        target=experiment,
        changes={"after": {"name": name}},
    )
    return experiment


# --- Runs ----------------------------------------------------------------------------------------


def run_for(user: Any, run_id: Any) -> Run:
    """The caller's run with this id; anybody else's, or none, is the same not-found."""
    text = run_id if isinstance(run_id, str) else ""
    run = None
    if _RUN_ID.fullmatch(text):
        run = Run.objects.filter(run_id=text, owner=user).select_related("experiment").first()
    if run is None:
        raise _not_found(f"Run with id={str(run_id)[:40]} not found")
    return run


@transaction.atomic
def run_create(
    *,
    actor: Any,
    experiment: Experiment,
    name: str | None,
    start_time: Any,
    tags: dict[str, Any],
) -> Run:
    tags = _tags(tags)
    name = _text(name or tags.get("mlflow.runName") or "", "run name", MAX_NAME_CHARS)
    run_id = uuid.uuid4().hex
    run = Run.objects.create(
        run_id=run_id,
        experiment=experiment,
        owner=actor,
        name=name or f"run-{run_id[:8]}",
        start_time=_integer(start_time, "start_time", default=now_ms()),
        tags={**tags, "mlflow.runName": name or f"run-{run_id[:8]}"},
    )
    audit_record(
        actor=actor,
        action="run.created",
        target=run,
        changes={"after": {"run_id": run_id, "experiment": experiment.pk, "name": run.name}},
    )
    return run


@transaction.atomic
def run_update(*, actor: Any, run: Run, status: str | None, end_time: Any, name: str | None) -> Run:
    locked = Run.objects.select_for_update().get(pk=run.pk)
    before = locked.status
    if status is not None:
        if status not in RunStatus.values:
            raise invalid(f"Invalid run status {status[:40]!r}.")
        locked.status = status
    if end_time is not None:
        locked.end_time = _integer(end_time, "end_time", default=now_ms())
    if name:
        locked.name = _text(name, "run name", MAX_NAME_CHARS)
        locked.tags = {**locked.tags, "mlflow.runName": locked.name}
    locked.save(update_fields=["status", "end_time", "name", "tags"])
    if locked.status != before:
        audit_record(
            actor=actor,
            action="run.updated",
            target=locked,
            changes={"before": {"status": before}, "after": {"status": locked.status}},
        )
    return locked


def _metric_rows(run: Run, metrics: list[Any]) -> list[RunMetric]:
    if len(metrics) > MAX_BATCH_METRICS:
        raise invalid(f"At most {MAX_BATCH_METRICS} metrics per request.")
    rows = []
    for metric in metrics:
        if not isinstance(metric, dict):
            raise invalid("Each metric must be an object with key, value, timestamp and step.")
        value = metric.get("value")
        if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
            value = float(value.replace("Infinity", "inf"))
        too_big = isinstance(value, int) and abs(value) > 1e308  # float() would overflow
        if isinstance(value, bool) or not isinstance(value, int | float) or too_big:
            raise invalid(f"Invalid value for metric {str(metric.get('key'))[:80]!r}.")
        rows.append(
            RunMetric(
                run=run,
                key=_key(metric.get("key"), "metric"),
                value=float(value),
                timestamp=_integer(metric.get("timestamp"), "timestamp", default=now_ms()),
                step=_integer(metric.get("step"), "step", default=0),
                model_id=_text(metric.get("model_id"), "model_id", 40),
            )
        )
    return rows


def _integer(value: Any, what: str, *, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.lstrip("-").isdecimal() and value.isascii():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63:
        raise invalid(f"Invalid value {str(value)[:40]!r} for {what}: expected an integer.")
    return value


def _merged_params(current: dict[str, str], params: list[Any], owner: str) -> dict[str, str]:
    """MLflow params are write-once: the same value again is fine, a different one is not."""
    if len(params) > MAX_BATCH_PARAMS:
        raise invalid(f"At most {MAX_BATCH_PARAMS} params per request.")
    merged = dict(current)
    for param in params:
        if not isinstance(param, dict):
            raise invalid("Each param must be an object with key and value.")
        key = _key(param.get("key"), "param")
        value = _text(param.get("value"), f"param {key!r}", MAX_PARAM_VALUE_CHARS)
        if key in merged and merged[key] != value:
            raise invalid(
                f"Changing param values is not allowed. Param with key='{key}' was already "
                f"logged with value='{merged[key][:200]}' for {owner}. "
                f"Attempted logging new value '{value[:200]}'."
            )
        merged[key] = value
    return merged


@transaction.atomic
def run_log_batch(
    *,
    run: Run,
    metrics: Sequence[Any] = (),
    params: Sequence[Any] = (),
    tags: dict[str, Any] | None = None,
) -> None:
    """Append metric points, add params (write-once) and set tags, all or nothing."""
    rows = _metric_rows(run, list(metrics))
    locked = Run.objects.select_for_update().get(pk=run.pk)
    merged = _merged_params(locked.params, list(params), f"run ID='{run.run_id}'")
    fields = []
    if merged != locked.params:
        locked.params = merged
        fields.append("params")
    if tags:
        locked.tags = {**locked.tags, **_tags(tags)}
        fields.append("tags")
    if fields:
        locked.save(update_fields=fields)
    RunMetric.objects.bulk_create(rows)


@transaction.atomic
def run_tag_delete(*, run: Run, key: str) -> None:
    locked = Run.objects.select_for_update().get(pk=run.pk)
    if key not in locked.tags:
        raise _not_found(f"No tag with name: {key[:200]} in run with id {run.run_id}")
    locked.tags = {name: value for name, value in locked.tags.items() if name != key}
    locked.save(update_fields=["tags"])


def latest_metrics(run: Run) -> list[RunMetric]:
    """Each key's latest point: the highest step, then the latest timestamp (MLflow's rule)."""
    rows = RunMetric.objects.filter(run=run).order_by("key", "-step", "-timestamp", "-pk")
    if connection.features.can_distinct_on_fields:
        return list(rows.distinct("key"))
    latest: dict[str, RunMetric] = {}
    for row in rows:
        latest.setdefault(row.key, row)
    return list(latest.values())


def metric_history(run: Run, key: str, limit: int = MAX_HISTORY) -> list[RunMetric]:
    return list(
        RunMetric.objects.filter(run=run, key=key).order_by("step", "timestamp", "pk")[:limit]
    )


def finite_metrics(run: Run) -> dict[str, float]:
    """The run's latest metric values that a version can hold (finite numbers only)."""
    return {row.key: row.value for row in latest_metrics(run) if math.isfinite(row.value)}


# --- Logged models -------------------------------------------------------------------------------


def logged_model_for(user: Any, model_id: Any) -> LoggedModel:
    text = model_id if isinstance(model_id, str) else ""
    found = None
    if _LOGGED_MODEL_ID.fullmatch(text):
        found = (
            LoggedModel.objects.filter(model_id=text, owner=user)
            .select_related("experiment", "source_run")
            .first()
        )
    if found is None:
        raise _not_found(f"Logged model with ID '{str(model_id)[:60]}' not found.")
    return found


@transaction.atomic
def logged_model_create(
    *,
    actor: Any,
    experiment: Experiment,
    name: Any,
    source_run: Run | None,
    model_type: Any,
    params: list[Any],
    tags: dict[str, Any],
) -> LoggedModel:
    name = _text(name, "model name", MAX_NAME_CHARS) or "model"
    model = LoggedModel.objects.create(
        model_id=f"m-{uuid.uuid4().hex}",
        experiment=experiment,
        owner=actor,
        source_run=source_run,
        name=name,
        model_type=_text(model_type, "model_type", MAX_NAME_CHARS),
        params=_merged_params({}, params, "this model"),
        tags=_tags(tags),
    )
    audit_record(
        actor=actor,
        action="logged_model.created",
        target=model,
        changes={"after": {"model_id": model.model_id, "name": name}},
    )
    return model


@transaction.atomic
def logged_model_update(
    *, model: LoggedModel, status: str | None = None, tags: dict[str, Any] | None = None
) -> LoggedModel:
    locked = LoggedModel.objects.select_for_update().get(pk=model.pk)
    if status is not None:
        if status not in LoggedModelStatus.values:
            raise invalid(f"Invalid logged model status {str(status)[:40]!r}.")
        locked.status = status
    if tags:
        locked.tags = {**locked.tags, **_tags(tags)}
    locked.save(update_fields=["status", "tags", "updated_at"])
    return locked


@transaction.atomic
def logged_model_tag_delete(*, model: LoggedModel, key: str) -> None:
    locked = LoggedModel.objects.select_for_update().get(pk=model.pk)
    locked.tags = {name: value for name, value in locked.tags.items() if name != key}
    locked.save(update_fields=["tags", "updated_at"])
