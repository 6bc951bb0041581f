"""MLflow 3's server-info probe: answered without credentials, advertising none of MLflow's
optional server features; MLflow 3.0's other routes answer ENDPOINT_NOT_FOUND."""

import pytest
from django.urls import get_resolver

from apps.mlflow_compat.http import SERVER_INFO
from registry_site import mlflow_urls
from tests.test_settings import assert_security_headers

V3_PATHS = ["/api/3.0/mlflow/server-info", "/ajax-api/3.0/mlflow/server-info"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", V3_PATHS)
def test_server_info_answers_anyone_with_no_optional_feature(client, path):
    response = client.get(path)

    assert response.status_code == 200
    assert response.json() == SERVER_INFO
    assert response.json()["multipart_uploads_enabled"] is False
    assert response.json()["workspaces_enabled"] is False
    assert_security_headers(response)
    assert not hasattr(response.wsgi_request, "session")  # served by the MLflow lane


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_server_info_refuses_other_methods_in_mlflows_shape(client, method):
    response = getattr(client, method)(V3_PATHS[0])

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/api/3.0/mlflow/traces/tr-1", "/ajax-api/3.0/mlflow/server-features"]
)
def test_other_mlflow_3_routes_are_not_found_in_mlflows_shape(client, path):
    response = client.get(path)

    assert response.status_code == 404
    assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"


@pytest.mark.parametrize("path", [*V3_PATHS, "/api/3.0/mlflow/traces/tr-1"])
def test_the_lane_resolves_mlflow_3_paths_as_the_root_urlconf_does(path):
    in_lane = get_resolver(mlflow_urls.__name__).resolve(path)
    in_root = get_resolver().resolve(path)

    assert in_lane.func is in_root.func
