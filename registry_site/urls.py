from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.generic import RedirectView
from ninja.openapi.views import openapi_view

from registry_site import health
from registry_site.api import api


def api_docs(request: HttpRequest) -> HttpResponse:
    return openapi_view(request, api=api)


urlpatterns = [
    path("", RedirectView.as_view(pattern_name="registry:model-list"), name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("accounts/", include("apps.accounts.urls")),
    path("", include("apps.accounts.access_urls")),
    path("", include("apps.approvals.urls")),
    path("", include("apps.registry.urls_insight")),
    path("models/", include("apps.registry.urls")),
    path("audit/", include("apps.audit.urls")),
    path("api/v1/", api.urls),
    path("api/docs", api_docs, name="api-docs"),
    path("", include("registry_site.mlflow_urls")),
    path("api/2.0/mlflow-artifacts/", include("apps.mlflow_compat.artifact_urls")),
    path("ajax-api/2.0/mlflow-artifacts/", include("apps.mlflow_compat.artifact_urls")),
    path("admin/", admin.site.urls),
]

handler403 = "registry_site.errors.handler403"
handler404 = "registry_site.errors.handler404"
handler500 = "registry_site.errors.handler500"
