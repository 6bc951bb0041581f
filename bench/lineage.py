"""Lineage graph: layout and drawing time by graph size, and the version page around it.

    .venv/bin/python -m bench.lineage                    # layout + drawing, 12 to 1000 nodes
    .venv/bin/python -m bench.lineage --page             # also the version page, 500 nodes
    .venv/bin/python -m bench.lineage --page --nodes 1000 --requests 20

Part one needs no data: synthetic graphs shaped like `selectors.lineage_graph` (a focus
version, a few ancestors, generations of descendants with one or two parents each, datasets
feeding versions across generations), laid out by `apps.registry.lineage_layout` and drawn by
`apps.registry.lineage_svg.build`. Part two (`--page`) seeds that graph into the bench
database (models `lineage-bench-*`, replaced on every run) and requests the version page
in-process with Django's test `Client`: server time (middleware, view, queries, template)
and query count. The issue's target: "a lineage of 500 nodes still renders in under a
second on the server". Figures only; nothing is asserted (see bench/README.md).
"""

import argparse
import gc
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

PREFIX = "lineage-bench-"
SIZES = (12, 60, 150, 500, 1000)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per size")
    parser.add_argument("--page", action="store_true", help="also time the version page")
    parser.add_argument("--nodes", type=int, default=500, help="nodes of the page's graph")
    parser.add_argument("--requests", type=int, default=20, help="timed page requests")
    return parser.parse_args(argv)


# --- Synthetic graphs ------------------------------------------------------------------------


