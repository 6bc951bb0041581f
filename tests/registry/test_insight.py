"""Insight: compare versions, trend charts on the model page (server-rendered inline SVG).

Personas come from tests/registry/conftest.py: `owner` (alice) owns `ml_model`
("fraud-detector"), `editor` (bob) and `viewer` (carol) hold roles on it, `outsider` (dave)
has none.
"""

import io
import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import include, path, reverse

from apps.approvals.models import Stage, StagePolicy
from apps.approvals.services import promotion_request, stage_assign
from apps.audit.models import AuditEvent
from apps.registry import charts, compare
from apps.registry.artifacts import artifact_upload
from apps.registry.models import ModelVersion, RegisteredModel, VersionStatus
from apps.registry.services import model_create, model_update, version_create
from registry_site import urls as site_urls
from tests.conftest import make_user

# The lead mounts `apps.registry.urls_insight` at the root; until then (and to keep this
# file honest afterwards) the tests run on the site's URLs with the insight routes first.
urlpatterns = list(site_urls.urlpatterns)
if not any(getattr(pattern, "namespace", None) == "insight" for pattern in urlpatterns):
    urlpatterns.insert(0, path("", include("apps.registry.urls_insight")))
handler403 = site_urls.handler403
handler404 = site_urls.handler404
handler500 = site_urls.handler500
pytestmark = pytest.mark.urls(__name__)

NO_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)")


def compare_url(name: str, query: str = "") -> str:
    url = reverse("insight:compare", args=[name])
    return f"{url}?{query}" if query else url


def html(response: Any) -> str:
    return response.content.decode()


def upload(actor: Any, version: ModelVersion, files: dict[str, bytes]) -> None:
    for file_path, content in files.items():
        artifact_upload(actor=actor, version=version, path=file_path, stream=io.BytesIO(content))


def assert_csp_clean(page: str) -> None:
    assert not NO_INLINE_SCRIPT.search(page)
    assert " style=" not in page


@pytest.fixture
def three_versions(ml_model: RegisteredModel, editor: Any) -> list[ModelVersion]:
    """v1 → v2 → v3 of fraud-detector, differing in every way the compare page shows."""
    model_update(
        actor=ml_model.created_by,
        model=ml_model,
        metric_directions={"auc": "higher", "loss": "lower"},
    )
    v1 = version_create(
        actor=editor,
        model=ml_model,
        description="Baseline model trained on 2024 data.",
        metrics={"auc": 0.91, "loss": 0.2, "latency_ms": 12},
        params={"lr": 0.001, "optimizer": "adam", "dropout": 0.1},
        tags={"team": "risk"},
        training_data=[{"uri": "s3://data/fraud/2024.parquet", "sha256": "a" * 64}],
        dependencies={"framework": "torch==2.3", "requirements": ["numpy>=1.26", "pandas==2.2"]},
    )
    upload(editor, v1, {"model.bin": b"weights-1", "config.json": b"{}", "old.txt": b"old"})
    v2 = version_create(
        actor=editor,
        model=ml_model,
        description="Model trained on 2024 and 2025 data.",
        metrics={"auc": 0.93, "loss": 0.25, "latency_ms": 12},
        params={"lr": 0.0005, "optimizer": "adam", "epochs": 10},
        tags={"team": "risk", "reviewed": "yes"},
        training_data=[
            {"uri": "s3://data/fraud/2024.parquet", "sha256": "a" * 64},
            {"uri": "s3://data/fraud/2025.parquet", "sha256": "b" * 64},
        ],
        dependencies={"framework": "torch==2.4", "requirements": ["numpy>=2.0", "pandas==2.2"]},
    )
    upload(editor, v2, {"model.bin": b"weights-2", "config.json": b"{}", "new.txt": b"new"})
    v3 = version_create(
        actor=editor,
        model=ml_model,
        description="Model trained on 2025 data only.",
        metrics={"auc": 0.95, "loss": 0.18, "recall": 0.7},
        params={"lr": 0.0005, "optimizer": "sgd"},
        tags={"team": "fraud"},
    )
    ModelVersion.objects.filter(pk__in=[v1.pk, v2.pk, v3.pk]).update(status=VersionStatus.READY)
    return list(ml_model.versions.order_by("number"))


