"""The MLflow tracking endpoints `log_model` needs, and the `mlflow-artifacts` file routes.

Handlers follow views.py: parse, look up with the owner check, one service call, MLflow's
response message. What is kept and what is accepted but ignored is in docs/MLFLOW.md.
"""

import re
from typing import Any

from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps.mlflow_compat import registry_files, staging, tracking
from apps.mlflow_compat.auth import authenticate_caller, ensure_can_write
from apps.mlflow_compat.errors import (
    ENDPOINT_NOT_FOUND,
    INVALID_PARAMETER_VALUE,
    MlflowError,
    invalid,
)
from apps.mlflow_compat.http import Call, error_response, reads, writes
from apps.mlflow_compat.models import Experiment, LoggedModel, Run, RunMetric
from apps.registry.api_files import upload_stream
from apps.registry.artifacts import ArtifactTooLarge
from apps.registry.downloads import DOWNLOAD_HEADERS
from apps.registry.paths import content_disposition_attachment
from apps.registry.storage import open_stream

RUNS_PAGE_MAX = 1_000


def _pairs(mapping: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": value} for key, value in mapping.items()]


def _metric_json(metric: RunMetric) -> dict[str, Any]:
    body = {"key": metric.key, "value": metric.value, "timestamp": metric.timestamp}
    body["step"] = metric.step
    if metric.model_id:
        body["model_id"] = metric.model_id
    return body


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


def experiment_json(experiment: Experiment) -> dict[str, Any]:
    return {
        "experiment_id": str(experiment.pk),
        "name": experiment.name,
        "artifact_location": f"mlflow-artifacts:/{experiment.pk}",
        "lifecycle_stage": "active",
        "creation_time": _ms(experiment.created_at),
        "last_update_time": _ms(experiment.updated_at),
        "tags": _pairs(experiment.tags),
    }


def run_info_json(run: Run) -> dict[str, Any]:
    info: dict[str, Any] = {
        "run_uuid": run.run_id,
        "run_id": run.run_id,
        "experiment_id": str(run.experiment_id),
        "run_name": run.name,
        "user_id": run.owner.get_username(),
        "status": run.status,
        "start_time": run.start_time,
        "artifact_uri": f"mlflow-artifacts:/{run.experiment_id}/{run.run_id}/artifacts",
        "lifecycle_stage": "active",
    }
    if run.end_time is not None:
        info["end_time"] = run.end_time
    return info


def run_json(run: Run) -> dict[str, Any]:
    data = {
        "metrics": [_metric_json(metric) for metric in tracking.latest_metrics(run)],
        "params": _pairs(run.params),
        "tags": _pairs(run.tags),
    }
    return {"info": run_info_json(run), "data": data, "inputs": {}, "outputs": {}}


def logged_model_json(model: LoggedModel) -> dict[str, Any]:
    location = f"{model.experiment_id}/models/{model.model_id}/artifacts"
    info = {
        "model_id": model.model_id,
        "experiment_id": str(model.experiment_id),
        "name": model.name,
        "creation_timestamp_ms": _ms(model.created_at),
        "last_updated_timestamp_ms": _ms(model.updated_at),
        "artifact_uri": f"mlflow-artifacts:/{location}",
        "status": model.status,
        "model_type": model.model_type,
        "source_run_id": model.source_run.run_id if model.source_run else "",
        "tags": _pairs(model.tags),
    }
    return {"info": info, "data": {"params": _pairs(model.params), "metrics": []}}


def _run(call: Call) -> Run:
    return tracking.run_for(call.user, call.text("run_id") or call.text("run_uuid"))


def _logged_model(call: Call) -> LoggedModel:
    return tracking.logged_model_for(call.user, call.text("model_id", required=True))


# --- Experiments ---------------------------------------------------------------------------------


@writes
def experiment_create(call: Call) -> dict[str, Any]:
    experiment = tracking.experiment_create(
        actor=call.user, name=call.text("name", required=True), tags=call.tags()
    )
    return {"experiment_id": str(experiment.pk)}


@reads
def experiment_get(call: Call) -> dict[str, Any]:
    experiment = tracking.experiment_for(call.user, call.text("experiment_id", required=True))
    return {"experiment": experiment_json(experiment)}


@reads
def experiment_get_by_name(call: Call) -> dict[str, Any]:
    experiment = tracking.experiment_by_name(call.user, call.text("experiment_name", required=True))
    return {"experiment": experiment_json(experiment)}


@reads
def experiment_search(call: Call) -> dict[str, Any]:
    if call.text("filter"):
        raise invalid("Regent does not filter experiments: search without 'filter'.")
    experiments = tracking.experiments_visible(call.user)
    limit = call.integer("max_results", default=1000, maximum=50_000)
    return {"experiments": [experiment_json(experiment) for experiment in experiments[:limit]]}


# --- Runs ----------------------------------------------------------------------------------------


@writes
def run_create(call: Call) -> dict[str, Any]:
    experiment_id = call.text("experiment_id") or str(Experiment.DEFAULT_ID)
    run = tracking.run_create(
        actor=call.user,
        experiment=tracking.experiment_for(call.user, experiment_id),
        name=call.text("run_name"),
        start_time=call.value("start_time"),
        tags=call.tags(),
    )
    return {"run": run_json(run)}


@reads
def run_get(call: Call) -> dict[str, Any]:
    return {"run": run_json(_run(call))}


@writes
def run_update(call: Call) -> dict[str, Any]:
    run = tracking.run_update(
        actor=call.user,
        run=_run(call),
        status=call.text("status"),
        end_time=call.value("end_time"),
        name=call.text("run_name"),
    )
    return {"run_info": run_info_json(run)}


@writes
def run_log_batch(call: Call) -> dict[str, Any]:
    tracking.run_log_batch(
        run=_run(call),
        metrics=call.value("metrics") or [],
        params=call.value("params") or [],
        tags=call.tags(),
    )
    return {}


@writes
def run_log_metric(call: Call) -> dict[str, Any]:
    metric = {name: call.value(name) for name in ("key", "value", "timestamp", "step", "model_id")}
    tracking.run_log_batch(run=_run(call), metrics=[metric])
    return {}


@writes
def run_log_param(call: Call) -> dict[str, Any]:
    param = {"key": call.value("key"), "value": call.value("value")}
    tracking.run_log_batch(run=_run(call), params=[param])
    return {}


@writes
def run_set_tag(call: Call) -> dict[str, Any]:
    key = call.text("key", required=True)
    tracking.run_log_batch(run=_run(call), tags={key: call.text("value") or ""})
    return {}


@writes
def run_delete_tag(call: Call) -> dict[str, Any]:
    tracking.run_tag_delete(run=_run(call), key=call.text("key", required=True))
    return {}


@writes
def run_accept_links(call: Call) -> dict[str, Any]:
    """`runs/log-inputs` and `runs/outputs`: dataset and model links are accepted, not kept."""
    _run(call)
    return {}


@reads
def run_search(call: Call) -> dict[str, Any]:
    if call.text("filter"):
        raise invalid("Regent does not filter runs: search without 'filter'.")
    experiment_ids = call.texts("experiment_ids")
    limit = call.integer("max_results", default=1000, maximum=RUNS_PAGE_MAX)
    runs = Run.objects.filter(owner=call.user).select_related("owner")
    if experiment_ids:
        runs = runs.filter(experiment_id__in=[i for i in experiment_ids if i.isdecimal()])
    return {"runs": [run_json(run) for run in runs.order_by("-start_time", "-pk")[:limit]]}


@reads
def metric_history(call: Call) -> dict[str, Any]:
    points = tracking.metric_history(_run(call), call.text("metric_key", required=True))
    return {"metrics": [_metric_json(point) for point in points]}


# --- Logged models (MLflow 3) --------------------------------------------------------------------


@writes
def logged_model_create(call: Call) -> dict[str, Any]:
    source_run_id = call.text("source_run_id")
    model = tracking.logged_model_create(
        actor=call.user,
        experiment=tracking.experiment_for(call.user, call.text("experiment_id", required=True)),
        name=call.text("name"),
        source_run=tracking.run_for(call.user, source_run_id) if source_run_id else None,
        model_type=call.text("model_type"),
        params=call.value("params") or [],
        tags=call.tags(),
    )
    return {"model": logged_model_json(model)}


_NAME_FILTER = re.compile(r"\s*name\s*=\s*'([^']*)'\s*")


@reads
def logged_model_search(call: Call) -> dict[str, Any]:
    """The caller's logged models in the given experiments; `filter` may be `name = '…'`."""
    models = LoggedModel.objects.filter(owner=call.user).select_related("source_run")
    experiment_ids = [i for i in (call.value("experiment_ids") or []) if str(i).isdecimal()]
    if experiment_ids:
        models = models.filter(experiment_id__in=[int(i) for i in experiment_ids])
    if filter_string := call.text("filter"):
        match = _NAME_FILTER.fullmatch(filter_string)
        if match is None:
            raise invalid("Regent filters logged models by name only: name = '<name>'.")
        models = models.filter(name=match.group(1))
    limit = call.integer("max_results", default=100, maximum=RUNS_PAGE_MAX)
    return {"models": [logged_model_json(model) for model in models.order_by("-pk")[:limit]]}


@reads
def logged_model_get(call: Call) -> dict[str, Any]:
    return {"model": logged_model_json(_logged_model(call))}


@writes
def logged_model_finalize(call: Call) -> dict[str, Any]:
    model = tracking.logged_model_update(
        model=_logged_model(call), status=call.text("status", required=True)
    )
    return {"model": logged_model_json(model)}


@writes
def logged_model_set_tags(call: Call) -> dict[str, Any]:
    tracking.logged_model_update(model=_logged_model(call), tags=call.tags())
    return {}


@writes
def logged_model_delete_tag(call: Call) -> dict[str, Any]:
    tracking.logged_model_tag_delete(
        model=_logged_model(call), key=call.text("tag_key", required=True)
    )
    return {}


# --- mlflow-artifacts ----------------------------------------------------------------------------


@csrf_exempt  # Bearer/Basic only, as every MLflow route
def artifact(request: HttpRequest, artifact_path: str) -> HttpResponse:
    """`PUT` stores a file in the caller's run or logged model; `GET` downloads one of those,
    or a registered version's verified file (`registry/<name>/<version>/<path>`)."""
    try:
        caller = authenticate_caller(request)
        if request.method == "PUT":
            ensure_can_write(caller)
            location = staging.location_for(caller.user, artifact_path)
            stream, length = upload_stream(request)
            staging.staged_file_put(
                actor=caller.user, location=location, stream=stream, content_length=length
            )
            return JsonResponse({})
        if request.method == "GET" and registry_files.is_registry_path(artifact_path):
            return registry_files.download(caller.user, artifact_path)
        if request.method == "GET":
            staged = staging.staged_file_at(staging.location_for(caller.user, artifact_path))
            return _download(staged.storage_key, staged.path)
        raise MlflowError(ENDPOINT_NOT_FOUND, "Use GET or PUT on an artifact.", status=405)
    except ArtifactTooLarge as error:  # 413 as the REST API answers it (not retried either)
        return MlflowError(INVALID_PARAMETER_VALUE, error.message, status=413).response()
    except Exception as error:
        return error_response(request, error)


@csrf_exempt
def artifact_list(request: HttpRequest) -> HttpResponse:
    """`GET …/artifacts?path=<location>`: the files and folders directly under it."""
    try:
        caller = authenticate_caller(request)
        if request.method != "GET":
            raise MlflowError(ENDPOINT_NOT_FOUND, "Use GET to list artifacts.", status=405)
        path = request.GET.get("path", "").strip("/")
        if registry_files.is_registry_path(path):
            return JsonResponse({"files": registry_files.listing(caller.user, path)})
        return JsonResponse({"files": staging.listing(staging.location_for(caller.user, path))})
    except Exception as error:
        return error_response(request, error)


def _download(key: str, path: str) -> HttpResponse:
    """A staged file as an attachment, with the registry's download headers."""
    response = FileResponse(open_stream(key), headers=DOWNLOAD_HEADERS)
    response["Content-Disposition"] = content_disposition_attachment(path)
    return response
