"""`manage.py audit_verify`: recompute the audit hash chain and name the first broken link."""

from django.core.management.base import BaseCommand, CommandError

from apps.audit.selectors import audit_verify_chain
from apps.audit.services import audit_check_record


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exit non-zero naming the first broken event."

    def handle(self, *args: object, **options: object) -> None:
        report = audit_verify_chain()
        audit_check_record(report)
        if not report.ok:
            raise CommandError(
                f"Audit chain BROKEN at {report.message} "
                f"({report.events_checked} events verified before it)."
            )
        self.stdout.write(
            f"Audit chain intact: {report.events_checked} events verified, head {report.head_hash}."
        )
