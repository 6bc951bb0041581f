"""The MLflow 3.0 routes Regent answers, mounted at `api/3.0/mlflow/` and
`ajax-api/3.0/mlflow/`: the server-info probe. MLflow 3.0's other routes (traces,
assessments, label schemas…) belong to MLflow's tracking server, not to a registry: they get
MLflow's ENDPOINT_NOT_FOUND, which MLflow 3 clients read as "not supported here".
"""

from django.urls import path, re_path

from apps.mlflow_compat.http import endpoint_not_found, server_info

urlpatterns = [
    path("server-info", server_info),
    re_path(r"^.*$", endpoint_not_found),
]
