"""The version page's lineage graph: layout, drawing, escaping, visibility, scale.

Pure layout and drawing tests run on plain dicts shaped like `selectors.lineage_graph`;
the page tests go through the real selector, permissions and template.
"""

import itertools
import re
import time
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.approvals.models import Stage
from apps.registry import lineage_layout, lineage_svg
from apps.registry.models import ModelVersion, RegisteredModel, VersionParent, VersionStatus
from apps.registry.services import model_create, version_create
from tests.conftest import make_user
from tests.registry.conftest import grant

EVIL_URI = 's3://bucket/"><script>alert(1)</script>'
D1 = "data:s3://datasets/transactions-2023"
D2 = "data:s3://datasets/chargebacks"


def v(model: str, number: int, status: str = "ready") -> dict[str, Any]:
    return {
        "id": f"version:{model}/{number}",
        "type": "version",
        "model": model,
        "version": number,
        "status": status,
    }


def d(uri: str, sha256: str | None = None) -> dict[str, Any]:
    return {"id": f"data:{uri}", "type": "dataset", "uri": uri, "sha256": sha256}


def e(source: str, target: str, kind: str = "parent") -> dict[str, str]:
    return {"from": source, "to": target, "kind": kind}


def family_graph() -> dict[str, Any]:
    """base/1 → base/2 → ft/1 → distill/1 and ft/1 → secret/1 → after/1; D1 feeds base/1
    and ft/1, D2 feeds ft/1. Nodes in the order the selector returns them (focus first)."""
    nodes = [
        v("ft", 1),
        d("s3://datasets/transactions-2023", "1" * 64),
        d("s3://datasets/chargebacks"),
        v("base", 2),
        v("base", 1),
        v("distill", 1),
        v("secret", 1, "failed"),
        v("after", 1, "pending"),
    ]
    edges = [
        e(D1, "version:ft/1", "training_data"),
        e(D2, "version:ft/1", "training_data"),
        e("version:base/2", "version:ft/1"),
        e("version:base/1", "version:base/2"),
        e(D1, "version:base/1", "training_data"),
        e("version:ft/1", "version:distill/1"),
        e("version:ft/1", "version:secret/1"),
        e("version:secret/1", "version:after/1"),
    ]
    return {"nodes": nodes, "edges": edges, "truncated": False}


def wide_graph(levels: int, width: int, datasets: int) -> dict[str, Any]:
    """A focus version with `levels` columns of `width` descendants (one or two parents
    each) and `datasets` datasets spread over them."""
    nodes, edges = [v("hub", 1)], []
    previous = ["version:hub/1"]
    for level in range(1, levels + 1):
        current = []
        for i in range(width):
            node = v(f"m{level}", i + 1)
            nodes.append(node)
            current.append(node["id"])
            for parent in {previous[i % len(previous)], previous[(i * 7 + 3) % len(previous)]}:
                edges.append(e(parent, node["id"]))
        previous = current
    versions = [node["id"] for node in nodes]
    for k in range(datasets):
        uri = f"s3://datasets/part-{k:03d}.parquet"
        nodes.append(d(uri, f"{k:064x}"))
        for target in versions[1 + k :: datasets][:3]:
            edges.append(e(f"data:{uri}", target, "training_data"))
    return {"nodes": nodes, "edges": edges, "truncated": False}


def build(graph: dict[str, Any], focus: str = "version:ft/1", **kwargs) -> lineage_svg.LineageView:
    return lineage_svg.build(graph, focus=focus, **kwargs)


# --- Layout ---------------------------------------------------------------------------------


def test_layers_put_ancestors_left_and_descendants_right():
    placed = lineage_layout.layout(family_graph(), focus="version:ft/1")
    layers = {node_id: box.layer for node_id, box in placed.boxes.items()}
    assert layers == {
        D1: 0,
        "version:base/1": 1,
        "version:base/2": 2,
        D2: 2,  # just left of the only version it feeds
        "version:ft/1": 3,
        "version:distill/1": 4,
        "version:secret/1": 4,
        "version:after/1": 5,
    }
    assert placed.layer_count == 6
    xs = [placed.boxes[node_id].x for node_id in ("version:base/1", "version:ft/1")]
    assert xs[0] < xs[1] < placed.boxes["version:after/1"].x