def put_in_production(model: RegisteredModel, version: ModelVersion, actor: Any) -> None:
    stage = Stage.objects.get(model=model, name="production")
    stage_assign(stage=stage, version=version, actor=actor)


# --- Compare: pure logic -----------------------------------------------------------------------


def test_metric_rows_give_deltas_and_verdicts_by_direction():
    versions = [
        compare.VersionData(1, metrics={"auc": 0.91, "loss": 0.2, "f1": 0.5, "old": 1}),
        compare.VersionData(3, metrics={"auc": 0.93, "loss": 0.25, "f1": 0.5, "new": 2}),
    ]
    rows = {
        row.name: row
        for row in compare.metric_rows(versions, {"auc": "higher", "loss": "lower", "x": "?"})
    }
    auc = rows["auc"].cells[1]
    assert (auc.delta, auc.verdict, auc.delta_text, auc.relative_text) == (
        0.02,
        "better",
        "+0.02",
        "+2.2%",
    )
    assert auc.best and not rows["auc"].cells[0].best
    loss = rows["loss"].cells[1]
    assert (loss.delta, loss.verdict, loss.delta_text) == (0.05, "worse", "+0.05")
    assert rows["loss"].cells[0].best
    assert rows["f1"].cells[1].verdict == "same" and not rows["f1"].differs
    assert rows["old"].cells[1].value is None and rows["old"].cells[1].verdict == ""
    assert rows["new"].cells[0].value is None and rows["new"].cells[1].verdict == ""


def test_metric_without_direction_says_higher_or_lower_not_better():
    versions = [compare.VersionData(1, metrics={"m": 5}), compare.VersionData(2, metrics={"m": 3})]
    cell = compare.metric_rows(versions, {})[0].cells[1]
    assert (cell.verdict, cell.better, cell.best, cell.delta_text) == ("lower", None, False, "-2")


def test_dependencies_are_matched_by_package_not_position():
    flat = compare.flatten({"framework": "torch", "requirements": ["pandas==2", "numpy>=1.26"]})
    assert flat == {
        "framework": "torch",
        "requirements[pandas]": "pandas==2",
        "requirements[numpy]": "numpy>=1.26",
    }
    rows = compare.key_rows([flat, compare.flatten({"requirements": ["numpy>=2"]})])
    states = {row.key: row.cells[1].state for row in rows}
    assert states == {
        "framework": "removed",
        "requirements[numpy]": "changed",
        "requirements[pandas]": "removed",
    }


def test_files_are_matched_by_path_and_compared_by_sha256():
    same = compare.FileData("a.bin", 3, "1" * 64)
    versions = [
        compare.VersionData(1, files=(same, compare.FileData("b.bin", 3, "2" * 64))),
        compare.VersionData(
            2,
            files=(
                same,
                compare.FileData("b.bin", 3, "3" * 64),  # same size, other bytes
                compare.FileData("c.bin", 1, "4" * 64),
            ),
        ),
        compare.VersionData(3, files=(same,)),
    ]
    rows = {row.path: [cell.state for cell in row.cells] for row in compare.file_rows(versions)}
    assert rows == {
        "a.bin": ["baseline", "same", "same"],
        "b.bin": ["baseline", "changed", "removed"],
        "c.bin": ["baseline", "added", "absent"],
    }


# --- Compare: the page ------------------------------------------------------------------------


