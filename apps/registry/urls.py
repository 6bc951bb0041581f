from django.urls import path

from apps.registry import views

app_name = "registry"

VERSION = "<str:name>/versions/<int:number>/"

urlpatterns = [
    path("", views.model_list_view, name="model-list"),
    path("new", views.model_create_view, name="model-create"),
    path("<str:name>/", views.model_detail_view, name="model-detail"),
    path("<str:name>/edit", views.model_edit_view, name="model-edit"),
    path("<str:name>/versions/new", views.version_create_view, name="version-create"),
    path(VERSION, views.version_detail_view, name="version-detail"),
    path(f"{VERSION}status", views.version_status_view, name="version-status"),
    path(f"{VERSION}edit", views.version_edit_view, name="version-edit"),
    path(f"{VERSION}upload", views.version_upload_view, name="version-upload"),
    path(f"{VERSION}seal", views.version_seal_view, name="version-seal"),
    path(f"{VERSION}files/<path:path>", views.file_download_view, name="file-download"),
]
