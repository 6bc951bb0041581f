"""The Insight pages in a real browser, on real data (issue "Insight", item 6 and "Done when").

One model, fraud-detector, with six verified versions: metrics (auc higher is better,
latency_ms lower is better), lineage (v3 derived from v1 and v2, v5 from v3), training data
and two files each. Production went v2 → v4 (approved by erin and frank on 2026-03-14) →
v6 → rolled back to v4; v5 is waiting for review now. A private model the reader cannot see
has a version derived from v5: it must never be drawn or counted.

carol, a viewer of fraud-detector only, then reads the pages in Chromium as a reviewer and
an auditor would: the comparison with production, the trend charts, the lineage graph, the
request pages, the stage timeline ("what was in production on 2026-03-14 at 14:00, who
approved it, what did it replace"), the audit log and its exports. Every page passes the
accessibility checker in `tests/e2e/a11y.py` and is saved under `test-output/screenshots/`
(`insight-*.png`; compare, trends and lineage also at 390 px wide).

Set-up goes through the services with `time_machine` placing each event on its day; the
set-up's own tasks (checksum worker, emails) are dropped, never published.
"""

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from playwright.sync_api import Page, expect

from apps.accounts.models import User
from apps.accounts.services import role_grant
from apps.approvals import tasks as approval_tasks
from apps.approvals.models import PromotionRequest, Stage
from apps.approvals.services import (
    approver_set,
    promotion_approve,
    promotion_request,
    stage_rollback,
)
from apps.audit.context import Via
from apps.registry import tasks as registry_tasks
from apps.registry.artifacts import artifact_upload, version_seal, version_verify
from apps.registry.models import ModelVersion, RegisteredModel, VersionStatus
from apps.registry.services import model_create, model_update, version_create
from tests.conftest import make_user
from tests.e2e import a11y
from tests.e2e.conftest import VIEWPORT
from tests.e2e.conftest import screenshot as save_screenshot

MODEL = "fraud-detector"
SECRET = "secret-model"
SHOT = "insight-pages"
NARROW = {"width": 390, "height": 844}
DATA = "s3://ml-data/fraud"
D2024, D2025, D2026 = f"{DATA}/2024.parquet", f"{DATA}/2025.parquet", f"{DATA}/2026-q1.parquet"
SECRET_DATA = "s3://secret-bucket/leak.parquet"
# number: (auc, latency_ms, parents, training data, second file)
VERSIONS = {
    1: (0.81, 30, [], [D2024], "config.json"),
    2: (0.84, 28, [], [D2024, D2025], "config.json"),
    3: (0.86, 35, [1, 2], [D2025], "config.json"),
    4: (0.88, 25, [], [D2025], "config.json"),
    5: (0.87, 22, [3], [D2026], "config.yaml"),
    6: (0.91, 27, [], [D2026], "config.yaml"),
}
MIN_TEXT_PX = 10
# The smallest font size in an SVG as drawn on screen (its font-size times the SVG's scale).
SMALLEST_TEXT_PX = """svg => Math.min(...[...svg.querySelectorAll("text")].map(
    t => parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().a))"""
ROLLBACK_REASON = "Latency regression on EU card traffic."
ASKED_AT = "2026-03-14T14:00"
ROUTED_TASKS = (
    approval_tasks.notify_approvers_task,
    approval_tasks.notify_decision_task,
    approval_tasks.notify_rollback_task,
    registry_tasks.version_verify_task,
)


def v(number: int) -> str:
    """The lineage graph's id of a fraud-detector version node."""
    return f"version:{MODEL}/{number}"


def d(uri: str) -> str:
    """The lineage graph's id of a dataset node."""
    return f"data:{uri}"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass
class Story:
    carol: User
    model: RegisteredModel
    versions: dict[int, ModelVersion]
    production: Stage
    v2_request: PromotionRequest
    v4_request: PromotionRequest
    v6_request: PromotionRequest
    v5_request: PromotionRequest


# --- Set-up through the services --------------------------------------------------------------


def _sha(n: int) -> str:
    return f"{n:x}" * 64


