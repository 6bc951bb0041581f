"""Who reads which audit events, on the page and through the API; filters, paging, links.

Personas: alice owns the private model "fraud-model"; bob has the viewer role on it; dave
(`outsider`) has no role; root is a superuser.
"""

import types
from datetime import timedelta

import pytest
from django.urls import Resolver404, path, resolve, reverse
from guardian.shortcuts import assign_perm
from ninja import NinjaAPI

from apps.accounts.auth import api_auth
from apps.accounts.models import TokenScope
from apps.accounts.services import token_create
from apps.audit import selectors, views
from apps.audit.api import router as audit_router
from apps.audit.links import object_url
from apps.audit.models import AuditCheck, AuditEvent
from apps.audit.services import audit_record
from apps.registry.services import model_create, version_create
from registry_site.api_errors import ApiError, api_error_response
from tests.conftest import bearer, make_user

pytestmark = pytest.mark.django_db

AUDIT = reverse("audit:list")
SECRET = "fraud-model"


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def private_model(alice, bob):
    model = model_create(actor=alice, name=SECRET, description="Detects fraud")
    version_create(actor=alice, model=model, description="first cut")
    assign_perm("registry.view_registeredmodel", bob, model)
    return model


@pytest.fixture
def internal_model(alice):
    return model_create(actor=alice, name="shared-model", visibility="internal")


def shown(response) -> list[AuditEvent]:
    return list(response.context["page"].object_list)


def model_ids(events) -> set[int | None]:
    return {event.model_id for event in events}


# --- The rule -------------------------------------------------------------------------------


def test_outsider_sees_nothing_about_a_private_model(client, outsider, private_model):
    client.force_login(outsider)
    response = client.get(AUDIT)
    assert response.status_code == 200
    assert private_model.pk not in model_ids(shown(response))
    assert SECRET not in response.content.decode()


def test_viewer_sees_the_model_events(client, bob, private_model):
    client.force_login(bob)
    actions = {event.action for event in shown(client.get(AUDIT))}
    assert {"model.created", "version.created"} <= actions


def test_owner_and_superuser_see_them(client, alice, superuser, private_model):
    for user in (alice, superuser):
        client.force_login(user)
        assert private_model.pk in model_ids(shown(client.get(AUDIT)))


def test_internal_model_events_are_visible_to_every_signed_in_user(
    client, outsider, internal_model
):
    client.force_login(outsider)
    assert internal_model.pk in model_ids(shown(client.get(AUDIT)))


def test_own_deeds_about_a_hidden_model_stay_hidden(outsider, private_model):
    # A revoked editor (say) did something to the model: the model's history went with it.
    audit_record(actor=outsider, action="demo.edited", target=private_model)
    audit_record(actor=outsider, action="demo.personal")
    visible = selectors.audit_events_visible_to(outsider)
    assert not visible.filter(model_id=private_model.pk).exists()
    assert visible.filter(action="demo.personal").exists()


def test_events_done_to_my_account_are_mine(alice, outsider, superuser):
    audit_record(actor=superuser, action="demo.user_locked", target=outsider)
    audit_record(actor=superuser, action="demo.other_locked", target=alice)
    actions = set(selectors.audit_events_visible_to(outsider).values_list("action", flat=True))
    assert "demo.user_locked" in actions
    assert "demo.other_locked" not in actions


def test_anonymous_and_inactive_users_read_nothing(outsider, private_model):
    from django.contrib.auth.models import AnonymousUser

    assert not selectors.audit_events_visible_to(AnonymousUser()).exists()
    outsider.is_active = False
    assert not selectors.audit_events_visible_to(outsider).exists()


def test_counts_leave_out_hidden_events(client, outsider, private_model):
    client.force_login(outsider)  # signing in is the outsider's only visible event
    page = client.get(AUDIT).context["page"]
    expected = selectors.audit_events_visible_to(outsider).count()
    assert page.count == expected == len(page.object_list)
    assert AuditEvent.objects.count() > expected


def test_parents_in_hidden_models_are_not_named(client, audit_api, alice, bob, private_model):
    hidden = model_create(actor=alice, name="hidden-base")
    version_create(actor=alice, model=hidden)
    child = version_create(actor=alice, model=private_model, parents=["hidden-base/1"])
    client.force_login(bob)
    response = client.get(AUDIT, {"model": SECRET})
    assert "hidden-base" not in response.content.decode()
    (event,) = [e for e in shown(response) if e.target_id == str(child.pk)]
    assert event.changes["after"]["parents"] == []
    assert "hidden-base" not in api_get(client, audit_api, bob, model=SECRET).content.decode()
    client.force_login(alice)  # the owner of both models sees the reference
    assert "hidden-base/1" in client.get(AUDIT, {"model": SECRET}).content.decode()


