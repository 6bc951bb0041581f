"""Registry background work: verify sealed versions, scrub stored files, sweep lost work.

Thin wrappers: the services do the work and are idempotent against the database state, so
a task delivered twice, late, or after its version is gone does nothing harmful.
"""

from celery import shared_task

from apps.registry.artifacts import (
    scrub_artifacts,
    sweep_orphan_objects,
    sweep_unverified,
    version_verify,
)


@shared_task(acks_late=True, autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def version_verify_task(version_id: int) -> None:
    """Hash a sealed version's files and mark it ready or failed (storage errors retry)."""
    version_verify(version_id=version_id)


@shared_task(acks_late=True)
def scrub_artifacts_task() -> None:
    """Re-hash a bounded batch of verified files; flag versions whose bytes changed."""
    scrub_artifacts()


@shared_task(acks_late=True)
def sweep_unverified_task() -> None:
    """Re-enqueue versions left `verifying` by a lost task or a broker that was down."""
    sweep_unverified()


@shared_task(acks_late=True)
def sweep_orphan_objects_task() -> None:
    """Delete stored objects that no artifact row refers to (after a grace period)."""
    sweep_orphan_objects()
