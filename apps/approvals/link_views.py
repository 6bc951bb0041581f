"""Email approval links: DESIGN "Email approval links", SECURITY §0 (1, 2) and EL-01…EL-13.

Decisions:

1. **The decision needs the bound approver's own signed-in session and a CSRF-protected
   POST.** The token alone is never a credential: a mail scanner that fetches the link, runs
   its JavaScript and clicks every button cannot approve (EL-02), and a forwarded mail is
   useless to anyone else (EL-07: 403 "this link belongs to another reviewer").
2. **GET `reviews/link/<token>/` only checks the signature** (`links.link_read`), stores the
   token in the session and redirects (302) to the tokenless `reviews/link/` — Django's
   password-reset trick — so the token never sits in the address bar, the history or a
   `Referer`. GET and HEAD never write application state (no audit `approval_link.viewed`
   either: an unauthenticated flood would only fill the log). Every response of these views
   says `Cache-Control: no-store`; the token URL says `Referrer-Policy: no-referrer`, the
   tokenless page `same-origin` (with `no-referrer` browsers send `Origin: null` on its
   POST, which Django's CSRF check rightly refuses).
3. **The tokenless page** asks anonymous visitors to sign in (`?next=/reviews/link/`; the
   login keeps the session's data while it cycles the key). Signed in, it checks, in this
   order: the link row exists; it is unused (else 410); unexpired (410); it belongs to this
   user (403); the request is still pending (410 "closed: <status>"); the request revision
   and the version fingerprint are those the email was about (409 "changed"); the user may
   still review (403). Then it shows a plain POST form: Approve / Reject (comment). No
   auto-submit script, no meta refresh.
4. **POST `reviews/link/`**: the same checks under the request's row lock, then in ONE
   transaction the link is claimed by a conditional UPDATE (0 rows ⇒ 410 used) and
   `promotion_approve`/`promotion_reject(via="email")` runs, which re-checks the approver's
   *current* permission and separation of duties. If the service refuses, the transaction
   rolls back — the link is not consumed — and the page says why with the service's status
   (a 403 also writes an `approval_link.denied` audit event). Success: 303 to the request
   page with a message, and the token leaves the session.
5. **Every invalid token** — tampered, truncated, empty, 10 KB of garbage, signed for another
   purpose (salt) or with an unknown key — gets the same generic 404 "This link is not valid"
   page, which echoes nothing of the token. Expired signatures get 410. Links signed with a
   key still listed in `SECRET_KEY_FALLBACKS` keep working (Django's signing does it).
6. **Used/expired links answer 410** (gone for good); a request that changed answers 409.
7. The token must never be logged: Django logs the path of 4xx responses, so
   `apps.approvals.logging.RedactReviewLinks` rewrites `reviews/link/<anything>` in log
   records (configured on the log handlers in settings).
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.crypto import constant_time_compare
from django.views.decorators.http import require_http_methods, require_safe

from apps.approvals import selectors, services
from apps.approvals.forms import LinkDecisionForm
from apps.approvals.links import LinkClaim, LinkExpired, LinkInvalid, link_read
from apps.approvals.links import version_fingerprint as fingerprint_of
from apps.approvals.models import Decision, PromotionRequest, PromotionStatus, ReviewLink
from apps.audit.context import Via
from apps.audit.services import audit_record
from apps.registry.models import ModelVersion
from registry_site.api_errors import ApiError

SESSION_KEY = "approvals.review_link"

_LINK_RELATED = (
    "promotion__version__model",
    "promotion__version__created_by",
    "promotion__stage__policy",
    "promotion__stage__current_version",
    "promotion__requested_by",
)


@dataclass(eq=False)
class LinkProblem(Exception):
    """Why a valid-looking link cannot be used now: shown as a page with `status`."""

    status: int
    title: str
    message: str
    promotion: PromotionRequest | None = None  # linked only for the bound approver
    forget: bool = True  # drop the token from the session: it can never work again
    audit: str = ""  # set for denials worth an `approval_link.denied` event


def _private(policy: str) -> Callable[..., Callable[..., HttpResponse]]:
    """No cached copy and the given Referrer-Policy, whatever the response."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            response = view(request, *args, **kwargs)
            response["Referrer-Policy"] = policy
            add_never_cache_headers(response)
            return response

        return wrapper

    return decorate


