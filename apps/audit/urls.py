from django.urls import path

from apps.audit import views

app_name = "audit"

urlpatterns = [
    path("", views.audit_list, name="list"),
    path("export", views.audit_export, name="export"),
    path("verify", views.audit_verify, name="verify"),
    path(
        "object/<str:target_type>/<str:target_id>/",
        views.object_history,
        name="object-history",
    ),
]
