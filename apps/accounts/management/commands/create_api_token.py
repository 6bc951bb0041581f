"""`manage.py create_api_token USER [--scope read|write] [--expires-days N]`: print a token once."""

from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.models import TokenScope, User
from apps.accounts.services import TokenError, token_create
from apps.audit.context import Via, using_via


class Command(BaseCommand):
    help = "Create an API token for USER and print it (it is shown only this once)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--scope", choices=TokenScope.values, default=TokenScope.READ)
        parser.add_argument("--expires-days", type=int, default=None)
        parser.add_argument("--name", default="command line")

    def handle(self, *args: object, **options: object) -> None:
        user = User.objects.filter(username=options["username"], is_active=True).first()
        if user is None:
            raise CommandError(f"No active user named {options['username']!r}.")
        try:
            with using_via(Via.CLI):
                _, plaintext = token_create(
                    user=user,
                    name=str(options["name"]),
                    scope=str(options["scope"]),
                    expires_days=options["expires_days"],
                )
        except TokenError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(plaintext)
