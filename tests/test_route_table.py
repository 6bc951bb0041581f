"""Every route that names a private model, introspected from the URL resolver (pages, REST
API, MLflow API), refuses anonymous callers and answers an outsider exactly as it answers
for a model that does not exist. A route added later is covered without editing this file.
"""

import io
import re
from dataclasses import dataclass

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from apps.accounts.models import TokenScope
from apps.accounts.services import token_create
from apps.approvals.models import Stage
from apps.approvals.services import promotion_request
from apps.registry.artifacts import artifact_upload, version_seal, version_verify
from apps.registry.services import model_create, version_create
from tests.conftest import bearer, make_user

METHODS = ("get", "post", "put", "patch", "delete")
PARAM = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>")
# Route parameters that identify something inside a model.
PRIVATE_PARAMS = {"name", "promotion_id", "target_id"}
SKIPPED_PREFIXES = ("admin/", "static/")
TRACKING_ROUTES = ("experiments/", "runs/", "metrics/", "logged-models")


@dataclass(frozen=True)
class Route:
    template: str
    params: tuple[str, ...]


def _walk(patterns, prefix: str = ""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern)


def private_routes() -> list[Route]:
    routes = set()
    for template in _walk(get_resolver().url_patterns):
        if template.startswith(SKIPPED_PREFIXES) or template.startswith("^"):
            continue
        params = tuple(match["name"] for match in PARAM.finditer(template))
        is_review_page = template.startswith("reviews/<int:pk>")
        if PRIVATE_PARAMS & set(params) or is_review_page:
            routes.add(Route(template, params))
    return sorted(routes, key=lambda route: route.template)


def mlflow_routes() -> list[str]:
    return sorted(
        template
        for template in _walk(get_resolver().url_patterns)
        if "mlflow/" in template
        and "<" not in template
        # create names a new model, not an existing one: a taken name must say so.
        and not template.endswith("registered-models/create")
        # MLflow 3's capability probe answers anyone, as MLflow's does, and names no model
        # (tests/mlflow_compat/test_server_info.py).
        and not template.endswith("server-info")
        # Tracking routes name the caller's own runs, never a model (tests/mlflow_compat).
        and not template.split("mlflow/", 1)[1].startswith(TRACKING_ROUTES)
    )


def fill(route: Route, values: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        return values[match["name"]]

    return "/" + PARAM.sub(value, route.template)


@pytest.fixture
def secret(db):
    """Alice's private model with a ready version, a file and an open promotion request."""
    alice = make_user("alice-owner")
    model = model_create(actor=alice, name="secret-model")
    version = version_create(actor=alice, model=model, metrics={"auc": 0.9})
    artifact_upload(actor=alice, version=version, path="weights/model.bin", stream=io.BytesIO(b"w"))
    version_seal(actor=alice, version=version)
    version_verify(version_id=version.pk)
    version.refresh_from_db()
    stage = Stage.objects.get(model=model, name="production")
    promotion = promotion_request(actor=alice, version=version, stage=stage)
    return {
        "name": model.name,
        "number": "1",
        "v": "1",
        "stage": "production",
        "path": "weights/model.bin",
        "pk": str(promotion.pk),
        "promotion_id": str(promotion.pk),
        "target_type": "registry.registeredmodel",
        "target_id": str(model.pk),
        "prefix": "000000000000",
        "token": "x",
    }


def missing_values(secret: dict[str, str]) -> dict[str, str]:
    return {
        **secret,
        "name": "no-such-model",
        "pk": "999999",
        "promotion_id": "999999",
        "target_id": "999999",
    }


def call(client: Client, method: str, url: str, name: str, headers: dict[str, str]):
    body = {"name": name, "version": "1", "stage": "production", "comment": "x", "reason": "x"}
    if method == "get":
        return client.get(url, {"name": name, "version": "1"}, **headers)
    return getattr(client, method)(url, body, content_type="application/json", **headers)


def comparable(response) -> tuple:
    """Status, plus the body for JSON answers (HTML pages carry per-request CSRF tokens)."""
    if response.get("Content-Type", "").startswith("application/json"):
        return response.status_code, response.content
    return (response.status_code,)


NEVER = {200, 201, 202, 204, 500}


@pytest.mark.django_db
def test_the_route_table_is_not_empty():
    templates = {route.template for route in private_routes()}
    assert "models/<str:name>/" in templates
    assert "api/v1/models/<name>/versions/<int:v>/files/<path:path>" in templates
    assert len(templates) > 30


@pytest.mark.django_db
def test_anonymous_callers_are_refused_everywhere(secret):
    client = Client()
    failures = []
    for route in private_routes():
        url = fill(route, secret)
        for method in METHODS:
            response = call(client, method, url, secret["name"], {})
            if response.status_code in NEVER or response.status_code == 403:
                failures.append(f"{method.upper()} {url} → {response.status_code}")
    for url in mlflow_routes():
        for method in METHODS:
            response = call(client, method, "/" + url, secret["name"], {})
            if response.status_code in NEVER:
                failures.append(f"{method.upper()} /{url} → {response.status_code}")
    assert not failures, "\n".join(failures)


@pytest.mark.django_db
@pytest.mark.parametrize("channel", ["session", "token"])
def test_outsiders_get_what_a_missing_model_gets(secret, channel):
    dave = make_user("dave-outsider")
    client = Client()
    headers: dict[str, str] = {}
    if channel == "session":
        client.force_login(dave)
    else:
        _, plaintext = token_create(user=dave, name="t", scope=TokenScope.WRITE)
        headers = bearer(plaintext)
    missing = missing_values(secret)
    failures = []
    for route in private_routes():
        for method in METHODS:
            hidden = call(client, method, fill(route, secret), secret["name"], headers)
            absent = call(client, method, fill(route, missing), missing["name"], headers)
            if hidden.status_code in NEVER or comparable(hidden) != comparable(absent):
                failures.append(
                    f"{method.upper()} {fill(route, secret)} → {hidden.status_code} "
                    f"(missing model → {absent.status_code})"
                )
    for url in mlflow_routes():
        for method in METHODS:
            hidden = call(client, method, "/" + url, secret["name"], headers)
            absent = call(client, method, "/" + url, missing["name"], headers)
            if comparable(hidden) != comparable(absent) or hidden.status_code == 500:
                failures.append(f"{method.upper()} /{url} → {hidden.status_code}")
    assert not failures, "\n".join(failures)
