"""Approval pages, mounted at the site root (so paths here are full paths)."""

from django.urls import path, re_path

from apps.approvals import link_views, views

app_name = "approvals"

STAGE = "models/<str:name>/stages/<str:stage>/"
REVIEW = "reviews/<int:pk>/"

urlpatterns = [
    path("reviews/", views.inbox_view, name="inbox"),
    path(REVIEW, views.promotion_detail_view, name="promotion-detail"),
    path(f"{REVIEW}approve", views.promotion_approve_view, name="promotion-approve"),
    path(f"{REVIEW}reject", views.promotion_reject_view, name="promotion-reject"),
    path(f"{REVIEW}cancel", views.promotion_cancel_view, name="promotion-cancel"),
    # The emailed URL (token in the path) and the tokenless page it redirects to.
    path("reviews/link/", link_views.link_confirm_view, name="link-confirm"),
    path("reviews/link/<str:token>/", link_views.link_open_view, name="link-open"),
    # Anything else under reviews/link/ (no trailing slash, empty, extra segments): the same
    # view, so a mangled link gets the same generic page as a tampered one, never a 500.
    re_path(r"^reviews/link/(?P<token>.+)$", link_views.link_open_view),
    path(
        "models/<str:name>/versions/<int:number>/promote",
        views.promotion_create_view,
        name="promotion-create",
    ),
    path("models/<str:name>/stages/", views.stage_list_view, name="stage-list"),
    path("models/<str:name>/stages/new", views.stage_create_view, name="stage-create"),
    path(STAGE, views.stage_detail_view, name="stage-detail"),
    path(f"{STAGE}rollback", views.stage_rollback_view, name="stage-rollback"),
    path(f"{STAGE}policy", views.stage_policy_view, name="stage-policy"),
]
