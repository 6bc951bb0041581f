"""The Celery application: configured from Django settings (CELERY_* names)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "registry_site.settings")

app = Celery("regent")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