def _version(bob: User, model: RegisteredModel, number: int) -> ModelVersion:
    auc, latency, parents, data, second = VERSIONS[number]
    version = version_create(
        actor=bob,
        model=model,
        description=f"Gradient-boosted trees, release {number}.",
        metrics={"auc": auc, "latency_ms": latency},
        params={"trees": 100 * number},
        training_data=[{"uri": uri, "sha256": _sha(i + 1)} for i, uri in enumerate(data)],
        parents=[f"{MODEL}/{parent}" for parent in parents],
    )
    assert version.number == number
    files = {"model.bin": f"weights of v{number} ".encode() * 64}
    files[second] = b'{"threshold": 0.5}\n' if second == "config.json" else b"threshold: 0.5\n"
    for path, data_bytes in files.items():
        artifact_upload(
            actor=bob,
            version=version,
            path=path,
            stream=io.BytesIO(data_bytes),
            content_length=len(data_bytes),
        )
    version_seal(actor=bob, version=version)
    verified = version_verify(version_id=version.pk)
    assert verified.status == VersionStatus.READY, verified.status_reason
    return verified


def _approve_by_both(request: PromotionRequest, erin: User, frank: User, *days: str) -> None:
    for reviewer, moment in zip((erin, frank), days, strict=True):
        with time_machine.travel(at(moment), tick=False):
            promotion_approve(promotion=request, reviewer=reviewer, comment="LGTM", via=Via.WEB)


def set_the_stage() -> Story:
    with time_machine.travel(at("2026-03-01T09:00"), tick=False):
        alice, bob, carol, erin, frank = (
            make_user(name) for name in ("alice", "bob", "carol", "erin", "frank")
        )
        model = model_create(actor=alice, name=MODEL, description="Card fraud scores.")
        model_update(
            actor=alice, model=model, metric_directions={"auc": "higher", "latency_ms": "lower"}
        )
        role_grant(actor=alice, model=model, role="editor", user=bob)
        for viewer in (carol, erin, frank):
            role_grant(actor=alice, model=model, role="viewer", user=viewer)
        production = Stage.objects.get(model=model, name="production")
        for approver in (erin, frank):
            approver_set(actor=alice, stage=production, principal=approver, approve=True)
    versions = {}
    for number in VERSIONS:
        with time_machine.travel(at(f"2026-03-0{number + 1}T09:00"), tick=False):
            versions[number] = _version(bob, model, number)
    with time_machine.travel(at("2026-03-08T12:00"), tick=False):
        secret = model_create(actor=alice, name=SECRET, visibility="private")
        hidden_child = version_create(
            actor=alice,
            model=secret,
            parents=[f"{MODEL}/5"],
            training_data=[{"uri": SECRET_DATA}],
            metrics={"auc": 0.99},
        )
        assert list(hidden_child.parents.all()) == [versions[5]]  # the link really exists

    def promote(number: int, asked: str, *approved: str) -> PromotionRequest:
        with time_machine.travel(at(asked), tick=False):
            request = promotion_request(
                actor=bob, version=versions[number], stage=production, reason=f"Ship v{number}."
            )
        _approve_by_both(request, erin, frank, *approved)
        request.refresh_from_db()
        return request

    v2_request = promote(2, "2026-03-10T08:00", "2026-03-10T10:00", "2026-03-10T10:30")
    v4_request = promote(4, "2026-03-13T16:00", "2026-03-14T09:15", "2026-03-14T09:40")
    v6_request = promote(6, "2026-03-19T11:00", "2026-03-20T10:00", "2026-03-20T10:05")
    with time_machine.travel(at("2026-03-22T08:30"), tick=False):
        stage_rollback(stage=production, actor=erin, reason=ROLLBACK_REASON)
    # Now (real time): v5 waits for review against the restored v4.
    v5_request = promotion_request(
        actor=bob, version=versions[5], stage=production, reason="Lower latency."
    )
    production.refresh_from_db()
    assert production.current_version_id == versions[4].pk
    return Story(carol, model, versions, production, v2_request, v4_request, v6_request, v5_request)