def test_compare_two_versions(client, viewer, ml_model, three_versions):
    client.force_login(viewer)
    response = client.get(compare_url(ml_model.name, "v=2&v=1"))
    assert response.status_code == 200
    comparison = response.context["comparison"]
    assert comparison.numbers == (1, 2)  # the lower number is the baseline
    metrics = {row.name: row.cells[1] for row in comparison.metrics}
    assert (metrics["auc"].delta, metrics["auc"].verdict) == (0.02, "better")
    assert (metrics["loss"].delta, metrics["loss"].verdict) == (0.05, "worse")
    assert metrics["latency_ms"].verdict == "same"
    sections = {section.slug: section for section in comparison.sections}
    params = {row.key: row.cells[1].state for row in sections["params"].rows}
    assert params == {"dropout": "removed", "epochs": "added", "lr": "changed", "optimizer": "same"}
    deps = {row.key: row.cells[1].state for row in sections["dependencies"].rows}
    assert deps["framework"] == "changed"
    assert deps["requirements[numpy]"] == "changed"
    assert deps["requirements[pandas]"] == "same"
    tags = {row.key: row.cells[1].state for row in sections["tags"].rows}
    assert tags == {"reviewed": "added", "team": "same"}
    data = {row.key: row.cells[1].state for row in sections["training-data"].rows}
    assert data == {"s3://data/fraud/2024.parquet": "same", "s3://data/fraud/2025.parquet": "added"}
    files = {row.path: row.cells[1].state for row in comparison.files}
    assert files == {
        "config.json": "same",
        "model.bin": "changed",
        "new.txt": "added",
        "old.txt": "removed",
    }
    assert comparison.file_summary == [(2, {"added": 1, "removed": 1, "changed": 1, "same": 1})]
    (diff,) = comparison.descriptions
    assert diff.chunks == (
        ("delete", "Baseline model"),
        ("insert", "Model"),
        ("equal", " trained on 2024 "),
        ("insert", "and 2025 "),
        ("equal", "data."),
    )
    page = html(response)
    assert '<del class="word-del">' in page and '<ins class="word-ins">' in page
    assert '<span class="badge badge-changed">changed</span>' in page
    assert "better" in page and "worse" in page
    assert_csp_clean(page)


def test_compare_three_versions_marks_best_and_measures_from_the_baseline(
    client, viewer, ml_model, three_versions
):
    client.force_login(viewer)
    response = client.get(compare_url(ml_model.name, "v=3&v=1&v=2&base=2"))
    assert response.status_code == 200
    comparison = response.context["comparison"]
    assert comparison.numbers == (2, 1, 3)  # baseline first, then by number
    auc = next(row for row in comparison.metrics if row.name == "auc")
    assert [cell.delta for cell in auc.cells] == [None, -0.02, 0.02]
    assert [cell.verdict for cell in auc.cells] == ["", "worse", "better"]
    assert [cell.best for cell in auc.cells] == [False, False, True]
    loss = next(row for row in comparison.metrics if row.name == "loss")
    assert [cell.best for cell in loss.cells] == [False, False, True]  # 0.18, lower is better
    recall = next(row for row in comparison.metrics if row.name == "recall")
    assert [cell.value for cell in recall.cells] == [None, None, 0.7]
    assert [diff.number for diff in comparison.descriptions] == [1, 3]
    page = html(response)
    assert page.count('class="badge badge-baseline"') == 1
    assert "use as baseline" in page


def test_compare_with_production(client, viewer, owner, ml_model, three_versions):
    v1, _, v3 = three_versions
    put_in_production(ml_model, v1, owner)
    client.force_login(viewer)
    response = client.get(compare_url(ml_model.name, "v=3&against=production"))
    assert response.status_code == 200
    assert response.context["comparison"].numbers == (1, 3)
    page = html(response)
    assert "(baseline, current production)" in page
    # the version page links here while production holds another version
    version_page = html(client.get(v3.get_absolute_url()))
    assert "?v=3&amp;against=production" in version_page
    assert "Compare with production" in version_page
    assert "Compare with production" not in html(client.get(v1.get_absolute_url()))


def test_compare_against_an_empty_stage_says_so(client, viewer, ml_model, three_versions):
    client.force_login(viewer)
    response = client.get(compare_url(ml_model.name, "v=3&against=production"))
    assert response.status_code == 200
    assert response.context["comparison"] is None
    assert "No version holds production now" in html(response)


@pytest.mark.parametrize(
    "query",
    ["v=1&v=9", "v=1&v=abc", "v=1&v=0", "v=1&v=-2", "v=1&v=99999999999", "v=1&against=nope"],
)
def test_unknown_versions_or_stages_are_404(client, viewer, ml_model, three_versions, query):
    client.force_login(viewer)
    assert client.get(compare_url(ml_model.name, query)).status_code == 404


def test_versions_of_another_model_cannot_be_mixed_in(client, owner, ml_model, three_versions):
    other = model_create(actor=owner, name="churn")
    for _ in range(5):
        version_create(actor=owner, model=other, metrics={"auc": 0.5})
    client.force_login(owner)
    # v5 exists only in `churn`: the model in the path decides, so it is simply missing here.
    assert client.get(compare_url(ml_model.name, "v=1&v=5")).status_code == 404
    response = client.get(compare_url(other.name, "v=1&v=5"))
    assert response.status_code == 200
    assert all(v.model_id == other.pk for v in response.context["versions"])


