"""Forms of the account pages."""

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm, PasswordChangeForm
from django.db import transaction

from apps.accounts.models import TokenScope, User
from apps.accounts.services import TokenError
from apps.audit.services import audit_record

# One message for every failure, so the page never tells whether an account exists.
SIGN_IN_FAILED = "Username or password is incorrect."

NEVER = "never"
EXPIRY_CHOICES = [
    ("7", "7 days"),
    ("30", "30 days"),
    ("90", "90 days"),
    ("365", "1 year"),
    (NEVER, "Never"),
]
DEFAULT_EXPIRY = "90"


class NoColonLabels:
    """Labels read "Name", not "Name:" (they sit above their inputs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


class SignInForm(NoColonLabels, AuthenticationForm):
    """Django's sign-in form with a single, non-revealing error message."""

    error_messages = {"invalid_login": SIGN_IN_FAILED, "inactive": SIGN_IN_FAILED}


class AuditedPasswordChangeForm(NoColonLabels, PasswordChangeForm):
    """Django's password change, recorded in the audit log in the same transaction."""

    @transaction.atomic
    def save(self, commit: bool = True) -> User:
        user = super().save(commit=commit)
        if commit:
            audit_record(actor=user, action="user.password_changed", target=user)
        return user


def _days_or_never(value: str) -> int | None:
    return None if value == NEVER else int(value)


class TokenCreateForm(NoColonLabels, forms.Form):
    """Name, scope and lifetime of a new API token."""

    name = forms.CharField(
        max_length=100,
        help_text="What will use it, e.g. “CI pipeline” or “my laptop”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    scope = forms.ChoiceField(
        choices=TokenScope.choices,
        initial=TokenScope.READ,
        widget=forms.RadioSelect,
        help_text="Read only can list and download; pipelines that push versions need write.",
    )
    expires_days = forms.TypedChoiceField(
        label="Expires after",
        choices=EXPIRY_CHOICES,
        coerce=_days_or_never,
        initial=DEFAULT_EXPIRY,
    )

    def add_service_error(self, error: TokenError) -> None:
        """Show a service refusal ("field: message") next to the field it names."""
        field, _, message = str(error).partition(": ")
        if field in self.fields and message:
            self.add_error(field, message)
        else:
            self.add_error(None, str(error))

    def service_kwargs(self) -> dict[str, Any]:
        return {key: self.cleaned_data[key] for key in ("name", "scope", "expires_days")}