@pytest.fixture
def story(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Story:
    for task in ROUTED_TASKS:
        monkeypatch.setattr(task, "delay", lambda *args, **kwargs: None)
    return set_the_stage()


# --- Helpers ---------------------------------------------------------------------------------


def shot(page: Page, step: str, *, narrow: bool = False) -> str:
    """A full-page screenshot at 1280 px; with `narrow`, one at 390 px as well."""
    paths = [str(save_screenshot(page, f"{SHOT}-{step}"))]
    if narrow:
        page.set_viewport_size(NARROW)
        try:
            page.reload()  # as a phone would load it (scripts place things for its width)
            paths.append(str(save_screenshot(page, f"{SHOT}-{step}-390")))
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1, f"{step}: the page scrolls sideways by {overflow}px at 390 px"
        finally:
            page.set_viewport_size(VIEWPORT)
            page.reload()
    return paths[0]


def visit(page: Page, url: str) -> None:
    response = page.goto(url)
    assert response is not None and response.ok, (url, response and response.status)


def words(text: str) -> str:
    return " ".join(text.split())


def metric_cell(page: Page, table: str, metric: str, column: int) -> str:
    row = page.locator(f"{table} tbody tr").filter(
        has=page.locator("th .mono, th.mono", has_text=re.compile(rf"^{metric}$"))
    )
    expect(row).to_have_count(1)
    return words(row.locator("td").nth(column).inner_text())


def history_rows(page: Page) -> list[str]:
    rows = page.locator("section[aria-labelledby=history-heading] tbody tr")
    return [words(text) for text in rows.all_inner_texts()]


# --- The pages -------------------------------------------------------------------------------


def check_compare(page: Page, base: str) -> None:
    """1. v6 against production (v4): metrics with deltas and verdicts; files."""
    visit(page, f"{base}/models/{MODEL}/compare/?v=4&v=6&against=production")
    assert words(page.locator(".compare-lede").inner_text()).startswith(
        "v4 (baseline, current production) with v6."
    )
    headers = page.locator("table.compare-metrics thead th").all_inner_texts()
    assert [words(h) for h in headers] == ["Metric", "v4 (baseline)", "v6"]
    # auc: higher is better, 0.88 → 0.91
    assert metric_cell(page, "table.compare-metrics", "auc", 0) == "0.88"
    auc = metric_cell(page, "table.compare-metrics", "auc", 1)
    assert auc == "0.91 ★ best ▲ +0.03 (+3.4%) · better", auc
    # latency_ms: lower is better, 25 → 27
    assert metric_cell(page, "table.compare-metrics", "latency_ms", 0) == "25 ★ best"
    latency = metric_cell(page, "table.compare-metrics", "latency_ms", 1)
    assert latency == "27 ▲ +2 (+8.0%) · worse", latency
    directions = page.locator("table.compare-metrics tbody th .sub").all_inner_texts()
    assert directions == ["higher is better", "lower is better"]
    # The verdict is a word, not only a colour.
    expect(page.locator("table.compare-metrics .delta-better")).to_have_count(1)
    expect(page.locator("table.compare-metrics .delta-worse")).to_have_count(1)

    summary = words(page.locator("ul.file-summary").inner_text())
    assert "v6: 1 added, 1 removed, 1 changed, 0 unchanged" in summary, summary
    files = {}
    for row in page.locator("table.compare-files tbody tr").all():
        path = row.locator("th").inner_text().strip()
        files[path] = row.locator("td").nth(1).get_attribute("class")
    assert files == {
        "config.json": "compare-cell state-removed",
        "config.yaml": "compare-cell state-added",
        "model.bin": "compare-cell state-changed",
    }, files
    changed = page.locator("table.compare-files tbody tr", has_text="model.bin")
    assert "changed" in changed.locator("td").nth(1).inner_text()


def check_trends(page: Page, base: str) -> None:
    """2. One point per version, production marked, a table beside it, values on focus."""
    visit(page, f"{base}/models/{MODEL}/?tab=trends")
    charts = page.locator("svg.trend-svg")
    expect(charts).to_have_count(2)
    expected_state = {1: "no", 2: "held", 3: "no", 4: "current", 5: "no", 6: "held"}
    for index, metric in enumerate(("auc", "latency_ms")):
        chart = charts.nth(index)
        assert chart.get_attribute("data-points") == "6"
        assert page.locator(f"#trend-{index}-title").text_content() == f"{metric} across versions"
        points = chart.locator("a.trend-point")
        expect(points).to_have_count(6)
        states = {
            int(point.get_attribute("data-version")): point.get_attribute("data-production")
            for point in points.all()
        }
        assert states == expected_state, states
        expect(chart.locator(".trend-marker")).to_have_count(6)
        held = chart.locator(".trend-marker-production")
        expect(held).to_have_count(3)  # diamonds, not circles
        assert sorted(int(m.get_attribute("data-marker")) for m in held.all()) == [2, 4, 6]
        assert all(m.evaluate("e => e.tagName") == "path" for m in held.all())
        expect(chart.locator(".trend-current")).to_have_count(1)
        expect(chart.locator("polyline.trend-line")).to_have_count(1)
        value_of = {n: VERSIONS[n][index] for n in VERSIONS}
        for point in points.all():
            number = int(point.get_attribute("data-version"))
            label = point.get_attribute("aria-label")
            assert label.startswith(f"v{number} {metric} {value_of[number]}"), label
            assert point.get_attribute("href") == f"/models/{MODEL}/versions/{number}/"
        # The table fallback: every version, newest first, with its value.
        figure = page.locator("figure.trend").nth(index)
        rows = [words(r) for r in figure.locator(".trend-table tbody tr").all_inner_texts()]
        assert len(rows) == 6
        assert [row.split()[0] for row in rows] == ["v6", "v5", "v4", "v3", "v2", "v1"]
        assert rows[2].startswith(f"v4 {value_of[4]}") and rows[2].endswith("now")
        assert rows[0].endswith("held") and rows[4].endswith("held")

    # Keyboard: Tab from the metric picker's button reaches the first point of the first
    # chart; its value label appears.
    auc_chart = charts.nth(0)
    page.locator(".metric-picker button[type=submit]").focus()
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('trend-point')"):
            break
    focused = page.evaluate(
        "[document.activeElement.dataset.version,"
        " document.activeElement.closest('svg').getAttribute('aria-labelledby')]"
    )
    assert focused == ["1", "trend-0-title trend-0-desc"], focused
    # Focus is visible: the keyboard-focused point's column gets a ring of 3:1 or more.
    ring = auc_chart.locator("a.trend-point[data-version='1'] .trend-hit").evaluate(
        "e => [getComputedStyle(e).stroke, getComputedStyle(e).strokeWidth]"
    )
    assert ring[0] != "none" and float(ring[1].rstrip("px")) >= 2, ring
    assert a11y.contrast_ratio(ring[0], "#ffffff") >= 3, ring
    first_tip = auc_chart.locator("a.trend-point[data-version='1'] .trend-tip")
    expect(first_tip).to_be_visible()
    assert words(first_tip.text_content()) == "v1: 0.81"
    page.keyboard.press("Tab")
    second_tip = auc_chart.locator("a.trend-point[data-version='2'] .trend-tip")
    expect(second_tip).to_be_visible()
    expect(first_tip).to_be_hidden()
    assert words(second_tip.text_content()) == "v2: 0.84 · held production"

    current = auc_chart.locator("a.trend-point[data-version='4']")
    current.focus()
    tip = current.locator(".trend-tip")
    expect(tip).to_be_visible()
    assert words(tip.text_content()) == "v4: 0.88 · in production"
    assert current.locator("title").text_content() == "v4 auc 0.88, in production now"
    a11y.assert_accessible(page, "trends (a point focused, its label shown)")
    shot(page, "2-trends-focused")

    # Hover works too.
    page.locator("body").click(position={"x": 5, "y": 5})
    latency_chart = charts.nth(1)
    latency_chart.locator("a.trend-point[data-version='5'] .trend-hit").hover()
    hover_tip = latency_chart.locator("a.trend-point[data-version='5'] .trend-tip")
    expect(hover_tip).to_be_visible()
    assert words(hover_tip.text_content()) == "v5: 22"
    page.mouse.move(0, 0)
    expect(hover_tip).to_be_hidden()

    # A point is a link to its version.
    with page.expect_navigation():
        auc_chart.locator("a.trend-point[data-version='3']").click()
    assert urlsplit(page.url).path == f"/models/{MODEL}/versions/3/"
    visit(page, f"{base}/models/{MODEL}/?tab=trends")
    a11y.assert_accessible(page, "trends")
    shot(page, "2-trends", narrow=True)


def check_lineage(page: Page, base: str) -> None:
    """3. v3's graph: v1, v2 (parents), v5 (child), their datasets; the secret child of v5
    neither drawn nor counted; every node a working link."""
    visit(page, f"{base}/models/{MODEL}/versions/3/")
    graph = page.locator("section.lineage-graph")
    svg = graph.locator("svg.lineage-svg")
    expect(svg).to_have_count(1)
    assert words(graph.locator("h2").inner_text()) == "Lineage 4 versions, 3 datasets, 8 links"
    assert svg.get_attribute("data-nodes") == "7" and svg.get_attribute("data-edges") == "8"
    versions = {n.get_attribute("data-node") for n in svg.locator("a.lineage-version").all()}
    assert versions == {f"version:{MODEL}/{n}" for n in (1, 2, 3, 5)}, versions
    datasets = {n.get_attribute("data-node") for n in svg.locator("a.lineage-dataset").all()}
    assert datasets == {f"data:{uri}" for uri in (D2024, D2025, D2026)}, datasets
    focus = svg.locator("a.lineage-focus")
    expect(focus).to_have_count(1)
    assert focus.get_attribute("data-node") == f"version:{MODEL}/3"
    assert "(this version)" in focus.text_content()

    edges = {
        (e.get_attribute("data-from"), e.get_attribute("data-to"), e.get_attribute("class"))
        for e in svg.locator("path.lineage-edge").all()
    }
    parent_edges = {(a, b) for a, b, css in edges if "lineage-edge-parent" in css}
    data_edges = {(a, b) for a, b, css in edges if "lineage-edge-training_data" in css}
    assert parent_edges == {(v(1), v(3)), (v(2), v(3)), (v(3), v(5))}, parent_edges
    assert data_edges == {
        (d(D2024), v(1)),
        (d(D2024), v(2)),
        (d(D2025), v(2)),
        (d(D2025), v(3)),
        (d(D2026), v(5)),
    }, data_edges
    # Training-data edges are dashed, parent edges solid: not told by colour alone.
    for edge in svg.locator("path.lineage-edge-training_data").all():
        assert edge.get_attribute("stroke-dasharray")
    for edge in svg.locator("path.lineage-edge-parent").all():
        assert not edge.get_attribute("stroke-dasharray")

    # The hidden model: not drawn, not counted, not named anywhere on the page.
    html = page.content()
    assert SECRET not in html and SECRET_DATA not in html
    expect(svg.locator(f"[data-node*='{SECRET}']")).to_have_count(0)

    # The table beside the picture says the same.
    table = graph.locator("details.lineage-table")
    assert words(table.locator("summary").inner_text()).endswith("(7 nodes, 8 links)")
    expect(table.locator("table.lineage-nodes-table tbody tr")).to_have_count(7)
    expect(table.locator("table.lineage-edges-table tbody tr")).to_have_count(8)

    a11y.assert_accessible(page, "version page (lineage)")
    shot(page, "3-version-lineage", narrow=True)
    # On a phone the graph's words stay readable (the frame scrolls instead of shrinking them).
    page.set_viewport_size(NARROW)
    try:
        smallest = svg.evaluate(SMALLEST_TEXT_PX)
    finally:
        page.set_viewport_size(VIEWPORT)
    assert smallest >= MIN_TEXT_PX, f"lineage text is {smallest:.1f}px at 390 px wide"

    # Keyboard: Tab from the graph's frame reaches its nodes, with a visible focus ring.
    graph.locator(".lineage-frame").focus()
    page.keyboard.press("Tab")
    focused_node = page.evaluate("document.activeElement.dataset.node || ''")
    assert focused_node in versions | datasets, focused_node
    outline = page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement.querySelector("
        "'.lineage-box, .lineage-cylinder')); return [s.stroke, s.strokeWidth]; })()"
    )
    assert float(outline[1].rstrip("px")) >= 2, outline
    assert a11y.contrast_ratio(outline[0], "#f6f8fa") >= 3, outline

    # Every version node links to its version; following one lands there.
    for node in svg.locator("a.lineage-version").all():
        number = node.get_attribute("data-node").rsplit("/", 1)[1]
        assert node.get_attribute("href") == f"/models/{MODEL}/versions/{number}/"
        assert node.get_attribute("aria-label").startswith(f"{MODEL} v{number} — ready")
    with page.expect_navigation():
        svg.locator(f"a.lineage-version[data-node='{v(5)}']").click()
    assert urlsplit(page.url).path == f"/models/{MODEL}/versions/5/"
    assert page.locator("h1").inner_text().startswith(f"{MODEL} v5")
    child = page.locator("section.lineage-graph svg.lineage-svg")
    assert SECRET not in page.content()
    assert child.get_attribute("data-nodes") == "7"  # the same family, seen from v5
    assert child.get_attribute("data-edges") == "8"
    page.go_back()
    assert urlsplit(page.url).path == f"/models/{MODEL}/versions/3/"
    with page.expect_navigation():
        page.locator(f"section.lineage-graph a.lineage-version[data-node='{v(1)}']").click()
    assert urlsplit(page.url).path == f"/models/{MODEL}/versions/1/"
    page.go_back()

    # A dataset node leads to its row of the table (the details open to show it).
    dataset = page.locator(f"section.lineage-graph a.lineage-dataset[data-node='{d(D2025)}']")
    anchor = dataset.get_attribute("href")
    dataset.click()
    assert urlsplit(page.url).fragment == anchor.lstrip("#")
    row = page.locator(anchor)
    expect(row).to_be_visible()
    assert D2025 in row.inner_text()


def check_request_pages(page: Page, base: str, story: Story) -> None:
    """4. A request shows the metrics against the current holder, and a full comparison."""
    # The pending request: what a reviewer sees now, v5 against production (v4).
    visit(page, f"{base}{story.v5_request.get_absolute_url()}")
    table = page.locator("table.metrics-compare")
    expect(table).to_be_visible()
    headers = [words(h) for h in table.locator("thead th").all_inner_texts()]
    assert headers == ["Metric", "v5 (this request)", "v4 (current holder)", "Change", "Verdict"]
    rows = {words(r).split()[0]: words(r) for r in table.locator("tbody tr").all_inner_texts()}
    assert rows["auc"] == "auc 0.87 0.88 -0.01 ▼ worse", rows
    assert rows["latency_ms"] == "latency_ms 22 25 -3 ▼ better", rows
    a11y.assert_accessible(page, "pending request page")
    shot(page, "4-request-pending")

    # The approved v6 request (production is back on v4): v6 against v4.
    visit(page, f"{base}{story.v6_request.get_absolute_url()}")
    table = page.locator("table.metrics-compare")
    expect(table).to_be_visible()
    rows = {words(r).split()[0]: words(r) for r in table.locator("tbody tr").all_inner_texts()}
    assert rows["auc"] == "auc 0.91 0.88 +0.03 ▲ better", rows
    assert rows["latency_ms"] == "latency_ms 27 25 +2 ▲ worse", rows
    assert "approved" in page.locator("section.timeline").inner_text()
    a11y.assert_accessible(page, "approved request page")
    shot(page, "4-request-approved")
    link = page.get_by_role("link", name="Full comparison")
    expect(link).to_be_visible()
    with page.expect_navigation():
        link.click()
    query = parse_qs(urlsplit(page.url).query)
    assert urlsplit(page.url).path == f"/models/{MODEL}/compare/"
    assert query == {"v": ["4", "6"], "base": ["4"]}, query
    assert words(page.locator(".compare-lede").inner_text()).startswith("v4 (baseline) with v6.")
    assert "better" in metric_cell(page, "table.compare-metrics", "auc", 1)
    assert "worse" in metric_cell(page, "table.compare-metrics", "latency_ms", 1)


def check_stage_timeline(page: Page, base: str, story: Story) -> dict[str, Any]:
    """5. What held production on 2026-03-14 at 14:00: the page and the API agree."""
    stage_url = f"{base}{story.production.get_absolute_url()}"
    visit(page, stage_url)
    assert words(page.locator("div.page-head p").last.inner_text()).startswith("Holds v4 since")
    field = page.get_by_label("Moment (UTC)")
    field.fill(ASKED_AT)
    with page.expect_navigation():
        page.get_by_role("button", name="Look up").click()
    assert parse_qs(urlsplit(page.url).query)["at"] == [ASKED_AT]
    answer = words(page.locator(".held-answer").inner_text())
    assert answer == (
        "At 2026-03-14 14:00 UTC: v4, from 2026-03-14 09:40 until 2026-03-20 10:05. "
        f"Promoted through request #{story.v4_request.pk}, approved by erin, frank. "
        "It replaced v2."
    ), answer

    request_pk = story.v4_request.pk
    rows = history_rows(page)
    assert rows == [
        f"v4 current 2026-03-22 08:30:00 now erin rollback {ROLLBACK_REASON}",
        f"v6 2026-03-20 10:05:00 2026-03-22 08:30:00 frank request #{story.v6_request.pk}",
        f"v4 2026-03-14 09:40:00 2026-03-20 10:05:00 frank request #{request_pk}",
        f"v2 2026-03-10 10:30:00 2026-03-14 09:40:00 frank request #{story.v2_request.pk}",
    ], rows
    # The row holding at that moment names who put it there and by which request; the row
    # below it is what it replaced.
    a11y.assert_accessible(page, "stage page (answer shown)")
    shot(page, "5-stage-at")

    api = page.request.get(
        f"{base}/api/v1/models/{MODEL}/stages/production?at={ASKED_AT}:00Z",
        headers={"Accept": "application/json"},
    )
    assert api.ok, api.text()
    answer_json = api.json()
    assert answer_json["version"] == 4
    assert answer_json["by"] == "frank"
    assert answer_json["via_request"] == request_pk
    assert answer_json["since"].startswith("2026-03-14T09:40:00")
    assert answer_json["until"].startswith("2026-03-20T10:05:00")
    # The page and the API give the same answer.
    page_answer = re.match(r"At (\S+ \S+) UTC: v(\d+), from (\S+ \S+) until (\S+ \S+)\.", answer)
    assert page_answer, answer
    assert answer_json["approved_by"] == ["erin", "frank"]
    assert answer_json["replaced"] == 2
    assert int(page_answer[2]) == answer_json["version"]
    assert page_answer[3].replace(" ", "T") == answer_json["since"][:16]
    assert page_answer[4].replace(" ", "T") == answer_json["until"][:16]
    # …and what it replaced: the holder just before `since`, asked the same way.
    before = page.request.get(
        f"{base}/api/v1/models/{MODEL}/stages/production?at=2026-03-14T09:39:59Z"
    ).json()
    assert before["version"] == 2 and before["until"].startswith("2026-03-14T09:40:00")

    # Following the request link: who approved, when.
    history = page.locator("section[aria-labelledby=history-heading] tbody tr")
    with page.expect_navigation():
        history.nth(2).get_by_role("link", name=f"request #{request_pk}").click()
    assert urlsplit(page.url).path == story.v4_request.get_absolute_url()
    reviewers = words(page.locator("ul.reviewers").inner_text())
    assert reviewers == "erin approved frank approved", reviewers
    timeline = words(page.locator("section.timeline").inner_text())
    assert "erin approved via web 2026-03-14 09:15" in timeline, timeline
    assert "frank approved via web 2026-03-14 09:40" in timeline, timeline
    assert "approved 2026-03-14 09:40 UTC — v4 moved into production." in timeline
    a11y.assert_accessible(page, "request page of the 2026-03-14 approval")
    shot(page, "5-request-of-2026-03-14")
    return answer_json


def check_audit(page: Page, base: str, story: Story) -> None:
    """6. The auditor: filter by model and day, read the approvals, export the evidence."""
    visit(page, f"{base}/audit/")
    page.get_by_label("Model").fill(MODEL)
    page.get_by_label("Since (UTC)").fill("2026-03-14")
    page.get_by_label("Until (UTC)").fill("2026-03-14")
    with page.expect_navigation():
        page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.audit-table tbody tr")
    found = [
        [words(row.locator("td").nth(column).inner_text()) for column in (1, 2, 4)]
        for row in rows.all()
    ]
    assert [(actor, action) for actor, action, _ in found] == [
        ("frank", "stage.changed"),
        ("frank", "promotion.approved"),
        ("frank", "promotion.reviewed"),
        ("erin", "promotion.reviewed"),
    ], found
    assert re.search(r"version:? 2 → (changed to )?4", found[0][2]), found[0]  # what it replaced
    times = [words(row.locator("td").nth(0).inner_text()) for row in rows.all()]
    assert times == [
        "2026-03-14 09:40:00",
        "2026-03-14 09:40:00",
        "2026-03-14 09:40:00",
        "2026-03-14 09:15:00",
    ], times
    a11y.assert_accessible(page, "audit log (filtered)")
    shot(page, "6-audit-filtered")

    with page.expect_download() as csv_download:
        page.get_by_role("link", name="Export CSV").click()
    csv_file = csv_download.value
    assert csv_file.suggested_filename.endswith(".csv")
    assert parse_qs(urlsplit(csv_file.url).query) == {
        "model": [MODEL],
        "since": ["2026-03-14"],
        "until": ["2026-03-14"],
        "format": ["csv"],
    }, csv_file.url
    with open(csv_file.path(), encoding="utf-8") as handle:
        exported = list(csv.DictReader(handle))
    assert [(row["actor_name"], row["action"]) for row in exported] == [
        ("erin", "promotion.reviewed"),
        ("frank", "promotion.reviewed"),
        ("frank", "promotion.approved"),
        ("frank", "stage.changed"),
    ], exported
    moved = json.loads(exported[-1]["changes"])
    assert moved == {"before": {"version": 2}, "after": {"version": 4}}, moved
    assert all(row["at"].startswith("2026-03-14T") for row in exported)
    assert {row["target_id"] for row in exported[:3]} == {str(story.v4_request.pk)}

    with page.expect_download() as jsonl_download:
        page.get_by_role("link", name="Export JSONL").click()
    jsonl_file = jsonl_download.value
    assert jsonl_file.suggested_filename.endswith(".jsonl")
    with open(jsonl_file.path(), encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    assert [(line["actor_name"], line["action"]) for line in lines] == [
        (row["actor_name"], row["action"]) for row in exported
    ]
    assert [line["hash"] for line in lines] == [row["hash"] for row in exported]
    assert lines[-1]["changes"] == {"before": {"version": 2}, "after": {"version": 4}}
    assert all(SECRET not in json.dumps(line) for line in lines)


def check_other_pages(page: Page, base: str) -> None:
    """7. The accessibility pass on the remaining pages the story goes through."""
    for step, path in (
        ("7-model-list", "/models/"),
        ("7-model-card", f"/models/{MODEL}/"),
        ("7-versions", f"/models/{MODEL}/?tab=versions"),
        ("7-inbox", "/reviews/"),
        ("7-inbox-decided", "/reviews/?tab=decided"),
        ("7-stages", f"/models/{MODEL}/stages/"),
        ("7-audit", "/audit/"),
    ):
        visit(page, f"{base}{path}")
        a11y.assert_accessible(page, step)
        shot(page, step)
    assert SECRET not in page.content()  # the audit log of a viewer of fraud-detector only


# --- The test --------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_insight_pages_for_reviewer_and_auditor(
    story: Story,
    live_server: Any,
    signed_in_page: Callable[..., Page],
    console_errors: list[str],
):
    base = live_server.url
    page = signed_in_page(story.carol)

    check_compare(page, base)
    a11y.assert_accessible(page, "compare v4/v6 against production")
    shot(page, "1-compare", narrow=True)

    check_trends(page, base)
    check_lineage(page, base)
    check_request_pages(page, base, story)
    check_stage_timeline(page, base, story)
    check_audit(page, base, story)
    check_other_pages(page, base)
    assert console_errors == []


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_decided_request_compares_with_the_version_it_replaced(
    story: Story, live_server: Any, signed_in_page: Callable[..., Page]
):
    page = signed_in_page(story.carol)
    visit(page, f"{live_server.url}{story.v4_request.get_absolute_url()}")
    headers = [words(h) for h in page.locator("table.metrics-compare thead th").all_inner_texts()]
    assert "v2" in " ".join(headers), headers
    rows = [words(r) for r in page.locator("table.metrics-compare tbody tr").all_inner_texts()]
    assert "auc 0.88 0.84 +0.04 ▲ better" in rows, rows


# --- The checker finds what it looks for ----------------------------------------------------

DEFECTS = """<!DOCTYPE html><html><head><style>
  .faint { color: #aaaaaa; }
  .big { color: #8a8a8a; font-size: 24px; }
  .vh { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
  .dark { background: #222222; color: #333333; }
  input::placeholder { color: #cccccc; }
</style></head><body>
<h1>One</h1><h1>Two</h1><h3>Skipped a level</h3><h2></h2>
<p class="faint">faint text</p><p class="big">large grey text passes at 3:1</p>
<p class="vh">visually hidden: not judged</p><p class="dark">dark on dark</p>
<input id="unnamed"><label>Wrapped <input id="wrapped"></label>
<input id="placeholder" aria-label="Search" placeholder="faint placeholder">
<a href="/x"></a><a href="/y"><span class="vh">hidden words count</span></a>
<button></button><img src="data:,"><div role="region" tabindex="0">unnamed region</div>
<span id="twice">a</span><span id="twice">b</span><p aria-labelledby="nowhere">c</p>
<svg width="10" height="10"><circle cx="5" cy="5" r="4"/></svg>
<svg role="img" aria-label="Chart" width="200" height="100">
  <rect class="box" x="0" y="0" width="200" height="100" fill="#1f2328"/>
  <polyline class="series" points="0,90 100,10" fill="none" stroke="#30363d" stroke-width="2"/>
  <circle class="dot" cx="150" cy="50" r="5" fill="#ffffff"/>
  <text x="10" y="50" fill="#444c56" font-size="12">label</text>
  <a href="/z"><circle cx="20" cy="20" r="5" fill="#ffffff"/></a>
</svg>
</body></html>"""


@pytest.mark.browser
def test_a11y_checker_reports_each_kind_of_defect(page: Page):
    page.set_content(DEFECTS)
    found = a11y.check(page)
    rules = [v["rule"] for v in found]
    text = a11y.describe(found)
    assert rules.count("lang") == 1
    assert rules.count("headings") == 3, text  # two h1, h1 → h3, an empty h2
    names = [v["element"] for v in found if v["rule"] == "control-name"]
    assert names == ["input#unnamed"], text  # the wrapped and the aria-labelled ones pass
    assert rules.count("link-name") == 2, text  # the empty link and the SVG link
    assert rules.count("button-name") == 1
    assert rules.count("image-name") == 2, text  # the <img> and the unnamed <svg>
    assert rules.count("region-name") == 1
    assert rules.count("duplicate-id") == 1 and rules.count("aria-ref") == 1
    contrast = [v for v in found if v["rule"] == "text-contrast"]
    assert any('"faint text"' in v["element"] for v in contrast), text
    assert any('"dark on dark"' in v["element"] for v in contrast), text
    assert any("placeholder" in v["detail"] for v in contrast), text
    assert any('"label"' in v["element"] and "on #1f2328" in v["detail"] for v in contrast), text
    assert not any("large grey" in v["element"] or "visually" in v["element"] for v in contrast)
    graphics = [v for v in found if v["rule"] == "graphic-contrast"]
    assert [v["element"].split(" > ")[-1] for v in graphics] == ["polyline.series"], text
    assert "on #1f2328" in graphics[0]["detail"]  # judged against the box beneath it