def test_outsiders_get_404_and_anonymous_users_sign_in(client, outsider, ml_model, three_versions):
    client.force_login(outsider)
    assert client.get(compare_url(ml_model.name, "v=1&v=2")).status_code == 404
    assert client.get(compare_url("no-such-model", "v=1&v=2")).status_code == 404
    client.logout()
    response = client.get(compare_url(ml_model.name, "v=1&v=2"))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_picking_one_version_asks_for_another(client, viewer, ml_model, three_versions):
    client.force_login(viewer)
    response = client.get(compare_url(ml_model.name, "v=2"))
    assert response.status_code == 200 and response.context["comparison"] is None
    assert "Tick at least one more version" in html(response)
    empty = client.get(compare_url(ml_model.name))
    assert empty.status_code == 200 and "Pick versions to compare" in html(empty)


def test_user_text_is_escaped_on_the_compare_page(client, owner, ml_model):
    evil = "<script>alert(1)</script>"
    for value in (0.1, 0.2):
        version_create(
            actor=owner,
            model=ml_model,
            description=f"{evil} {value}",
            metrics={evil: value},
            params={evil: evil + str(value)},
            tags={"t": evil + str(value)},
        )
    client.force_login(owner)
    page = html(client.get(compare_url(ml_model.name, "v=1&v=2")))
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert_csp_clean(page)


def test_compare_runs_a_bounded_number_of_queries(client, owner, ml_model):
    for number in range(8):
        version = version_create(actor=owner, model=ml_model, metrics={"auc": number / 10})
        upload(owner, version, {f"file-{i}.bin": f"{number}-{i}".encode() for i in range(4)})
    client.force_login(owner)
    client.get(compare_url(ml_model.name, "v=1&v=2"))  # warm caches (content types…)
    with CaptureQueriesContext(connection) as two:
        assert client.get(compare_url(ml_model.name, "v=1&v=2")).status_code == 200
    query = "&".join(f"v={n}" for n in range(1, 9)) + "&against=production"
    with CaptureQueriesContext(connection) as eight:
        assert client.get(compare_url(ml_model.name, query)).status_code == 200
    assert len(eight) <= len(two) + 1  # + the stage lookup for `against`


def test_compare_query_budget(client, owner, ml_model, django_assert_max_num_queries):
    for number in range(8):
        version = version_create(actor=owner, model=ml_model, metrics={"auc": number / 10})
        upload(owner, version, {f"file-{i}.bin": f"{number}-{i}".encode() for i in range(4)})
    client.force_login(owner)
    query = "&".join(f"v={n}" for n in range(1, 9))
    with django_assert_max_num_queries(12):
        assert client.get(compare_url(ml_model.name, query)).status_code == 200


def test_more_than_eight_versions_are_cut_with_a_note(client, owner, ml_model):
    for _ in range(10):
        version_create(actor=owner, model=ml_model, metrics={"auc": 0.5})
    client.force_login(owner)
    query = "&".join(f"v={n}" for n in range(1, 11))
    response = client.get(compare_url(ml_model.name, query))
    assert response.status_code == 200
    assert len(response.context["comparison"].numbers) == 8
    assert "2 more were left out" in html(response)


# --- Compare: metric directions (owners) -------------------------------------------------------


def directions_url(name: str) -> str:
    return reverse("insight:metric-directions", args=[name])


def test_owner_sets_metric_directions_and_keeps_the_others(client, owner, ml_model, three_versions):
    model_update(actor=owner, model=ml_model, metric_directions={"auc": "higher", "other": "lower"})
    client.force_login(owner)
    page = client.get(compare_url(ml_model.name, "v=1&v=2"))
    form = page.context["directions_form"]
    assert form.metrics == ["auc", "latency_ms", "loss"]
    response = client.post(
        directions_url(ml_model.name),
        {"v": ["1", "2"], "direction_0": "", "direction_1": "lower", "direction_2": "lower"},
    )
    assert response.status_code == 302
    assert response["Location"] == compare_url(ml_model.name, "v=1&v=2")
    ml_model.refresh_from_db()
    assert ml_model.metric_directions == {"other": "lower", "latency_ms": "lower", "loss": "lower"}
    event = AuditEvent.objects.filter(action="model.updated").latest("pk")
    assert event.changes["after"]["metric_directions"] == ml_model.metric_directions