# --- Filters --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [SECRET, "FRAUD-MODEL", "no-such-model"])
def test_model_filter_hides_existence(client, outsider, private_model, name):
    client.force_login(outsider)
    response = client.get(AUDIT, {"model": name})
    assert response.status_code == 200
    assert shown(response) == []
    assert response.context["page"].count == 0


def test_model_filter_for_a_viewer(client, bob, private_model, internal_model):
    client.force_login(bob)
    events = shown(client.get(AUDIT, {"model": "Fraud-Model"}))
    assert events and model_ids(events) == {private_model.pk}


def test_filters_by_actor_action_target_via(client, superuser, alice, bob, private_model):
    version = private_model.versions.get()
    audit_record(actor=bob, action="demo.api_call", via="api")
    client.force_login(superuser)
    assert {e.actor_name for e in shown(client.get(AUDIT, {"actor": "ALICE"}))} == {"alice"}
    assert {e.action for e in shown(client.get(AUDIT, {"action": "version"}))} == {
        "version.created"
    }
    target = f"registry.modelversion:{version.pk}"
    assert [e.action for e in shown(client.get(AUDIT, {"target": target}))] == ["version.created"]
    by_type = shown(client.get(AUDIT, {"target": "registry.registeredmodel"}))
    assert {e.action for e in by_type} == {"model.created"}
    assert [e.action for e in shown(client.get(AUDIT, {"via": "api"}))] == ["demo.api_call"]


