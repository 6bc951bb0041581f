"""MLflow background work: copy a run's logged files into the version registered from them,
and delete logged files past their retention."""

from celery import shared_task
from django.contrib.auth import get_user_model

from apps.mlflow_compat.staging import (
    import_staged_files,
    staged_files_expire,
    version_import_failed,
)

MAX_RETRIES = 5


@shared_task(bind=True, acks_late=True, max_retries=MAX_RETRIES)
def import_staged_files_task(
    self, version_id: int, actor_id: int, file_ids: list[int], prefix: str
) -> None:
    """Copy, then seal (which queues verification); idempotent. Storage errors retry with
    backoff; when retries run out the version fails with the reason instead of staying
    pending."""
    actor = get_user_model().objects.filter(pk=actor_id).first()
    try:
        import_staged_files(version_id=version_id, actor=actor, file_ids=file_ids, prefix=prefix)
    except OSError as error:
        if self.request.retries >= self.max_retries:
            version_import_failed(version_id, f"Copying the logged files kept failing: {error}")
            return
        raise self.retry(exc=error, countdown=5 * 2**self.request.retries) from error


@shared_task
def staging_expire_task() -> int:
    """Hourly (beat): staged files past REGENT_MLFLOW_STAGING_DAYS, and staging orphans."""
    return staged_files_expire()
