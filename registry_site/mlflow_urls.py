"""MLflow's JSON API routes: included by the root URLconf and resolved on their own by
`MlflowLaneMiddleware` (every path under these prefixes resolves here: each app module's
last route answers ENDPOINT_NOT_FOUND)."""

from django.urls import include, path

PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")  # the registry (and tracking) API
V3_PREFIXES = ("/api/3.0/mlflow/", "/ajax-api/3.0/mlflow/")  # server-info
LANE_PREFIXES = PREFIXES + V3_PREFIXES

urlpatterns = [
    *(path(prefix.lstrip("/"), include("apps.mlflow_compat.urls")) for prefix in PREFIXES),
    *(path(prefix.lstrip("/"), include("apps.mlflow_compat.urls_v3")) for prefix in V3_PREFIXES),
]
