"""Loaded before Django (`-p tests.testenv`): point the suite at PostgreSQL and Redis.

The suite always runs on PostgreSQL (TEST_DATABASE_URL) with a real Redis broker
(TEST_REDIS_URL); tasks are never eager here, tests call task functions directly or run a
real worker.
"""

import os
import tempfile

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
os.environ["DATABASE_URL"] = os.environ.get(
    "TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/regent"
)
# Database 15 keeps test messages away from a developer's own queues on database 0.
os.environ["CELERY_BROKER_URL"] = (
    os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + "/15"
)
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-" + "x" * 20)
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("REGENT_BASE_URL", "http://testserver")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ["REGENT_DATA_DIR"] = tempfile.mkdtemp(prefix="regent-test-")
os.environ.pop("EMAIL_HOST", None)
os.environ.pop("REGENT_ARTIFACTS", None)
