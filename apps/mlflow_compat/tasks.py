"""MLflow background work: copy a run's logged files into the version registered from them."""

from celery import shared_task
from django.contrib.auth import get_user_model

from apps.mlflow_compat.staging import import_staged_files


@shared_task(acks_late=True, autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def import_staged_files_task(
    version_id: int, actor_id: int, file_ids: list[int], prefix: str
) -> None:
    """Copy, then seal (which queues verification); idempotent, storage errors retry."""
    actor = get_user_model().objects.filter(pk=actor_id).first()
    import_staged_files(version_id=version_id, actor=actor, file_ids=file_ids, prefix=prefix)