def test_every_edge_points_right():
    graph = family_graph()
    placed = lineage_layout.layout(graph)
    for edge in graph["edges"]:
        assert placed.boxes[edge["from"]].layer < placed.boxes[edge["to"]].layer


def test_columns_are_ordered_top_to_bottom_without_overlap():
    placed = lineage_layout.layout(family_graph(), focus="version:ft/1")
    columns = placed.columns()
    assert columns[4] == ["version:distill/1", "version:secret/1"]
    for column in columns:
        boxes = [placed.boxes[node_id] for node_id in column]
        assert [box.order for box in boxes] == list(range(len(boxes)))
        for upper, lower in itertools.pairwise(boxes):
            assert upper.y + upper.height < lower.y
    assert all(box.y >= 0 for box in placed.boxes.values())
    assert max(box.y + box.height for box in placed.boxes.values()) <= placed.height


def test_barycenter_sweeps_untangle_crossed_chains():
    # Given in an order that crosses: a/1 above b/1, but b/2 above a/2.
    graph = {
        "nodes": [v("a", 1), v("b", 1), v("b", 2), v("a", 2), v("a", 3), v("b", 3)],
        "edges": [
            e("version:a/1", "version:a/2"),
            e("version:b/1", "version:b/2"),
            e("version:a/2", "version:a/3"),
            e("version:b/2", "version:b/3"),
        ],
    }
    placed = lineage_layout.layout(graph)
    columns = placed.columns()
    tops = [column[0].rpartition("/")[0] for column in columns]
    assert len(set(tops)) == 1  # the same chain on top in every column: no crossing


def test_crossings_are_counted_exactly():
    down = [[3], [2], [], []]  # 0 → 3 and 1 → 2, with 0 above 1 and 2 above 3: one crossing
    assert lineage_layout.count_crossings([[0, 1], [2, 3]], down) == 1
    assert lineage_layout.count_crossings([[0, 1], [3, 2]], down) == 0


def test_long_edges_route_through_waypoints_and_cycles_do_not_hang():
    graph = family_graph()
    placed = lineage_layout.layout(graph)
    long_edge = next(r for r in placed.routes if r.edge["from"] == D1 and "ft" in r.edge["to"])
    assert long_edge.d.count(" H") == 2  # crosses columns 1 and 2 on a lane
    cyclic = {
        "nodes": [v("x", 1), v("y", 1)],
        "edges": [e("version:x/1", "version:y/1"), e("version:y/1", "version:x/1")],
    }
    assert len(lineage_layout.layout(cyclic).routes) == 2


# --- Drawing --------------------------------------------------------------------------------


def test_svg_draws_every_visible_node_and_edge():
    graph = family_graph()
    view = build(graph, stages={"version:base/2": ["production"]})
    svg = str(view.svg)
    assert len(re.findall(r'<path class="lineage-edge ', svg)) == len(graph["edges"]) == 8
    assert svg.count('<a class="lineage-node') == len(graph["nodes"])
    assert svg.count("lineage-edge-training_data") == 3
    assert svg.count('stroke-dasharray="6 4"') == 3  # training data dashed, not colour alone
    assert 'marker-end="url(#lineage-arrow)"' in svg and '<marker id="lineage-arrow"' in svg
    for node in graph["nodes"]:
        if node["type"] == "version":
            url = reverse("registry:version-detail", args=[node["model"], node["version"]])
            assert f'href="{url}"' in svg
    assert ">✕ failed</text>" in svg and ">○ pending</text>" in svg  # status as a word
    assert ">in production</text>" in svg
    assert view.caption == "6 versions, 2 datasets"
    assert " style=" not in svg


def test_focus_node_has_a_thick_border_and_says_so():
    svg = str(build(family_graph()).svg)
    focus = re.search(r'<a class="[^"]*lineage-focus[^"]*"[^>]*>.*?</a>', svg).group(0)
    assert 'data-node="version:ft/1"' in focus
    assert 'stroke-width="3"' in focus
    assert ">(this version)</text>" in focus
    assert svg.count(">(this version)</text>") == 1


