"""MLflow's model registry REST routes, mounted at `api/2.0/mlflow/` and `ajax-api/2.0/mlflow/`.

Methods as in `mlflow/protos/model_registry.proto`. No URL names and no namespace: the same
module is included under both prefixes.
"""

from django.urls import path, re_path

from apps.mlflow_compat import tracking_views, views
from apps.mlflow_compat.http import endpoint_not_found, route

MODELS = "registered-models/"
VERSIONS = "model-versions/"

urlpatterns = [
    path(f"{MODELS}create", route(post=views.registered_model_create)),
    path(f"{MODELS}get", route(get=views.registered_model_get)),
    path(f"{MODELS}search", route(get=views.registered_model_search)),
    path(f"{MODELS}update", route(patch=views.registered_model_update)),
    path(f"{MODELS}rename", route(post=views.registered_model_rename)),
    path(f"{MODELS}delete", route(delete=views.registered_model_delete)),
    path(f"{MODELS}set-tag", route(post=views.registered_model_set_tag)),
    path(f"{MODELS}delete-tag", route(delete=views.registered_model_delete_tag)),
    path(
        f"{MODELS}alias",
        route(post=views.alias_set, get=views.alias_get, delete=views.alias_delete),
    ),
    path(
        f"{MODELS}get-latest-versions",
        route(get=views.latest_versions, post=views.latest_versions),
    ),
    path(f"{VERSIONS}create", route(post=views.version_create)),
    path(f"{VERSIONS}get", route(get=views.version_get)),
    path(f"{VERSIONS}search", route(get=views.version_search)),
    path(f"{VERSIONS}update", route(patch=views.version_update)),
    path(f"{VERSIONS}delete", route(delete=views.version_delete)),
    path(f"{VERSIONS}set-tag", route(post=views.version_set_tag)),
    path(f"{VERSIONS}delete-tag", route(delete=views.version_delete_tag)),
    path(f"{VERSIONS}get-download-uri", route(get=views.version_download_uri)),
    path(f"{VERSIONS}transition-stage", route(post=views.version_transition_stage)),
    # Tracking, for `log_model` against Regent (tracking_views.py; private to the caller).
    path("experiments/create", route(post=tracking_views.experiment_create)),
    path("experiments/get", route(get=tracking_views.experiment_get)),
    path("experiments/get-by-name", route(get=tracking_views.experiment_get_by_name)),
    path(
        "experiments/search",
        route(get=tracking_views.experiment_search, post=tracking_views.experiment_search),
    ),
    path("runs/create", route(post=tracking_views.run_create)),
    path("runs/get", route(get=tracking_views.run_get)),
    path("runs/update", route(post=tracking_views.run_update)),
    path("runs/log-batch", route(post=tracking_views.run_log_batch)),
    path("runs/log-metric", route(post=tracking_views.run_log_metric)),
    path("runs/log-parameter", route(post=tracking_views.run_log_param)),
    path("runs/set-tag", route(post=tracking_views.run_set_tag)),
    path("runs/delete-tag", route(post=tracking_views.run_delete_tag)),
    path("runs/log-inputs", route(post=tracking_views.run_accept_links)),
    path("runs/outputs", route(post=tracking_views.run_accept_links)),
    path("runs/search", route(post=tracking_views.run_search)),
    path("metrics/get-history", route(get=tracking_views.metric_history)),
    path("logged-models", route(post=tracking_views.logged_model_create)),
    path("logged-models/search", route(post=tracking_views.logged_model_search)),
    path(
        "logged-models/<str:model_id>",
        route(get=tracking_views.logged_model_get, patch=tracking_views.logged_model_finalize),
    ),
    path("logged-models/<str:model_id>/tags", route(patch=tracking_views.logged_model_set_tags)),
    path(
        "logged-models/<str:model_id>/tags/<str:tag_key>",
        route(delete=tracking_views.logged_model_delete_tag),
    ),
    # Anything else under the prefix: MLflow's ENDPOINT_NOT_FOUND, in MLflow's JSON shape.
    re_path(r"^.*$", endpoint_not_found),
]
