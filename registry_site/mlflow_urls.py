"""MLflow's JSON API routes: included by the root URLconf and resolved on their own by
`MlflowLaneMiddleware` (every path under these prefixes resolves here: the app's last route
answers ENDPOINT_NOT_FOUND)."""

from django.urls import include, path

PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")

urlpatterns = [path(prefix.lstrip("/"), include("apps.mlflow_compat.urls")) for prefix in PREFIXES]