def _invalid(request: HttpRequest) -> HttpResponse:
    """One page for every invalid link: no hint whether a request or reviewer exists."""
    return render(request, "approvals/link_invalid.html", status=404)


def _problem_page(request: HttpRequest, problem: LinkProblem) -> HttpResponse:
    if problem.forget:
        request.session.pop(SESSION_KEY, None)
    context = {"problem": problem}
    return render(request, "approvals/link_problem.html", context, status=problem.status)


def _expired() -> LinkProblem:
    return LinkProblem(
        410,
        "This link has expired",
        "Links in review emails work for a limited time. "
        "Open the request in Regent (Reviews) or ask the requester for a new link.",
    )


@require_safe
@_private("no-referrer")  # the URL holds the token: it must never become a Referer
def link_open_view(request: HttpRequest, token: str) -> HttpResponse:
    """GET/HEAD of the emailed URL: check the signature, park the token, drop it from the URL."""
    token = token.rstrip("/")  # a mail client that dropped or doubled the trailing slash
    try:
        link_read(token)
    except LinkInvalid:
        return _invalid(request)
    except LinkExpired:
        return _problem_page(request, _expired())
    request.session[SESSION_KEY] = token
    return redirect("approvals:link-confirm")


def _load_link(claim: LinkClaim) -> ReviewLink:
    link = ReviewLink.objects.select_related(*_LINK_RELATED).filter(pk=claim.link_id).first()
    # The row must be the one the token was signed for (a deleted request takes its links).
    if link is None or link.approver_id != claim.user_id or link.revision != claim.revision:
        raise LinkInvalid()
    return link


def _check(link: ReviewLink, claim: LinkClaim, user: Any) -> PromotionRequest:
    """The checks of the docstring's point 3, in order; the request on success."""
    now = timezone.now()
    if link.used_at is not None:
        raise LinkProblem(410, "This link was already used", "A review link works once.")
    if link.expires_at <= now:
        raise _expired()
    if user.pk != link.approver_id:
        raise LinkProblem(
            403,
            "This link belongs to another reviewer",
            "It was emailed to someone else. If you are an approver of this stage, "
            "review the request from your Reviews inbox.",
            forget=False,
            audit="link of another reviewer",
        )
    promotion = link.promotion
    if promotion.status == PromotionStatus.PENDING and promotion.expires_at <= now:
        promotion.status = PromotionStatus.EXPIRED  # the sweep has not run yet: it is over
    if promotion.status != PromotionStatus.PENDING:
        raise LinkProblem(
            410,
            f"This request is closed: {promotion.status}",
            "It can no longer be reviewed.",
            promotion,
        )
    if promotion.revision != claim.revision or not constant_time_compare(
        fingerprint_of(promotion.version), claim.fingerprint
    ):
        raise LinkProblem(
            409,
            "This request changed after the email was sent",
            "Read the request as it is now before you decide, from its page in Regent.",
            promotion,
        )
    return promotion


def _ensure_reviewer(promotion: PromotionRequest, user: Any) -> None:
    try:
        services.ensure_can_review(promotion, user)
    except ApiError as error:
        raise LinkProblem(
            error.status, "You cannot review this request", error.message, audit=error.code
        ) from None


def _session_claim(request: HttpRequest) -> tuple[str, LinkClaim] | None:
    token = request.session.get(SESSION_KEY)
    if not isinstance(token, str):
        return None
    try:
        return token, link_read(token)
    except LinkInvalid:
        request.session.pop(SESSION_KEY, None)
        return None
    except LinkExpired:
        raise _expired() from None


def _sign_in_page(request: HttpRequest, status: int) -> HttpResponse:
    login = resolve_url(settings.LOGIN_URL)
    next_url = reverse("approvals:link-confirm")
    context = {"login_url": f"{login}?{urlencode({'next': next_url})}"}
    return render(request, "approvals/link_signin.html", context, status=status)


