"""The lineage graph of a version drawn as inline SVG, with the table that goes beside it.

`apps.registry.lineage_layout` places the nodes; this module draws them. Version nodes are
rounded boxes that link to the version ("model vN", its status as a word with a glyph, the
stages it holds); the version the page is about has a thick border and "(this version)";
datasets are cylinders that link to their row of the table beside the picture. Parent edges
are solid, training-data edges dashed: shapes and words carry every meaning, colour only
repeats it. Every value from the data goes through `escape` (a dataset URI is text, never
markup), and looks come from classes in `static/css/lineage.css` (CSP: no `style=`) with
presentation attributes as fallbacks.

`lineage_view` is the one function that reads the database (the permission-filtered graph
from `selectors.lineage_graph`, then one query for the stages its versions hold); the rest
is pure and tested on plain dicts.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from apps.audit.display import printable
from apps.registry.lineage_layout import LINE_H, NODE_W, Box, Layout, Route, fmt, layout

SCROLL_NODES = 60  # more nodes than this: natural size, scrolling inside its frame
FIT_MAX_WIDTH = 1500  # wider than this: natural size too (scaling would shrink the text)
# Labels are cut to the box by character count, not measured: widths a little above the
# average advance of the usual UI fonts (Segoe UI, SF, Liberation/Arial, Noto Sans).
TEXT_W = NODE_W - 24  # 12 px padding each side
NAME_CHARS = int(TEXT_W / 7.4)  # bold 13 px
TEXT_CHARS = int(TEXT_W / 6.4)  # 12 px
URI_CHARS = int(TEXT_W / 7.25)  # monospace 12 px: 0.6 em
STATUS_GLYPHS = {"ready": "✓", "failed": "✕", "verifying": "…", "pending": "○"}
STATUS_FILLS = {"ready": "#116329", "failed": "#b3141f", "verifying": "#7a4a00"}
KIND_LABELS = {"parent": "derived version", "training_data": "training data"}


# --- Labels ---------------------------------------------------------------------------------


def clip(text: str, limit: int) -> str:
    """`text` on one printable line, cut to `limit` characters with an ellipsis."""
    text = printable(text, multiline=False)
    return text if len(text) <= limit else text[: max(limit - 1, 1)] + "…"


def short_uri(uri: str, limit: int = URI_CHARS) -> str:
    """ "s3://bucket/a/very/long/path/data.parquet" → "s3://…/long/path/data.parquet"."""
    uri = printable(uri, multiline=False)
    if len(uri) <= limit:
        return uri
    scheme, sep, rest = uri.partition("://")
    head = f"{scheme}://" if sep and len(scheme) < limit // 3 else ""
    rest = rest if head else uri
    return f"{head}…{rest[-(limit - len(head) - 1) :]}"


def version_label(node: dict[str, Any]) -> str:
    return f"{node['model']} v{node['version']}"


def node_label(node: dict[str, Any]) -> str:
    """The full one-line name of a node (tables, titles)."""
    if node.get("type") == "dataset":
        return printable(node["uri"], multiline=False)
    return version_label(node)


def _stages_text(names: Sequence[str]) -> str:
    """ "in production", "in staging, production": the stages a version holds now."""
    return "in " + ", ".join(names)


def version_title(node: dict[str, Any], stages: Sequence[str], focus: bool) -> str:
    text = f"{version_label(node)} — {node['status']}"
    if stages:
        text += f"; {_stages_text(stages)}"
    return text + (" (this version)" if focus else "")


def dataset_title(node: dict[str, Any]) -> str:
    sha = node.get("sha256")
    return f"dataset {node_label(node)} — " + (f"sha256 {sha}" if sha else "no checksum")


# --- Drawing --------------------------------------------------------------------------------
# Markup is assembled with f-strings for speed (a 500-node graph is ~2 500 elements): every
# value that comes from data — names, URIs, ids, URLs, labels — goes through `escape`; the
# rest are numbers formatted here and constants.


def _text(x: float, y: float, css: str, text: str, *, size: int = 12, extra: str = "") -> str:
    return (
        f'<text class="{css}" x="{fmt(x)}" y="{fmt(y)}" font-size="{size}"{extra}>'
        f"{escape(text)}</text>"
    )


def _version_node(box: Box, dom_id: str, url: str, stages: Sequence[str], focus: bool) -> str:
    node, x, y = box.node, box.x + 12, box.y
    status, number = str(node["status"]), str(node["version"])
    lines = []
    if focus:
        bold = ' font-weight="600" fill="#0550ae"'
        lines.append(_text(x, y + 18, "lineage-this", "(this version)", extra=bold))
        y += LINE_H
    name = f"{clip(str(node['model']), NAME_CHARS - len(number) - 2)} v{number}"
    lines.append(_text(x, y + 19, "lineage-name", name, size=13, extra=' font-weight="600"'))
    fill = f' fill="{STATUS_FILLS.get(status, "#59636e")}"'
    word = f"{STATUS_GLYPHS.get(status, '•')} {status}"
    lines.append(_text(x, y + 36, "lineage-status", word, extra=fill))
    if stages:
        lines.append(_text(x, y + 52, "lineage-stages", clip(_stages_text(stages), TEXT_CHARS)))
    title = escape(version_title(node, stages, focus))
    look = (
        'fill="#ddf4ff" stroke="#0969da" stroke-width="3"'
        if focus
        else ('fill="#ffffff" stroke="#818b98" stroke-width="1"')
    )
    return (
        f'<a class="lineage-node lineage-version lineage-status-{escape(status)}'
        f'{" lineage-focus" if focus else ""}" href="{escape(url)}" id="{dom_id}" '
        f'data-node="{escape(node["id"])}" aria-label="{title}"><title>{title}</title>'
        f'<rect class="lineage-box" x="{fmt(box.x)}" y="{fmt(box.y)}" width="{fmt(box.width)}" '
        f'height="{fmt(box.height)}" rx="6" {look}/>{"".join(lines)}</a>'
    )


def cylinder_path(x: float, y: float, width: float, height: float, ry: float = 6) -> str:
    """The outline of a cylinder (the usual "data" shape): top arc, sides, bottom arc."""
    rx, bottom = width / 2, y + height - ry
    return (
        f"M{fmt(x)},{fmt(y + ry)} A{fmt(rx)},{fmt(ry)} 0 0 1 {fmt(x + width)},{fmt(y + ry)} "
        f"V{fmt(bottom)} A{fmt(rx)},{fmt(ry)} 0 0 1 {fmt(x)},{fmt(bottom)} Z"
    )


def _dataset_node(box: Box, dom_id: str, anchor: str) -> str:
    node, x, y, width = box.node, box.x, box.y, box.width
    sha = node.get("sha256")
    sub = f"dataset · sha256 {str(sha)[:8]}…" if sha else "dataset · no checksum"
    title = escape(dataset_title(node))
    rim = f"M{fmt(x)},{fmt(y + 6)} A{fmt(width / 2)},6 0 0 0 {fmt(x + width)},{fmt(y + 6)}"
    uri_line = _text(x + 12, y + 27, "lineage-uri", short_uri(str(node["uri"])))
    sub_line = _text(x + 12, y + 42, "lineage-sub", sub, size=11, extra=' fill="#59636e"')
    return (
        f'<a class="lineage-node lineage-dataset" href="#{anchor}" id="{dom_id}" '
        f'data-node="{escape(node["id"])}" aria-label="{title}"><title>{title}</title>'
        f'<path class="lineage-cylinder" d="{cylinder_path(x, y, width, box.height)}" '
        f'fill="#f6f8fa" stroke="#818b98"/>'
        f'<path class="lineage-cylinder-rim" d="{rim}" fill="none" stroke="#818b98"/>'
        f"{uri_line}{sub_line}</a>"
    )


def _edge(route: Route, labels: dict[str, str], focus: str | None) -> str:
    edge = route.edge
    source, target, kind = edge["from"], edge["to"], str(edge["kind"])
    near = focus in (source, target)
    look = 'stroke="#59636e" stroke-width="2"' if near else 'stroke="#818b98" stroke-width="1.25"'
    dashes = ' stroke-dasharray="6 4"' if kind == "training_data" else ""
    title = f"{labels.get(source, source)} → {labels.get(target, target)}"
    title += f" ({KIND_LABELS.get(kind, kind)})"
    css = f"lineage-edge lineage-edge-{escape(kind)}" + (" lineage-edge-near" if near else "")
    return (
        f'<path class="{css}" '
        f'd="{route.d}" data-from="{escape(source)}" data-to="{escape(target)}" fill="none" '
        f'{look}{dashes} marker-end="url(#lineage-arrow)"><title>{escape(title)}</title></path>'
    )


ARROW = (
    # Sized in user units: arrowheads stay the same size on thicker edges.
    '<defs><marker id="lineage-arrow" viewBox="0 0 10 10" refX="10" refY="5" '
    'markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" orient="auto-start-reverse">'
    '<path d="M0,0 L10,5 L0,10 z" fill="#59636e"/></marker></defs>'
)


@dataclass(frozen=True)
class Drawing:
    """What the page needs: the SVG and the per-node facts for the table beside it."""

    svg: SafeString
    layout: Layout
    dom_ids: dict[str, str]
    urls: dict[str, str]
    fit: bool  # drawn to shrink into its frame; otherwise natural size, scrolling


def draw(
    graph: dict[str, Any],
    *,
    focus: str | None,
    urls: dict[str, str],
    stages: dict[str, list[str]] | None = None,
    title: str = "Lineage",
    description: str = "",
) -> Drawing:
    """Lay out and draw `graph`. `urls`: version node id → its page (datasets link to their
    table row, `#lineage-row-<i>`)."""
    stages = stages or {}
    placed = layout(graph, stages=stages, focus=focus)
    dom_ids = {node_id: f"lineage-n{i}" for i, node_id in enumerate(placed.boxes)}
    links = {
        node_id: urls.get(node_id, "#") if box.node.get("type") != "dataset" else ""
        for node_id, box in placed.boxes.items()
    }
    labels = {node_id: node_label(box.node) for node_id, box in placed.boxes.items()}
    nodes = [
        _dataset_node(box, dom_ids[node_id], f"lineage-row-{i}")
        if box.node.get("type") == "dataset"
        else _version_node(
            box, dom_ids[node_id], links[node_id], stages.get(node_id, ()), node_id == focus
        )
        for i, (node_id, box) in enumerate(placed.boxes.items())
    ]
    edges = [_edge(route, labels, focus) for route in placed.routes]
    fit = len(placed.boxes) <= SCROLL_NODES and placed.width <= FIT_MAX_WIDTH
    size = f'viewBox="0 0 {fmt(placed.width)} {fmt(placed.height)}" ' + (
        f'width="{fmt(placed.width)}" height="{fmt(placed.height)}"'
    )
    svg = (
        f'<svg class="lineage-svg {"lineage-fit" if fit else "lineage-natural"}" {size} '
        f'role="group" aria-labelledby="lineage-title lineage-desc" '
        f'data-nodes="{len(placed.boxes)}" data-edges="{len(placed.routes)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title id="lineage-title">{escape(title)}</title>'
        f'<desc id="lineage-desc">{escape(description)}</desc>{ARROW}'
        f'<g class="lineage-edges" aria-hidden="true">{"".join(edges)}</g>'
        f'<g class="lineage-nodes">{"".join(nodes)}</g></svg>'
    )
    # Safe: every data value above went through `escape` (tests/registry/test_lineage_svg.py).
    return Drawing(mark_safe(svg), placed, dom_ids, links, fit)  # noqa: S308


# --- The page's view of it ------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRow:
    """One row of the table beside the picture."""

    anchor: str
    column: int
    kind: str  # "version" or "dataset"
    label: str
    url: str
    status: str = ""
    stages: tuple[str, ...] = ()
    sha256: str = ""
    focus: bool = False


@dataclass(frozen=True)
class EdgeRow:
    source: NodeRow
    target: NodeRow
    kind: str


@dataclass(frozen=True)
class LineageView:
    """Everything `registry/_lineage_graph.html` shows."""

    svg: SafeString
    rows: list[NodeRow]
    edge_rows: list[EdgeRow]
    version_count: int
    dataset_count: int
    truncated: bool
    scroll: bool

    @property
    def edge_count(self) -> int:
        return len(self.edge_rows)

    @property
    def caption(self) -> str:
        return counts_caption(self.version_count, self.dataset_count)


def counts_caption(versions: int, datasets: int) -> str:
    """ "12 versions, 3 datasets": what is drawn, so nothing hidden is counted."""
    return (
        f"{versions} version{'' if versions == 1 else 's'}, "
        f"{datasets} dataset{'' if datasets == 1 else 's'}"
    )


def _rows(drawing: Drawing, stages: dict[str, list[str]], focus: str | None) -> list[NodeRow]:
    rows = []
    for i, (node_id, box) in enumerate(drawing.layout.boxes.items()):
        node, is_data = box.node, box.node.get("type") == "dataset"
        rows.append(
            NodeRow(
                anchor=f"lineage-row-{i}",
                column=box.layer + 1,
                kind="dataset" if is_data else "version",
                label=node_label(node),
                url=f"#lineage-row-{i}" if is_data else drawing.urls[node_id],
                status="" if is_data else str(node["status"]),
                stages=tuple(stages.get(node_id, ())),
                sha256=str(node.get("sha256") or "") if is_data else "",
                focus=node_id == focus,
            )
        )
    return rows


def build(
    graph: dict[str, Any],
    *,
    focus: str | None,
    stages: dict[str, list[str]] | None = None,
    title: str = "Lineage",
) -> LineageView:
    """The drawing and its table for `graph` (pure: links come from `reverse`)."""
    stages = stages or {}
    versions = sum(node.get("type") != "dataset" for node in graph["nodes"])
    datasets = len(graph["nodes"]) - versions
    urls = {
        node["id"]: reverse("registry:version-detail", args=[node["model"], node["version"]])
        for node in graph["nodes"]
        if node.get("type") != "dataset"
    }
    description = (
        f"{counts_caption(versions, datasets)}; ancestors on the left, descendants on the right."
    )
    drawing = draw(
        graph, focus=focus, urls=urls, stages=stages, title=title, description=description
    )
    rows = _rows(drawing, stages, focus)
    by_id = dict(zip(drawing.layout.boxes, rows, strict=True))
    place = {node_id: i for i, node_id in enumerate(by_id)}  # reading order of the rows
    routes = sorted(
        drawing.layout.routes, key=lambda r: (place[r.edge["from"]], place[r.edge["to"]])
    )
    edge_rows = [
        EdgeRow(by_id[r.edge["from"]], by_id[r.edge["to"]], KIND_LABELS.get(r.edge["kind"], ""))
        for r in routes
    ]
    truncated = bool(graph.get("truncated"))
    return LineageView(drawing.svg, rows, edge_rows, versions, datasets, truncated, not drawing.fit)


def version_node_id(model_name: str, number: int) -> str:
    return f"version:{model_name}/{number}"


def stages_held(nodes: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """Version node id → the stages it holds now, in stage order (one query)."""
    from apps.approvals.models import Stage  # approvals builds on the registry, not back

    wanted = {node["id"] for node in nodes if node.get("type") != "dataset"}
    names = {node_id.removeprefix("version:").rpartition("/")[0] for node_id in wanted}
    held: dict[str, list[str]] = {}
    if not names:
        return held
    rows = (
        Stage.objects.filter(model__name__in=names, current_version__isnull=False)
        .order_by("position", "name")
        .values_list("model__name", "current_version__number", "name")
    )
    for model_name, number, stage in rows:
        node_id = version_node_id(model_name, number)
        if node_id in wanted:
            held.setdefault(node_id, []).append(stage)
    return held


def lineage_view(user: Any, version: Any) -> LineageView:
    """The version page's graph: what `user` may see of its ancestors and descendants."""
    from apps.registry import selectors

    graph = selectors.lineage_graph(user, version.model, version)
    focus = version_node_id(version.model.name, version.number)
    return build(
        graph,
        focus=focus,
        stages=stages_held(graph["nodes"]),
        title=f"Lineage of {version.model.name} v{version.number}",
    )
