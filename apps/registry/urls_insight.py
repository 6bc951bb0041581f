"""Insight pages, mounted at the site root before the registry's own routes:
`path("", include("apps.registry.urls_insight"))`."""

from django.urls import path

from apps.registry import views_insight

app_name = "insight"

urlpatterns = [
    path("models/<str:name>/compare/", views_insight.compare_view, name="compare"),
    path(
        "models/<str:name>/compare/directions",
        views_insight.metric_directions_view,
        name="metric-directions",
    ),
]