@require_http_methods(["GET", "HEAD", "POST"])
# Tokenless URL. Not "no-referrer": with it browsers send `Origin: null` on the form's POST
# and Django's CSRF check refuses it; same-origin never sends a Referer to another site.
@_private("same-origin")
def link_confirm_view(request: HttpRequest) -> HttpResponse:
    """The tokenless page: sign in, then confirm (GET) or decide (POST)."""
    try:
        found = _session_claim(request)
        if found is None:
            return _invalid(request)
        if not request.user.is_authenticated:
            return _sign_in_page(request, 200 if request.method != "POST" else 403)
        if request.method == "POST":
            return _decide(request, found[1])
        return _confirm_page(request, found[1])
    except LinkInvalid:
        request.session.pop(SESSION_KEY, None)
        return _invalid(request)
    except LinkProblem as problem:
        _audit_denial(request, problem)
        return _problem_page(request, problem)


def _confirm_page(
    request: HttpRequest,
    claim: LinkClaim,
    form: LinkDecisionForm | None = None,
    status: int = 200,
) -> HttpResponse:
    link = _load_link(claim)
    promotion = _check(link, claim, request.user)
    _ensure_reviewer(promotion, request.user)
    context = {
        "promotion": promotion,
        "version": promotion.version,
        "stage": promotion.stage,
        "link": link,
        "comparison": selectors.metrics_comparison(
            promotion.version, promotion.stage.current_version
        ),
        "approvals": promotion.reviews.filter(decision=Decision.APPROVE).count(),
        "form": form or LinkDecisionForm(),
    }
    return render(request, "approvals/link_confirm.html", context, status=status)


def _decide(request: HttpRequest, claim: LinkClaim) -> HttpResponse:
    form = LinkDecisionForm(request.POST)
    if not form.is_valid():
        return _confirm_page(request, claim, form, status=400)
    user, data = request.user, form.cleaned_data
    decide = (
        services.promotion_approve
        if data["decision"] == Decision.APPROVE
        else services.promotion_reject
    )
    try:
        with transaction.atomic():
            promotion = _claim_link(claim, user)
            decide(promotion=promotion, reviewer=user, comment=data["comment"], via=Via.EMAIL)
    except ApiError as error:
        # Rolled back: the link is still unused. 403: permission revoked since the email.
        problem = LinkProblem(
            error.status,
            "Your review was not recorded",
            error.message,
            forget=error.status not in (400, 403),
            audit=error.code if error.status == 403 else "",
        )
        _audit_denial(request, problem, claim)
        return _problem_page(request, problem)
    request.session.pop(SESSION_KEY, None)
    promotion.refresh_from_db(fields=["status"])
    messages.success(request, f"Your review is recorded. The request is {promotion.status}.")
    response = HttpResponseRedirect(promotion.get_absolute_url())
    response.status_code = 303  # See Other: the browser GETs the request page
    return response


def _claim_link(claim: LinkClaim, user: Any) -> PromotionRequest:
    """Lock the request and version, re-run every check on fresh rows, consume the link."""
    promotion_id = (
        ReviewLink.objects.filter(pk=claim.link_id).values_list("promotion_id", flat=True).first()
    )
    locked = (
        PromotionRequest.objects.select_for_update(of=("self",))
        .only("pk", "version_id")
        .filter(pk=promotion_id)
        .first()
    )
    if locked is None:
        raise LinkInvalid()
    # The version too: a description edit racing this decision waits or is seen.
    list(ModelVersion.objects.select_for_update().filter(pk=locked.version_id).values_list("pk"))
    link = _load_link(claim)
    promotion = _check(link, claim, user)
    if not services.review_link_claim(link):
        raise LinkProblem(410, "This link was already used", "A review link works once.")
    return promotion


def _audit_denial(
    request: HttpRequest, problem: LinkProblem, claim: LinkClaim | None = None
) -> None:
    """A refused POST leaves a trace (never the token): who, which request, why."""
    if request.method != "POST" or not problem.audit or not request.user.is_authenticated:
        return
    claim = claim or _session_claim_quiet(request)
    link = ReviewLink.objects.select_related("promotion__stage").filter(
        pk=claim.link_id if claim else 0
    )
    found = link.first()
    if found is None:
        return
    with transaction.atomic():
        audit_record(
            actor=request.user,
            action="approval_link.denied",
            target=found.promotion,
            changes={"link": found.pk, "reason": problem.audit},
            via=Via.EMAIL,
        )


def _session_claim_quiet(request: HttpRequest) -> LinkClaim | None:
    try:
        found = _session_claim(request)
    except LinkProblem:
        return None
    return found[1] if found else None
