"""`manage.py ensure_demo_admin`: the embedded default's demo superuser, printed at every start."""

import secrets

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.accounts.models import User

USERNAME = "admin"


class Command(BaseCommand):
    help = "Create the demo superuser 'admin' once (password kept under the data dir) and print it."

    def handle(self, *args: object, **options: object) -> None:
        password_file = settings.DATA_DIR / "demo-admin-password"
        if not password_file.exists():
            settings.DATA_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
            password_file.write_text(secrets.token_urlsafe(12))
            password_file.chmod(0o600)
        password = password_file.read_text().strip()
        if not User.objects.filter(username=USERNAME).exists():
            User.objects.create_superuser(USERNAME, "admin@localhost", password)
        self.stdout.write(f"Demo sign-in: {USERNAME} / {password}")
