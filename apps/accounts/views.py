"""Account pages: sign in and out, password change, API tokens."""

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import (
    LoginView,
    LogoutView,
    PasswordChangeDoneView,
    PasswordChangeView,
)
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse_lazy
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_POST, require_safe

from apps.accounts.forms import AuditedPasswordChangeForm, SignInForm, TokenCreateForm
from apps.accounts.models import ApiToken
from apps.accounts.services import TokenError, token_create, token_revoke


class SignInView(LoginView):
    """Sign in; failures show one message whether or not the user exists."""

    template_name = "accounts/login.html"
    authentication_form = SignInForm
    redirect_authenticated_user = True


class SignOutView(LogoutView):
    """Sign out (POST only, as Django requires) and say so on the next page."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().post(request, *args, **kwargs)
        messages.info(request, "You have signed out.")
        return response


class PasswordChange(PasswordChangeView):
    """Change the password; Django keeps the current session signed in."""

    template_name = "accounts/password_change.html"
    form_class = AuditedPasswordChangeForm
    success_url = reverse_lazy("accounts:password_change_done")


class PasswordChangeDone(PasswordChangeDoneView):
    """Confirms the password change."""

    template_name = "accounts/password_change_done.html"


def _tokens_page(request: HttpRequest, form: TokenCreateForm, status: int = 200) -> HttpResponse:
    tokens = ApiToken.objects.filter(user=request.user).order_by("-created_at", "-id")
    context = {"form": form, "tokens": tokens}
    return render(request, "accounts/tokens.html", context, status=status)


@require_safe
@login_required
def tokens_view(request: HttpRequest) -> HttpResponse:
    """The user's API tokens and the form to create one."""
    return _tokens_page(request, TokenCreateForm())


@require_POST
@login_required
def token_create_view(request: HttpRequest) -> HttpResponse:
    """Create a token and show its plaintext in this response only, never cached."""
    form = TokenCreateForm(request.POST)
    if not form.is_valid():
        return _tokens_page(request, form, status=400)
    try:
        token, plaintext = token_create(user=request.user, **form.service_kwargs())
    except TokenError as error:
        form.add_service_error(error)
        return _tokens_page(request, form, status=400)
    context = {"token": token, "plaintext": plaintext, "base_url": settings.REGENT_BASE_URL}
    response = render(request, "accounts/token_created.html", context)
    add_never_cache_headers(response)  # includes no-store: the secret must not sit in a cache
    return response


@require_POST
@login_required
def token_revoke_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Revoke one of the user's own tokens; anyone else's token is a 404."""
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    token_revoke(token=token, actor=request.user)
    messages.success(request, f"Token “{token.name}” revoked: it no longer works.")
    return redirect("accounts:tokens")