def test_metric_directions_refuse_bad_values_and_non_owners(
    client, owner, editor, viewer, outsider, ml_model, three_versions
):
    before = dict(RegisteredModel.objects.get(pk=ml_model.pk).metric_directions)
    client.force_login(owner)
    bad = client.post(directions_url(ml_model.name), {"v": ["1", "2"], "direction_0": "sideways"})
    assert bad.status_code == 400
    assert "Select a valid choice" in html(bad)
    for user, status in ((editor, 403), (viewer, 403), (outsider, 404)):
        client.force_login(user)
        response = client.post(
            directions_url(ml_model.name), {"v": ["1", "2"], "direction_0": "lower"}
        )
        assert response.status_code == status
        page = client.get(compare_url(ml_model.name, "v=1&v=2"))
        assert "directions_form" not in (page.context or {})
    assert RegisteredModel.objects.get(pk=ml_model.pk).metric_directions == before


# --- Entry points on other pages ---------------------------------------------------------------


def test_versions_tab_has_compare_checkboxes(client, viewer, ml_model, three_versions):
    client.force_login(viewer)
    page = html(client.get(f"{ml_model.get_absolute_url()}?tab=versions"))
    assert f'<form id="compare-form" method="get" action="{compare_url(ml_model.name)}"' in page
    assert page.count('form="compare-form"') == 3


def test_promotion_page_links_to_the_full_comparison(client, owner, ml_model, three_versions):
    v1, v2, _ = three_versions
    put_in_production(ml_model, v1, owner)
    stage = Stage.objects.get(model=ml_model, name="production")
    StagePolicy.objects.filter(stage=stage).update(requires_stage=None)
    promotion = promotion_request(actor=owner, version=v2, stage=stage)
    client.force_login(owner)
    page = html(client.get(promotion.get_absolute_url()))
    assert f'href="{compare_url(ml_model.name, "v=1&amp;v=2&amp;base=1")}">Full comparison' in page


# --- Trends ------------------------------------------------------------------------------------


def trends_url(model: RegisteredModel, query: str = "") -> str:
    return f"{model.get_absolute_url()}?tab=trends{'&' + query if query else ''}"


def charts_of(page: str) -> list[str]:
    return re.findall(r"<svg class=\"trend-svg\".*?</svg>", page, flags=re.S)


def test_trends_chart_one_point_per_version_with_production_marked(
    client, viewer, owner, ml_model, three_versions
):
    v1, v2, _ = three_versions
    put_in_production(ml_model, v1, owner)
    put_in_production(ml_model, v2, owner)  # v1 held production before
    client.force_login(viewer)
    response = client.get(trends_url(ml_model))
    assert response.status_code == 200
    page = html(response)
    assert response.context["trends"]["chosen"] == ["auc", "loss", "recall"]  # newest first
    svgs = charts_of(page)
    assert len(svgs) == 3
    auc = svgs[0]
    assert auc.count('class="trend-point"') == 3
    assert auc.count("data-marker=") == 3
    assert auc.count('data-production="held"') == 1  # v1
    assert auc.count('data-production="current"') == 1  # v2
    assert auc.count("trend-marker-production") == 2  # diamonds, not colour alone
    assert auc.count('class="trend-current"') == 1
    assert 'aria-label="v3 auc 0.95"' in auc
    assert "<title>v2 auc 0.93, in production now</title>" in auc
    assert svgs[2].count('class="trend-point"') == 1  # only v3 has recall
    # the table beside the chart holds the same numbers
    assert 'aria-label="auc by version, as a table"' in page
    assert re.search(r">v1</a></th><td class=\"num\">0.91</td>", page)
    assert_csp_clean(page)


def test_trends_metric_choice(client, viewer, ml_model, three_versions):
    client.force_login(viewer)
    response = client.get(trends_url(ml_model, "metric=latency_ms&metric=nope"))
    assert response.context["trends"]["chosen"] == ["latency_ms"]
    page = html(response)
    assert len(charts_of(page)) == 1
    assert 'name="metric" value="latency_ms" checked' in page
    assert 'name="metric" value="auc">' in page
    fallback = client.get(trends_url(ml_model, "metric=nope"))
    assert fallback.context["trends"]["chosen"] == ["auc", "loss", "recall"]


