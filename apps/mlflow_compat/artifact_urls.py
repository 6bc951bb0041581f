"""MLflow's artifact proxy routes, mounted at `api/2.0/mlflow-artifacts/` (and `ajax-api/`).

The staging area's files (the caller's own runs and logged models) and, read-only, registered
versions' verified files under `registry/<name>/<version>` (tracking_views.artifact).
"""

from django.urls import path, re_path

from apps.mlflow_compat import tracking_views
from apps.mlflow_compat.http import endpoint_not_found

urlpatterns = [
    path("artifacts", tracking_views.artifact_list),
    path("artifacts/<path:artifact_path>", tracking_views.artifact),
    re_path(r"^.*$", endpoint_not_found),
]
