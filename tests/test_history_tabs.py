"""History tabs: the model, version, request and stage pages each show their audit events
(newest first, before → after per field), refuse outsiders with a 404, stay within a fixed
query budget, show at most the latest 100, and never name a model the reader may not view."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.approvals.access import set_approver
from apps.approvals.models import Stage
from apps.approvals.services import policy_update, promotion_approve, promotion_request
from apps.audit.services import audit_record
from apps.registry.models import ModelVersion, VersionStatus
from apps.registry.services import model_create, model_update, version_create, version_update
from tests.conftest import grant, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(alice):
    return alice


@pytest.fixture
def viewer(db):
    return make_user("carol")


@pytest.fixture
def approver(db):
    return make_user("erin")


@pytest.fixture
def world(owner, viewer, approver):
    """fraud-detector with v1 (ready, edited), a production request approved by erin, a
    policy change, and an unrelated model whose events must never appear."""
    model = model_create(actor=owner, name="fraud-detector", description="first card")
    model_update(actor=owner, model=model, description="second card")
    grant(viewer, model, "viewer")
    grant(approver, model, "viewer")
    version = version_create(actor=owner, model=model, description="first cut")
    ModelVersion.objects.filter(pk=version.pk).update(status=VersionStatus.READY)
    version.refresh_from_db()
    version_update(actor=owner, version=version, description="retrained")
    production = Stage.objects.get(model=model, name="production")
    set_approver(approver, production, True)
    policy_update(actor=owner, stage=production, required_approvals=1)
    promotion = promotion_request(actor=owner, version=version, stage=production, reason="ship")
    promotion_approve(promotion=promotion, reviewer=approver, comment="lgtm", via="web")
    other = model_create(actor=owner, name="other-model", description="elsewhere")
    model_update(actor=owner, model=other, description="elsewhere, edited")
    return {"model": model, "version": version, "stage": production, "promotion": promotion}


def urls(world) -> dict[str, str]:
    model, version = world["model"], world["version"]
    return {
        "model": reverse("registry:model-detail", args=[model.name]) + "?tab=history",
        "version": reverse("registry:version-detail", args=[model.name, version.number]),
        "request": reverse("approvals:promotion-detail", args=[world["promotion"].pk]),
        "stage": reverse("approvals:stage-detail", args=[model.name, "production"]),
    }


def history_of(client, url: str) -> str:
    """The page's history table (the `audit/_history.html` partial)."""
    response = client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    table = re.search(r'<table class="table audit-table">.*?</table>', page, re.S)
    assert table, "no history table on " + url
    return table.group(0)


def actions(table: str) -> list[str]:
    return re.findall(r'<span class="mono">([a-z_]+\.[a-z_]+)</span>', table)


def test_model_history_tab_lists_the_model_and_its_objects(client, viewer, world):
    client.force_login(viewer)
    table = history_of(client, urls(world)["model"])
    found = actions(table)
    assert found[0] == "stage.changed"  # newest first
    for action in ("model.created", "model.updated", "version.created", "version.updated",
                   "policy.updated", "promotion.requested", "promotion.approved"):  # fmt: skip
        assert action in found
    assert "<del>first card</del>" in table and "<ins>second card</ins>" in table
    assert "elsewhere" not in table  # another model's events


def test_model_page_has_a_history_tab(client, viewer, world):
    client.force_login(viewer)
    page = client.get(urls(world)["model"]).content.decode()
    assert '?tab=history" aria-current="page">History</a>' in page


def test_version_history_shows_before_and_after(client, viewer, world):
    client.force_login(viewer)
    table = history_of(client, urls(world)["version"])
    assert actions(table) == ["version.updated", "version.created"]
    assert "<del>first cut</del>" in table and "<ins>retrained</ins>" in table


def test_request_history_shows_its_events(client, viewer, world):
    client.force_login(viewer)
    table = history_of(client, urls(world)["request"])
    assert actions(table) == ["promotion.approved", "promotion.reviewed", "promotion.requested"]
    assert "<ins>ship</ins>" in table  # the reason, recorded as the request's "after"
    assert "lgtm" in table


def test_stage_history_shows_holder_and_policy_changes(client, viewer, world):
    client.force_login(viewer)
    table = history_of(client, urls(world)["stage"])
    assert actions(table) == ["stage.changed", "policy.updated"]
    assert '<span class="audit-field">version</span>' in table
    assert "<ins>1</ins>" in table  # v1 took the stage; the quorum went from 2 to 1
    assert "<del>2</del>" in table


@pytest.mark.parametrize("page", ["model", "version", "request", "stage"])
def test_outsider_gets_404(client, outsider, world, page):
    client.force_login(outsider)
    assert client.get(urls(world)[page]).status_code == 404


@pytest.mark.parametrize("page", ["model", "version", "request", "stage"])
def test_history_costs_the_same_queries_with_more_events(client, owner, world, page):
    client.force_login(owner)
    url = urls(world)[page]
    client.get(url)  # warm the content-type and permission caches
    with CaptureQueriesContext(connection) as few:
        client.get(url)
    target = {
        "model": world["model"],
        "version": world["version"],
        "request": world["promotion"],
        "stage": world["stage"],
    }[page]
    for i in range(40):
        audit_record(actor=owner, action="demo.touched", target=target, changes={"n": i})
    with CaptureQueriesContext(connection) as many:
        table = history_of(client, url)
    assert table.count("demo.touched") == 40
    assert len(many) == len(few)


def test_history_shows_the_latest_100_and_links_the_rest(client, owner, world):
    version = world["version"]
    for i in range(105):
        audit_record(actor=owner, action="demo.touched", target=version, changes={"n": i})
    client.force_login(owner)
    page = client.get(urls(world)["version"]).content.decode()
    table = re.search(r'<table class="table audit-table">.*?</table>', page, re.S).group(0)
    assert table.count("<tr>") == 1 + 100  # the header row and 100 events
    assert "<span>104</span>" in table and "<span>4</span>" not in table  # newest first
    full = reverse("audit:object-history", args=["registry.modelversion", version.pk])
    assert f'href="{full}"' in page


def test_history_never_names_a_hidden_parent(client, owner, viewer, world):
    secret = model_create(actor=owner, name="secret-base")
    version_create(actor=owner, model=secret)
    child = version_create(
        actor=owner, model=world["model"], parents=["secret-base/1", "fraud-detector/1"]
    )
    client.force_login(viewer)
    url = reverse("registry:version-detail", args=["fraud-detector", child.number])
    table = history_of(client, url)
    assert "fraud-detector/1" in table  # the visible parent is still listed
    assert "secret-base" not in client.get(url).content.decode()
    assert "secret-base" not in client.get(urls(world)["model"]).content.decode()
    client.force_login(owner)  # the owner of both may read it
    assert "secret-base/1" in history_of(client, url)