def test_dataset_nodes_are_cylinders_linking_to_their_table_row():
    view = build(family_graph())
    svg = str(view.svg)
    dataset = re.search(r'<a class="lineage-node lineage-dataset"[^>]*>', svg).group(0)
    anchor = re.search(r'href="#(lineage-row-\d+)"', dataset).group(1)
    assert anchor in {row.anchor for row in view.rows if row.kind == "dataset"}
    assert 'class="lineage-cylinder"' in svg
    assert "sha256 11111111…" in svg and "no checksum" in svg


def test_malicious_dataset_uri_is_text_inside_the_svg():
    graph = {
        "nodes": [v("ft", 1), d(EVIL_URI, '"><img src=x onerror=alert(2)>')],
        "edges": [e(f"data:{EVIL_URI}", "version:ft/1", "training_data")],
    }
    svg = str(build(graph).svg)
    assert "<script>" not in svg and "<img" not in svg
    assert "&lt;script&gt;" in svg
    assert '"><script' not in svg and '"><img' not in svg
    assert 'data-node="data:s3://bucket/&quot;&gt;&lt;script&gt;' in svg


def test_short_uri_keeps_the_scheme_and_the_end():
    assert lineage_svg.short_uri("s3://b/k.parquet") == "s3://b/k.parquet"
    uri = "s3://bucket/a/very/long/prefix/of/keys/data-2024.parquet"
    short = lineage_svg.short_uri(uri)
    assert short.startswith("s3://…") and short.endswith("2024.parquet")
    assert uri.endswith(short.removeprefix("s3://…"))
    assert len(short) <= lineage_svg.TEXT_CHARS
    assert "\\x1b" in lineage_svg.short_uri("s3://x/\x1b[31m")  # control characters shown


def test_small_graphs_fit_and_large_ones_scroll():
    assert not build(family_graph()).scroll
    assert 'class="lineage-svg lineage-fit"' in str(build(family_graph()).svg)
    large = build(wide_graph(levels=4, width=20, datasets=5), focus="version:hub/1")
    assert large.scroll and "lineage-natural" in str(large.svg)


def test_500_node_graph_renders():
    graph = wide_graph(levels=8, width=55, datasets=59)
    assert len(graph["nodes"]) == 500
    started = time.perf_counter()
    view = build(graph, focus="version:hub/1")
    elapsed = time.perf_counter() - started
    print(
        f"\n500-node lineage ({len(graph['edges'])} edges): laid out and drawn in {elapsed:.3f} s"
    )
    svg = str(view.svg)
    assert svg.count('<a class="lineage-node') == 500
    assert len(re.findall(r'<path class="lineage-edge ', svg)) == len(graph["edges"])
    assert view.caption == "441 versions, 59 datasets"


# --- The version page -----------------------------------------------------------------------


@pytest.fixture
def family(owner):
    """The family graph in the database; carol may view all but `secret`."""
    carol = make_user("carol")
    models = {}
    for name in ["base", "ft", "distill", "secret", "after"]:
        models[name] = model_create(actor=owner, name=name)
        if name != "secret":
            grant(carol, models[name], "viewer")
    make = lambda name, **kw: version_create(actor=owner, model=models[name], **kw)  # noqa: E731
    make("base", training_data=[{"uri": "s3://datasets/transactions-2023", "sha256": "1" * 64}])
    make("base", parents=["base/1"])
    make(
        "ft",
        parents=["base/2"],
        training_data=[
            {"uri": "s3://datasets/chargebacks"},
            {"uri": "s3://datasets/transactions-2023"},
        ],
    )
    make("distill", parents=["ft/1"])
    make("secret", parents=["ft/1"])
    make("after", parents=["secret/1"])
    return {"models": models, "carol": carol}


def page(client, user, name: str, number: int) -> str:
    client.force_login(user)
    response = client.get(reverse("registry:version-detail", args=[name, number]))
    assert response.status_code == 200
    return response.content.decode()


def svg_of(html: str) -> str:
    return re.search(r"<svg class=\"lineage-svg.*?</svg>", html, re.S).group(0)


