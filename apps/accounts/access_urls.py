"""Access pages (a model's roles) and teams. Included at the site root, before the registry,
so these paths are absolute: /models/<name>/access/, /teams/…"""

from django.urls import path

from apps.accounts import access_views as views

app_name = "access"

urlpatterns = [
    path("models/<str:name>/access/", views.model_access_view, name="model-access"),
    path(
        "models/<str:name>/access/revoke",
        views.model_access_revoke_view,
        name="model-access-revoke",
    ),
    path("teams/", views.teams_view, name="teams"),
    path("teams/new", views.team_create_view, name="team-create"),
    path("teams/<int:pk>/", views.team_detail_view, name="team-detail"),
    path("teams/<int:pk>/members", views.team_members_view, name="team-members"),
]
