"""MLflow's model registry REST routes, mounted at `api/2.0/mlflow/` and `ajax-api/2.0/mlflow/`.

Methods as in `mlflow/protos/model_registry.proto`. No URL names and no namespace: the same
module is included under both prefixes.
"""

from django.urls import path, re_path

from apps.mlflow_compat import views
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
    # Anything else under the prefix: MLflow's ENDPOINT_NOT_FOUND, in MLflow's JSON shape.
    re_path(r"^.*$", endpoint_not_found),
]
