"""Per-object history: `history_for`, the `_history.html` partial other pages include in
their "History" tab, and the standalone page `audit:object-history`."""

import re

import pytest
from django.template.loader import render_to_string
from django.urls import reverse
from guardian.shortcuts import assign_perm

from apps.accounts.models import TokenScope
from apps.accounts.services import token_create
from apps.approvals.services import stage_create
from apps.audit.models import AuditEvent
from apps.audit.selectors import history_for
from apps.audit.services import audit_record
from apps.registry.services import model_create, model_update, version_create, version_update
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

SECRET = "fraud-model"


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def private_model(alice, bob):
    model = model_create(actor=alice, name=SECRET, description="first cut")
    assign_perm("registry.view_registeredmodel", bob, model)
    return model


@pytest.fixture
def version(alice, private_model):
    version = version_create(actor=alice, model=private_model, description="v1")
    version_update(actor=alice, version=version, description="v1, retrained")
    return version


@pytest.fixture
def other_model(alice):
    return model_create(actor=alice, name="other-model")


def history_url(target_type: str, target_id) -> str:
    return reverse("audit:object-history", args=[target_type, target_id])


def page_text(response) -> str:
    """The page without its per-response CSRF token."""
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", response.content.decode())


def actions(events) -> list[str]:
    return [event.action for event in events]


# --- history_for ----------------------------------------------------------------------------


def test_model_history_holds_everything_about_the_model(alice, private_model, version, other_model):
    stage_create(actor=alice, model=private_model, name="canary")
    model_update(actor=alice, model=private_model, description="second cut")
    history = history_for(alice, private_model)
    assert actions(history) == [
        "model.updated",
        "stage.created",
        "version.updated",
        "version.created",
        "model.created",
    ]
    assert other_model.pk not in {event.model_id for event in history}


def test_version_history_is_only_the_version(alice, private_model, version):
    assert actions(history_for(alice, version)) == ["version.updated", "version.created"]
    pair = ("registry.modelversion", str(version.pk))
    assert actions(history_for(alice, pair)) == ["version.updated", "version.created"]


def test_history_follows_the_permission_rule(bob, outsider, superuser, private_model, version):
    assert not history_for(outsider, private_model).exists()
    assert not history_for(outsider, version).exists()
    assert history_for(bob, version).count() == 2
    assert history_for(superuser, private_model).count() == 3


# --- The partial ----------------------------------------------------------------------------


def test_partial_shows_who_when_how_and_a_diff(alice, private_model, version):
    html = render_to_string("audit/_history.html", {"events": history_for(alice, version)})
    assert html.count("<tr>") == 3  # header + two events
    assert "version.updated" in html and "version.created" in html
    assert '<span class="audit-field">description</span>' in html
    assert "<del>v1</del>" in html and "<ins>v1, retrained</ins>" in html
    assert "alice" in html and '<span class="badge">system</span>' in html
    assert 'href="/models/fraud-model/versions/1/"' in html
    assert "<time datetime=" in html


def test_partial_escapes_hostile_values(alice, private_model):
    audit_record(
        actor=None,
        actor_name="<b>mallory</b>\r\nadmin",
        action="demo.hostile",
        target=private_model,
        changes={"before": {"card": "<script>x()</script>"}, "after": {"card": "\x1b[2J" * 3}},
    )
    html = render_to_string("audit/_history.html", {"events": history_for(alice, private_model)})
    assert "<script>" not in html and "<b>mallory" not in html
    assert "&lt;script&gt;x()&lt;/script&gt;" in html
    assert "&lt;b&gt;mallory&lt;/b&gt;\\x0d\\x0aadmin" in html
    assert "\x1b" not in html and "\\x1b[2J" in html


def test_partial_shows_additions_and_removals(alice, private_model):
    audit_record(
        actor=alice,
        action="demo.tags",
        target=private_model,
        changes={"before": {"old": "1"}, "after": {"new": "2"}},
    )
    html = render_to_string(
        "audit/_history.html", {"events": history_for(alice, private_model)[:1]}
    )
    assert "(none)" in html and "<ins>2</ins>" in html
    assert "<del>1</del>" in html and "(removed)" in html


def test_partial_when_there_is_no_history(db):
    html = render_to_string("audit/_history.html", {"events": []})
    assert "No history yet" in html


# --- The standalone page --------------------------------------------------------------------


def test_viewer_reads_a_version_history(client, bob, version):
    client.force_login(bob)
    response = client.get(history_url("registry.modelversion", version.pk))
    assert response.status_code == 200
    assert actions(response.context["page"].object_list) == ["version.updated", "version.created"]
    html = response.content.decode()
    assert 'href="/models/fraud-model/versions/1/"' in html
    assert "fraud-model/1" in html


def test_model_history_page_includes_its_versions(client, alice, private_model, version):
    client.force_login(alice)
    response = client.get(history_url("registry.registeredmodel", private_model.pk))
    assert "version.created" in actions(response.context["page"].object_list)


def test_outsider_gets_the_same_404_as_for_a_missing_object(client, outsider, version):
    client.force_login(outsider)
    hidden = client.get(history_url("registry.modelversion", version.pk))
    missing = client.get(history_url("registry.modelversion", version.pk + 1000))
    assert hidden.status_code == missing.status_code == 404
    assert SECRET not in hidden.content.decode()
    assert page_text(hidden).replace(str(version.pk), "ID") == page_text(missing).replace(
        str(version.pk + 1000), "ID"
    )


@pytest.mark.parametrize(
    ("target_type", "target_id"),
    [
        ("nothing.here", "1"),
        ("registry", "1"),
        ("registry.registeredmodel", "abc"),
        ("registry.registeredmodel", "9" * 40),
        ("registry.registeredmodel", "-1"),
        ("auth.permission", "1"),
    ],
)
def test_garbage_targets_are_404(client, superuser, target_type, target_id):
    client.force_login(superuser)
    assert client.get(history_url(target_type, target_id)).status_code == 404


def test_superuser_reads_any_history(client, superuser, version):
    client.force_login(superuser)
    assert client.get(history_url("registry.modelversion", version.pk)).status_code == 200


def test_object_without_events_of_a_visible_model_has_an_empty_history(client, bob, private_model):
    stage = private_model.stages.get(name="production")  # created silently with the model
    client.force_login(bob)
    response = client.get(history_url("approvals.stage", stage.pk))
    assert response.status_code == 200
    assert "No history yet" in response.content.decode()
    assert 'href="/models/fraud-model/stages/production/"' in response.content.decode()


def test_my_account_and_tokens_but_not_someone_elses(client, alice, outsider):
    token, _ = token_create(user=alice, name="ci", scope=TokenScope.READ)
    client.force_login(alice)
    assert client.get(history_url("accounts.user", alice.pk)).status_code == 200
    assert client.get(history_url("accounts.apitoken", token.pk)).status_code == 200
    assert client.get(history_url("accounts.user", outsider.pk)).status_code == 404
    client.force_login(outsider)
    assert client.get(history_url("accounts.apitoken", token.pk)).status_code == 404


def test_history_page_has_a_bounded_query_count(
    client, alice, private_model, django_assert_max_num_queries
):
    for number in range(120):
        audit_record(actor=alice, action="demo.bulk", target=private_model, changes={"n": number})
    client.force_login(alice)
    with django_assert_max_num_queries(10):
        response = client.get(history_url("registry.registeredmodel", private_model.pk))
    assert len(response.context["page"].object_list) == 50
    assert response.context["page"].older_cursor is not None
    assert AuditEvent.objects.filter(model_id=private_model.pk).count() > 120
