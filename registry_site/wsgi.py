"""WSGI entry point (gunicorn registry_site.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "registry_site.settings")

application = get_wsgi_application()
# Import the URLconf (every view module) now rather than on the first request: with
# gunicorn's preload_app the workers fork with it loaded and share those pages.
get_resolver().url_patterns  # noqa: B018