def shape(nodes: int) -> tuple[int, int, int]:
    """(generations, width, datasets) giving about `nodes` nodes, ~12 % datasets."""
    datasets = max(1, nodes // 8)
    versions = nodes - datasets - 3  # minus the focus and two ancestors
    generations = max(1, min(8, versions // 6))
    width = max(1, versions // generations)
    return generations, width, nodes - 3 - generations * width


def synthetic_graph(nodes: int) -> dict[str, Any]:
    """A dict like `selectors.lineage_graph` returns, with about `nodes` nodes."""
    generations, width, datasets = shape(nodes)

    def version(model: str, number: int) -> dict[str, Any]:
        node_id = f"version:{model}/{number}"
        return {"id": node_id, "type": "version", "model": model, "version": number,
                "status": "ready"}  # fmt: skip

    graph_nodes = [version("hub", 3), version("hub", 2), version("hub", 1)]
    edges = [
        {"from": "version:hub/1", "to": "version:hub/2", "kind": "parent"},
        {"from": "version:hub/2", "to": "version:hub/3", "kind": "parent"},
    ]
    previous = ["version:hub/3"]
    for level in range(1, generations + 1):
        current = []
        for i in range(width):
            node = version(f"gen-{level}", i + 1)
            graph_nodes.append(node)
            current.append(node["id"])
            for parent in {previous[i % len(previous)], previous[(i * 7 + 3) % len(previous)]}:
                edges.append({"from": parent, "to": node["id"], "kind": "parent"})
        previous = current
    versions = [node["id"] for node in graph_nodes]
    for k in range(max(datasets, 0)):
        uri = f"s3://datasets/part-{k:04d}.parquet"
        graph_nodes.append({"id": f"data:{uri}", "type": "dataset", "uri": uri, "sha256": None})
        for target in versions[k % len(versions) :: max(datasets, 1)][:3]:
            edges.append({"from": f"data:{uri}", "to": target, "kind": "training_data"})
    return {"nodes": graph_nodes, "edges": edges, "truncated": False}


def time_build(graph: dict[str, Any], repeat: int) -> tuple[list[float], list[float], int]:
    from apps.registry import lineage_layout, lineage_svg

    layouts, builds, size = [], [], 0
    for _ in range(repeat):
        with common.Stopwatch() as watch:
            lineage_layout.layout(graph, focus="version:hub/3")
        layouts.append(watch.seconds * 1000)
        with common.Stopwatch() as watch:
            view = lineage_svg.build(graph, focus="version:hub/3")
        builds.append(watch.seconds * 1000)
        size = len(view.svg)
    return layouts, builds, size


def bench_build(repeat: int) -> None:
    print("layout = placing only; build = layout + SVG + table rows (what the view calls)")
    rows = []
    for nodes in SIZES:
        graph = synthetic_graph(nodes)
        time_build(graph, 1)  # warm up (URL resolver, imports)
        layouts, builds, size = time_build(graph, repeat)
        rows.append(
            (
                f"{len(graph['nodes'])} nodes / {len(graph['edges'])} edges",
                common.percentile(layouts, 50),
                max(layouts),
                common.percentile(builds, 50),
                max(builds),
                f"{size / 1024:.0f} KiB",
            )
        )
    headers = ("graph", "layout p50 ms", "layout max", "build p50 ms", "build max", "SVG")
    common.print_table(headers, rows)


# --- The version page ------------------------------------------------------------------------


def seed(owner: Any, nodes: int) -> tuple[str, int]:
    """The synthetic graph as rows: `lineage-bench-hub` v3 is the page's version."""
    from apps.registry.access import grant_creator_ownership
    from apps.registry.models import ModelVersion, RegisteredModel, VersionParent

    RegisteredModel.objects.filter(name__startswith=PREFIX).delete()
    graph = synthetic_graph(nodes)
    data: dict[str, list[dict[str, Any]]] = {}
    for edge in graph["edges"]:
        if edge["kind"] == "training_data":
            data.setdefault(edge["to"], []).append({"uri": edge["from"].removeprefix("data:")})
    models: dict[str, RegisteredModel] = {}
    versions: dict[str, ModelVersion] = {}
    for node in graph["nodes"]:
        if node["type"] != "version":
            continue
        name = PREFIX + node["model"]
        if name not in models:
            models[name] = RegisteredModel.objects.create(
                name=name, name_key=name, created_by=owner, visibility="private"
            )
            grant_creator_ownership(owner, models[name])
        versions[node["id"]] = ModelVersion(
            model=models[name], number=node["version"], status="ready",
            training_data=data.get(node["id"], []),
        )  # fmt: skip
    ModelVersion.objects.bulk_create(versions.values(), batch_size=2000)
    VersionParent.objects.bulk_create(
        VersionParent(parent=versions[edge["from"]], child=versions[edge["to"]])
        for edge in graph["edges"]
        if edge["kind"] == "parent"
    )
    return PREFIX + "hub", 3


def bench_page(nodes: int, requests: int) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    user_model = get_user_model()
    owner, _ = user_model.objects.get_or_create(username=common.OWNER)
    with common.Stopwatch() as watch:
        name, number = seed(owner, nodes)
    print(f"\nseeded a {nodes}-node lineage in {watch.seconds:.1f} s")
    client = Client()
    client.force_login(owner)
    url = reverse("registry:version-detail", args=[name, number])
    for _ in range(3):
        client.get(url)
    times, queries, db_ms = [], [], []
    for _ in range(requests):
        reset_queries()
        gc.collect()  # start each request from the same heap
        with CaptureQueriesContext(connection) as captured, common.Stopwatch() as watch:
            response = client.get(url)
        assert response.status_code == 200, response.status_code
        times.append(watch.seconds * 1000)
        queries.append(len(captured))
        db_ms.append(sum(float(q["time"]) for q in captured.captured_queries) * 1000)
    body = response.content.decode()
    drawn = body.count('<a class="lineage-node')
    row = (
        f"version page, {drawn} nodes drawn",
        common.percentile(times, 50),
        common.percentile(times, 95),
        max(times),
        f"{min(queries)}-{max(queries)}",
        common.percentile(db_ms, 50),
        f"{len(response.content) / 1024:.0f} KiB",
    )
    headers = ("page", "p50 ms", "p95 ms", "max ms", "queries", "db p50 ms", "HTML")
    common.print_table(headers, [row])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.setup_django(migrate=args.page)
    print(common.machine_line())
    bench_build(args.repeat)
    if args.page:
        bench_page(args.nodes, args.requests)
    print(common.machine_line())


if __name__ == "__main__":
    main()
