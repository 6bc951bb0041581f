"""Admin panel for the audit log: read-only, whoever you are.

The log is append-only (a PostgreSQL trigger refuses UPDATE and DELETE anyway); here there is
no add, change or delete permission for anyone, superusers included, so no form, button or
bulk action even offers it. Viewing needs the explicit `audit.view_auditevent` permission
(or superuser): the admin lists every event, unlike the app's permission-filtered audit page.
"""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from apps.audit.models import AuditCheck, AuditEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "at", "actor_name", "action", "target_label", "via", "ip")
    list_filter = ("action", "via")
    search_fields = ("actor_name", "target_label")
    # Counting a large log on every page costs more than it tells.
    show_full_result_count = False
    list_per_page = 100
    fields = (
        "id",
        "at",
        "actor",
        "actor_name",
        "action",
        "target_type",
        "target_id",
        "target_label",
        "model_id",
        "changes",
        "via",
        "ip",
        "user_agent",
        "request_id",
        "prev_hash",
        "hash",
    )
    readonly_fields = fields


@admin.register(AuditCheck)
class AuditCheckAdmin(ReadOnlyAdmin):
    list_display = ("checked_at", "ok", "events_checked", "first_broken_id", "head_hash")
    list_filter = ("ok",)
    fields = (*list_display, "message")
    readonly_fields = fields