def test_trends_without_metrics(client, viewer, ml_model):
    client.force_login(viewer)
    page = html(client.get(trends_url(ml_model)))
    assert "No metrics to chart yet" in page and "<svg" not in page


def test_trends_escape_metric_names(client, owner, ml_model):
    evil = '<script>alert("x")</script>'
    for value in (1, 2):
        version_create(actor=owner, model=ml_model, metrics={evil: value})
    client.force_login(owner)
    page = html(client.get(trends_url(ml_model)))
    assert evil not in page
    (svg,) = charts_of(page)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; across versions" in svg
    assert_csp_clean(page)


def test_trends_with_200_versions(client, owner, ml_model, django_assert_max_num_queries):
    for number in range(1, 201):
        version_create(
            actor=owner, model=ml_model, metrics={"auc": 0.8 + number / 2000, "loss": 1 / number}
        )
    stage = Stage.objects.get(model=ml_model, name="production")
    for number in (50, 120, 180):
        stage_assign(stage=stage, version=ml_model.versions.get(number=number), actor=owner)
    client.force_login(owner)
    client.get(trends_url(ml_model))  # warm caches
    with django_assert_max_num_queries(16):
        response = client.get(trends_url(ml_model))
    page = html(response)
    auc = charts_of(page)[0]
    assert auc.count('class="trend-point"') == auc.count("data-marker=") == 200
    assert auc.count('data-production="held"') == 2
    assert auc.count('data-production="current"') == 1
    labels = re.findall(r'class="trend-tick trend-x-tick"[^>]*>(v\d+)<', auc)
    assert 2 <= len(labels) <= 14
    assert labels[-1] == "v200" and "v1" not in labels
    assert "v200 auc 0.9" in auc
    assert_csp_clean(page)


def test_trend_queries_do_not_grow_with_versions(client, owner, ml_model):
    for number in range(1, 4):
        version_create(actor=owner, model=ml_model, metrics={"auc": number / 10})
    client.force_login(owner)
    client.get(trends_url(ml_model))
    with CaptureQueriesContext(connection) as few:
        client.get(trends_url(ml_model))
    for number in range(4, 60):
        version_create(actor=owner, model=ml_model, metrics={"auc": number / 100})
    with CaptureQueriesContext(connection) as many:
        client.get(trends_url(ml_model))
    assert len(many) == len(few)


def test_trends_tab_refuses_outsiders(client, outsider, ml_model, three_versions):
    client.force_login(outsider)
    assert client.get(trends_url(ml_model)).status_code == 404


# --- Charts: pure SVG -------------------------------------------------------------------------


def test_nice_ticks_and_labels():
    assert charts.nice_ticks(0.88, 0.95) == [0.88, 0.9, 0.92, 0.94, 0.96]
    assert charts.nice_ticks(5, 5)[0] < 5 < charts.nice_ticks(5, 5)[-1]
    assert charts.version_ticks(1, 9, 12) == list(range(1, 10))
    assert charts.version_ticks(1, 200, 12) == list(range(20, 201, 20))
    assert charts.tick_label(0.9, 0.02) == "0.90"
    assert charts.tick_label(12000, 2000) == "12,000"


def test_single_point_chart_has_no_line_and_no_style_attribute():
    svg = charts.trend_svg("auc", [charts.TrendPoint(4, 0.9, url="/v4")], chart_id="c")
    assert svg.count('class="trend-point"') == 1
    assert 'points=""' in svg
    assert " style=" not in svg and "<script" not in svg
    assert 'aria-labelledby="c-title c-desc"' in svg


def test_user_urls_and_names_are_escaped_in_svg():
    point = charts.TrendPoint(1, 1.0, url='/x?a=1&b="2"')
    svg = charts.trend_svg('a"b<c', [point, charts.TrendPoint(2, 2.0)], chart_id="z")
    assert 'href="/x?a=1&amp;b=&quot;2&quot;"' in svg
    assert "a&quot;b&lt;c across versions" in svg
    assert 'a"b<c' not in svg


def test_insight_routes_exist_for_a_made_up_user_too(client, db):
    """Sanity: the routes resolve and need sign-in (the route-table test covers the rest)."""
    make_user("erin")
    assert client.get(compare_url("anything")).status_code == 302
    assert client.post(directions_url("anything")).status_code == 302
