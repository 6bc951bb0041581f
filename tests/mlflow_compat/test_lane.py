"""MLflow's API is served through its short middleware chain (registry_site.middleware.
MlflowLaneMiddleware): the same views, security headers, audit context and error shapes as
through the full chain, without sessions, CSRF, messages or static files."""

import re

import pytest
from django.test import override_settings
from django.urls import get_resolver

from apps.mlflow_compat import urls as mlflow_routes
from apps.registry.models import RegisteredModel
from registry_site import mlflow_urls
from tests.mlflow_compat.conftest import AJAX, MLFLOW, MlflowHttp
from tests.test_settings import assert_security_headers


def _sample_paths() -> list[str]:
    routes = [
        re.sub(r"<\w+:(\w+)>", r"sample-\1", str(pattern.pattern))
        for pattern in mlflow_routes.urlpatterns
        if not str(pattern.pattern).startswith("^")
    ]
    return [prefix + route for prefix in mlflow_urls.PREFIXES for route in routes] + [
        "/api/2.0/mlflow/no/such/endpoint",
        "/ajax-api/2.0/mlflow/registered-models/",
    ]


@pytest.mark.parametrize("path", _sample_paths())
def test_the_lane_resolves_every_path_to_the_view_the_root_urlconf_does(path):
    in_lane = get_resolver(mlflow_urls.__name__).resolve(path)
    in_root = get_resolver().resolve(path)

    assert in_lane.func is in_root.func
    assert in_lane.kwargs == in_root.kwargs


def test_every_route_of_the_app_is_sampled():
    routes = [pattern for pattern in mlflow_routes.urlpatterns if "^" not in str(pattern.pattern)]
    assert len(_sample_paths()) == 2 * len(routes) + 2
    assert len(routes) > 30


@pytest.mark.django_db
@pytest.mark.parametrize("prefix", [MLFLOW, AJAX])
def test_mlflow_answers_carry_the_security_headers_and_a_request_id(client, ml_model, prefix):
    ok = MlflowHttp(client, None, prefix).get("/registered-models/get", {"name": ml_model.name})
    missing = client.get(prefix + "/no/such/endpoint")

    assert ok.status_code == 401
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    for response in (ok, missing):
        assert_security_headers(response)
        assert response["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])


@pytest.mark.django_db
def test_the_lane_reads_no_session_even_from_a_signed_in_browser(client, owner, ml_model):
    client.force_login(owner)

    mlflow = client.get(MLFLOW + "/registered-models/get", {"name": ml_model.name})
    page = client.get("/api/v1/me")

    assert mlflow.status_code == 401
    assert not hasattr(mlflow.wsgi_request, "session")
    assert not hasattr(mlflow.wsgi_request, "user")
    assert "Set-Cookie" not in mlflow.headers and "Cookie" not in mlflow.get("Vary", "")
    # Everything else still runs through the full chain.
    assert hasattr(page.wsgi_request, "session")


@pytest.mark.django_db
def test_a_path_just_outside_the_prefixes_takes_the_full_chain(client):
    response = client.get("/api/2.0/mlflow")

    # CommonMiddleware's slash redirect: only the full chain has it.
    assert response.status_code == 301
    assert response["Location"] == "/api/2.0/mlflow/"
    assert hasattr(response.wsgi_request, "session")


@pytest.mark.django_db
@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1_000)
def test_an_oversized_body_is_refused_in_the_lane_before_it_is_read(as_owner):
    response = as_owner.post("/registered-models/create", {"name": "x" * 2_000})

    assert response.status_code == 413
    assert response["Content-Type"].startswith("application/json")
    assert not RegisteredModel.objects.filter(name__startswith="xxx").exists()