def test_filters_by_date_range(client, superuser, alice):
    old = audit_record(actor=alice, action="demo.old")
    client.force_login(superuser)

    def actions(**params) -> set[str]:
        return {event.action for event in shown(client.get(AUDIT, params))}

    today, tomorrow = old.at.date(), old.at.date() + timedelta(days=1)
    assert "demo.old" in actions(since=today.isoformat(), until=today.isoformat())
    assert "demo.old" not in actions(since=tomorrow.isoformat())
    assert "demo.old" not in actions(until=(today - timedelta(days=1)).isoformat())
    second_after = (old.at + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert "demo.old" not in actions(since=second_after)
    assert "demo.old" in actions(until=second_after + "Z")
    # The same instant written two hours behind UTC.
    behind = (old.at + timedelta(seconds=1) - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")
    assert "demo.old" in actions(until=behind + "-02:00")
    assert "demo.old" not in actions(since=behind + "-02:00")


@pytest.mark.parametrize("value", ["yesterday", "2025-02-30", "2025-13-01T00:00"])
def test_invalid_dates_are_field_errors(client, superuser, value):
    client.force_login(superuser)
    response = client.get(AUDIT, {"since": value})
    assert response.status_code == 400
    assert "Not a date" in response.content.decode()
    assert shown(response) == []


# --- Paging, counts and the query budget ----------------------------------------------------


def record(actor, count: int, action: str = "demo.bulk") -> list[AuditEvent]:
    return [audit_record(actor=actor, action=action, changes={"n": n}) for n in range(count)]


def test_keyset_paging_walks_older_and_newer(client, superuser, alice):
    events = record(alice, 120)
    ids = [event.pk for event in reversed(events)]  # newest first
    client.force_login(superuser)
    first = client.get(AUDIT, {"action": "demo.bulk"}).context["page"]
    assert [e.pk for e in first.object_list] == ids[:50]
    assert first.is_newest and first.newer_cursor is None and first.older_cursor == ids[49]
    second = client.get(AUDIT, {"action": "demo.bulk", "before": first.older_cursor})
    second = second.context["page"]
    assert [e.pk for e in second.object_list] == ids[50:100]
    assert second.newer_cursor == ids[50]
    back = client.get(AUDIT, {"action": "demo.bulk", "after": second.newer_cursor})
    assert [e.pk for e in back.context["page"].object_list] == ids[:50]
    third = client.get(AUDIT, {"action": "demo.bulk", "before": second.older_cursor})
    third = third.context["page"]
    assert [e.pk for e in third.object_list] == ids[100:]
    assert third.older_cursor is None
    assert first.count == second.count == 120


def test_paging_links_are_in_the_page(client, superuser, alice):
    events = record(alice, 60)
    client.force_login(superuser)
    html = client.get(AUDIT, {"action": "demo.bulk"}).content.decode()
    assert f"before={events[10].pk}" in html
    assert "120 events" not in html and "60 events" in html


@pytest.mark.parametrize("cursor", ["x", "-1", "0", "9" * 40, "\uff11\uff12"])
def test_bad_cursors_are_ignored(client, superuser, alice, cursor):
    record(alice, 3)
    client.force_login(superuser)
    response = client.get(AUDIT, {"action": "demo.bulk", "before": cursor, "after": cursor})
    assert response.status_code == 200
    assert len(shown(response)) == 3


def test_count_is_capped(client, superuser, alice, monkeypatch):
    monkeypatch.setattr(selectors, "COUNT_CAP", 10)
    record(alice, 15)
    client.force_login(superuser)
    response = client.get(AUDIT, {"action": "demo.bulk"})
    assert response.context["page"].count_capped
    assert "More than 10 events" in response.content.decode()


@pytest.mark.parametrize("persona", ["superuser", "bob"])
def test_page_query_count_does_not_grow_with_the_log(
    client, request, private_model, alice, django_assert_max_num_queries, persona
):
    user = request.getfixturevalue(persona)
    client.force_login(user)

    def queries_for_page() -> int:
        with django_assert_max_num_queries(7) as captured:
            response = client.get(AUDIT, {"model": SECRET})
        assert response.status_code == 200
        assert len(shown(response)) == 50
        return len(captured)

    for n in range(50):
        audit_record(actor=alice, action="demo.bulk", target=private_model, changes={"n": n})
    at_50 = queries_for_page()
    for n in range(450):
        audit_record(actor=alice, action="demo.bulk", target=private_model, changes={"n": n})
    assert queries_for_page() == at_50


# --- Links to objects -----------------------------------------------------------------------


def test_object_urls():
    assert object_url("registry.registeredmodel", "7", "fraud-model") == "/models/fraud-model/"
    assert object_url("registry.modelversion", "9", "fraud-model/3") == (
        "/models/fraud-model/versions/3/"
    )
    assert object_url("registry.artifact", "4", "fraud-model/3:weights/model.onnx") == (
        "/models/fraud-model/versions/3/"
    )
    assert object_url("approvals.promotionrequest", "12", "#12 fraud-model/3 → production") == (
        "/reviews/12/"
    )
    assert object_url("approvals.stage", "5", "fraud-model:production") == (
        "/models/fraud-model/stages/production/"
    )
    assert object_url("approvals.stagepolicy", "5", "policy of fraud-model:staging") == (
        "/models/fraud-model/stages/staging/"
    )
    for target_type in ("accounts.user", "accounts.apitoken", "", "nothing.here"):
        assert object_url(target_type, "1", "alice") is None
    assert object_url("registry.modelversion", "9", "no-number") is None
    assert object_url("registry.registeredmodel", "7", "a/b") is None
    assert object_url("approvals.promotionrequest", "x", "") is None


def test_page_links_each_event_to_its_object(client, alice, private_model):
    version = private_model.versions.get()
    client.force_login(alice)
    html = client.get(AUDIT).content.decode()
    assert 'href="/models/fraud-model/"' in html
    assert 'href="/models/fraud-model/versions/1/"' in html
    history = reverse("audit:object-history", args=["registry.modelversion", version.pk])
    assert f'href="{history}"' in html


# --- AU-06 on the page ----------------------------------------------------------------------

NASTY_NAME = '=HYPERLINK("http://x")\r\n\x1b[31m<script>alert(1)</script>'


def test_hostile_values_are_escaped_and_bounded(client, superuser, alice, private_model):
    comment = "\x1b[2J<img src=x onerror=alert(1)>\r\nInjected: row" + "A" * 1_000_000
    audit_record(
        actor=None,
        actor_name=NASTY_NAME,
        action="demo.hostile",
        target=private_model,
        changes={"comment": comment, "before": "=1+1"},
    )
    client.force_login(superuser)
    response = client.get(AUDIT, {"action": "demo.hostile"})
    html = response.content.decode()
    assert "<script>alert(1)</script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "\x1b" not in html and "\\x1b[31m" in html and "\\x1b[2J" in html
    assert "\\x0d\\x0a" in html  # the fake line break in the name is spelled out
    assert len(response.content) < 200_000
    assert "more characters" in html


# --- Chain status and "Verify now" ----------------------------------------------------------


def test_chain_status_numbers_are_for_superusers(client, superuser, outsider, alice):
    record(alice, 3)
    client.force_login(superuser)
    response = client.post(reverse("audit:verify"), follow=True)
    html = response.content.decode()
    assert "Chain intact" in html and "Verify now" in html
    check = AuditCheck.objects.get()
    assert check.ok and check.head_hash[:16] in html
    client.force_login(outsider)
    html = client.get(AUDIT).content.decode()
    assert "Chain intact" in html
    assert check.head_hash[:16] not in html and "Verify now" not in html


def test_only_superusers_may_verify(client, outsider):
    client.force_login(outsider)
    assert client.post(reverse("audit:verify")).status_code == 403
    assert client.get(reverse("audit:verify")).status_code == 405
    assert not AuditCheck.objects.exists()


def test_a_large_log_is_verified_by_the_worker(client, superuser, monkeypatch):
    queued = []
    monkeypatch.setattr(views, "SYNC_VERIFY_MAX_EVENTS", 0)
    monkeypatch.setattr("apps.audit.tasks.audit_verify_task.delay", lambda: queued.append(1))
    client.force_login(superuser)
    response = client.post(reverse("audit:verify"), follow=True)
    assert queued == [1]
    assert not AuditCheck.objects.exists()
    assert "Verification queued" in response.content.decode()


# --- The API --------------------------------------------------------------------------------

_test_urls = None


def _urls_with_audit_api() -> types.ModuleType:
    """The site's URLs plus the audit router on a test API (until the real API mounts it)."""
    global _test_urls
    if _test_urls is None:
        from registry_site import urls as site_urls

        api = NinjaAPI(auth=api_auth, urls_namespace="audit-test-api", docs_url=None)
        api.add_router("/", audit_router)
        api.add_exception_handler(ApiError, lambda request, exc: api_error_response(exc))
        _test_urls = types.ModuleType("audit_test_urls")
        _test_urls.urlpatterns = [path("api/v1/", api.urls), *site_urls.urlpatterns]
    return _test_urls


@pytest.fixture
def audit_api(settings) -> str:
    try:
        resolve("/api/v1/audit")
    except Resolver404:
        settings.ROOT_URLCONF = _urls_with_audit_api()
    return "/api/v1/audit"


def api_get(client, url, user, **params):
    _, token = token_create(user=user, name="audit-reader", scope=TokenScope.READ)
    return client.get(url, params, **bearer(token))


def test_api_hides_a_private_model_from_an_outsider(client, audit_api, outsider, private_model):
    body = api_get(client, audit_api, outsider).json()
    assert all(item["model_id"] != private_model.pk for item in body["items"])
    assert SECRET not in str(body)
    assert body["count"] == len(body["items"])
    body = api_get(client, audit_api, outsider, model=SECRET).json()
    assert body == {"items": [], "count": 0, "count_capped": False, "page": 1, "pages": 1}


def test_api_lists_a_viewers_events_with_filters(client, audit_api, bob, private_model):
    body = api_get(client, audit_api, bob, model=SECRET, action="version").json()
    assert body["count"] == 1
    item = body["items"][0]
    assert item["action"] == "version.created" and item["actor"] == "alice"
    assert item["url"] == "/models/fraud-model/versions/1/"
    event = AuditEvent.objects.get(pk=item["id"])
    assert item["hash"] == event.hash and item["prev_hash"] == event.prev_hash
    assert item["changes"] == event.changes


def test_api_pages_and_before(client, audit_api, superuser, alice):
    events = record(alice, 7)
    body = api_get(client, audit_api, superuser, action="demo.bulk", page_size=3, page=3).json()
    assert body["count"] == 7 and body["pages"] == 3
    assert [item["id"] for item in body["items"]] == [events[0].pk]
    body = api_get(client, audit_api, superuser, action="demo.bulk", before=events[2].pk).json()
    assert [item["id"] for item in body["items"]] == [events[1].pk, events[0].pk]


def test_api_rejects_bad_dates_and_anonymous_callers(client, audit_api, superuser):
    response = api_get(client, audit_api, superuser, since="not-a-date")
    assert response.status_code == 422
    assert response.json()["error"]["details"]["errors"][0]["field"] == "since"
    assert client.get(audit_api).status_code == 401