def test_page_draws_the_lineage_with_a_table(client, owner, family):
    html = page(client, owner, "ft", 1)
    svg = svg_of(html)
    assert "6 versions, 2 datasets" in html
    assert svg.count('<a class="lineage-node') == 8
    assert len(re.findall(r'<path class="lineage-edge ', svg)) == 8
    assert 'data-node="version:secret/1"' in svg
    assert '<details class="lineage-table">' in html
    assert html.count('<tr id="lineage-row-') == 8
    assert " style=" not in html


def test_hidden_versions_are_neither_drawn_nor_counted(client, family):
    html = page(client, family["carol"], "ft", 1)
    svg = svg_of(html)
    assert "secret" not in html
    assert 'data-node="version:after/1"' not in svg  # only reachable through the hidden one
    assert "4 versions, 2 datasets" in html
    assert 'data-nodes="6"' in svg
    assert svg.count('<a class="lineage-node') == 6
    assert len(re.findall(r'<path class="lineage-edge ', svg)) == 6


def test_stages_held_are_shown_on_the_nodes(client, owner, family):
    base2 = ModelVersion.objects.get(model__name="base", number=2)
    Stage.objects.filter(model__name="base", name="production").update(current_version=base2)
    svg = svg_of(page(client, owner, "ft", 1))
    assert ">in production</text>" in svg
    assert "<title>base v2 — pending; in production</title>" in svg


def test_malicious_training_data_uri_is_escaped_on_the_page(client, owner):
    model = model_create(actor=owner, name="evil")
    version_create(actor=owner, model=model, training_data=[{"uri": EVIL_URI}])
    html = page(client, owner, "evil", 1)
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg_of(html)


def test_a_version_without_lineage_says_so(client, owner):
    model = model_create(actor=owner, name="alone")
    version_create(actor=owner, model=model)
    html = page(client, owner, "alone", 1)
    assert "No recorded lineage" in html and '<svg class="lineage-svg' not in html


def seed_generations(owner, *, levels: int, width: int, datasets: int) -> None:
    """`levels` generations of `width` descendants of hub/1, each with one or two parents and
    a training set out of `datasets`, in bulk (no services: only the rows matter here)."""
    previous = [ModelVersion.objects.get(model__name="hub", number=1)]
    for level in range(1, levels + 1):
        model = RegisteredModel.objects.create(
            name=f"gen-{level}", name_key=f"gen-{level}", created_by=owner
        )
        grant(owner, model, "owner")
        rows = ModelVersion.objects.bulk_create(
            ModelVersion(
                model=model,
                number=i + 1,
                status=VersionStatus.READY,
                training_data=[{"uri": f"s3://data/set-{(level * width + i) % datasets}"}],
            )
            for i in range(width)
        )
        VersionParent.objects.bulk_create(
            VersionParent(child=row, parent=parent)
            for i, row in enumerate(rows)
            for parent in {previous[i % len(previous)], previous[(i * 7 + 3) % len(previous)]}
        )
        previous = rows


def test_500_node_page_runs_as_many_queries_as_a_small_one(client, owner):
    version_create(actor=owner, model=model_create(actor=owner, name="hub"))
    client.force_login(owner)
    url = reverse("registry:version-detail", args=["hub", 1])
    seed_generations(owner, levels=7, width=1, datasets=1)
    client.get(url)  # warm the content-type and permission caches
    with CaptureQueriesContext(connection) as small:
        assert client.get(url).status_code == 200
    RegisteredModel.objects.filter(name__startswith="gen-").delete()
    seed_generations(owner, levels=7, width=63, datasets=58)  # 1 + 441 versions + 58 sets
    started = time.perf_counter()
    with CaptureQueriesContext(connection) as large:
        response = client.get(url)
    elapsed = time.perf_counter() - started
    html = response.content.decode()
    assert "442 versions, 58 datasets" in html
    assert svg_of(html).count('<a class="lineage-node') == 500
    print(f"\nversion page with a 500-node lineage: {elapsed:.3f} s, {len(large)} queries")
    assert len(large) == len(small)
