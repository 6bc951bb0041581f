"""Left-to-right layout of a lineage graph: pure Python, no database, no markup.

Sugiyama-style. Each node's column is its longest-path depth from the roots, so every
ancestor sits left of the version and every descendant right of it; sources (datasets,
first versions) are then pulled right to the column just left of their first consumer. An
edge spanning several columns gets a virtual waypoint in each column it crosses (up to
`MAX_VIRTUAL` in all), and a few barycenter sweeps order each column to reduce crossings
(the ordering with the fewest crossings, counted exactly, wins). Vertical positions then
follow the neighbours' average, kept in order and apart by an isotonic least-squares fit
(pool adjacent violators), so edges run as straight as the order allows. Edges are cubic
Béziers leaving and entering boxes horizontally, spread over the box's side.

Every step is linear or n log n in the graph's size: 500 nodes take a few tens of
milliseconds (`bench/lineage.py`). `apps.registry.lineage_svg` draws the result.
"""

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

NODE_W = 176
VERSION_H = 46  # name and status; a line more for stages, another for "(this version)"
LINE_H = 16
DATASET_H = 50
COL_GAP = 64
ROW_GAP = 14
VIRTUAL_H = 2
VIRTUAL_GAP = 6
MARGIN = 12
PORT_PAD = 10
PORT_STEP = 7
SWEEPS = 4
PLACE_PASSES = 4
MAX_VIRTUAL = 4000  # waypoints for long edges; beyond this, the longest edges go straight


@dataclass
class Box:
    """A node placed: column `layer`, `order` from the top, top-left corner and size."""

    node: dict[str, Any]
    layer: int
    order: int
    x: float
    y: float
    width: float
    height: float

    @property
    def cy(self) -> float:
        return self.y + self.height / 2


@dataclass(frozen=True)
class Route:
    """An edge of the data with its drawn path (`d`, SVG path data)."""

    edge: dict[str, Any]
    d: str


@dataclass
class Layout:
    """Boxes in reading order (column by column, top to bottom) and one route per edge."""

    boxes: dict[str, Box]
    routes: list[Route]
    layer_count: int
    width: float
    height: float

    def columns(self) -> list[list[str]]:
        """Node ids per column, top to bottom."""
        columns: list[list[str]] = [[] for _ in range(self.layer_count)]
        for node_id, box in self.boxes.items():
            columns[box.layer].append(node_id)
        return columns


@dataclass
class _Grid:
    """Real nodes (0..n-1) and virtual waypoints (n..) with their columns and neighbours."""

    layer: list[int]
    height: list[float]
    real: int
    up: list[list[int]] = field(default_factory=list)
    down: list[list[int]] = field(default_factory=list)
    chains: list[list[int]] = field(default_factory=list)  # per edge: items it passes

    def add_virtual(self, layer: int) -> int:
        self.layer.append(layer)
        self.height.append(VIRTUAL_H)
        self.up.append([])
        self.down.append([])
        return len(self.layer) - 1

    def link(self, chain: list[int]) -> None:
        self.chains.append(chain)
        for upper, lower in itertools.pairwise(chain):
            if self.layer[lower] == self.layer[upper] + 1:
                self.down[upper].append(lower)
                self.up[lower].append(upper)


def node_height(node: dict[str, Any], stages: Sequence[str] = (), focus: bool = False) -> float:
    if node.get("type") == "dataset":
        return DATASET_H
    return VERSION_H + LINE_H * (bool(stages) + focus)


def assign_layers(count: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Longest-path depth from the roots (Kahn's order), then sources pulled right to just
    left of their first consumer. A cycle (never made by the services) leaves its nodes
    where their other parents put them; its back edges are drawn, not laid out."""
    succ: list[list[int]] = [[] for _ in range(count)]
    indegree = [0] * count
    for upper, lower in pairs:
        succ[upper].append(lower)
        indegree[lower] += 1
    has_parent = [degree > 0 for degree in indegree]
    layer = [0] * count
    queue = deque(i for i in range(count) if indegree[i] == 0)
    while queue:
        upper = queue.popleft()
        for lower in succ[upper]:
            layer[lower] = max(layer[lower], layer[upper] + 1)
            indegree[lower] -= 1
            if indegree[lower] == 0:
                queue.append(lower)
    for source in range(count):
        if not has_parent[source] and succ[source]:
            layer[source] = max(layer[source], min(layer[lower] for lower in succ[source]) - 1)
    return layer


def _build_grid(layer: list[int], heights: list[float], pairs: list[tuple[int, int]]) -> _Grid:
    grid = _Grid(list(layer), list(heights), len(layer))
    grid.up = [[] for _ in layer]
    grid.down = [[] for _ in layer]
    spans = [layer[lower] - layer[upper] for upper, lower in pairs]
    budget, waypoints = MAX_VIRTUAL, set()
    for index in sorted(range(len(pairs)), key=lambda i: spans[i]):
        if 1 < spans[index] <= budget + 1:
            waypoints.add(index)
            budget -= spans[index] - 1
    for index, (upper, lower) in enumerate(pairs):
        chain = [upper]
        if index in waypoints:
            chain += [grid.add_virtual(col) for col in range(layer[upper] + 1, layer[lower])]
        grid.link([*chain, lower])
    return grid


def _positions(rows: list[list[int]], size: int) -> list[float]:
    """Each item's place in its column as a fraction (columns of any length compare)."""
    pos = [0.0] * size
    for row in rows:
        for index, item in enumerate(row):
            pos[item] = (index + 0.5) / len(row)
    return pos


def _reorder(row: list[int], neighbours: list[list[int]], pos: list[float]) -> None:
    """Sort `row` by its items' barycenters; an item without neighbours keeps its place."""

    def key(item: int) -> float:
        near = neighbours[item]
        return sum(pos[other] for other in near) / len(near) if near else pos[item]

    row.sort(key=key)
    for index, item in enumerate(row):
        pos[item] = (index + 0.5) / len(row)


def _crossings_between(upper: list[int], lower: list[int], down: list[list[int]]) -> int:
    """Edge crossings between two adjacent columns: inversions, counted with a Fenwick tree."""
    index = {item: i for i, item in enumerate(lower)}
    pairs = sorted((i, index[below]) for i, item in enumerate(upper) for below in down[item])
    tree = [0] * (len(lower) + 1)
    crossings = 0
    for seen, (_, end) in enumerate(pairs):
        at, not_greater = end + 1, 0
        while at > 0:
            not_greater += tree[at]
            at -= at & -at
        crossings += seen - not_greater
        at = end + 1
        while at <= len(lower):
            tree[at] += 1
            at += at & -at
    return crossings


def count_crossings(rows: list[list[int]], down: list[list[int]]) -> int:
    return sum(_crossings_between(a, b, down) for a, b in itertools.pairwise(rows))


def _order(grid: _Grid, layer_count: int) -> list[list[int]]:
    """Barycenter sweeps down and up; keep the ordering with the fewest crossings."""
    rows: list[list[int]] = [[] for _ in range(layer_count)]
    for item, col in enumerate(grid.layer):
        rows[col].append(item)
    pos = _positions(rows, len(grid.layer))
    best, fewest = [list(row) for row in rows], count_crossings(rows, grid.down)
    for _ in range(SWEEPS):
        if fewest == 0:
            break
        for col in range(1, layer_count):
            _reorder(rows[col], grid.up, pos)
        for col in range(layer_count - 2, -1, -1):
            _reorder(rows[col], grid.down, pos)
        crossings = count_crossings(rows, grid.down)
        if crossings < fewest:
            best, fewest = [list(row) for row in rows], crossings
    return best


def _isotonic(targets: list[float]) -> list[float]:
    """The non-decreasing sequence closest to `targets` (least squares, pool adjacent
    violators, linear time)."""
    blocks: list[list[float]] = []  # [sum, count]
    for target in targets:
        blocks.append([target, 1])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fitted: list[float] = []
    for total, count in blocks:
        fitted += [total / count] * int(count)
    return fitted


def _separations(row: list[int], grid: _Grid) -> list[float]:
    """Offsets of each item's centre from the first one's when packed tight."""
    offsets, total = [0.0], 0.0
    for upper, lower in itertools.pairwise(row):
        both_real = upper < grid.real and lower < grid.real
        gap = ROW_GAP if both_real else VIRTUAL_GAP
        total += (grid.height[upper] + grid.height[lower]) / 2 + gap
        offsets.append(total)
    return offsets


def _place_row(row: list[int], grid: _Grid, centre: list[float], near: list[list[int]]) -> None:
    """Move each item towards its neighbours' average, keeping order and spacing."""
    offsets = _separations(row, grid)
    targets = []
    for item, offset in zip(row, offsets, strict=True):
        others = near[item]
        wanted = sum(centre[o] for o in others) / len(others) if others else centre[item]
        targets.append(wanted - offset)
    for item, fitted, offset in zip(row, _isotonic(targets), offsets, strict=True):
        centre[item] = fitted + offset


def _place(grid: _Grid, rows: list[list[int]]) -> list[float]:
    """Vertical centre of every item: packed and centred, then a few smoothing passes."""
    centre = [0.0] * len(grid.layer)
    spans = [_separations(row, grid) for row in rows]
    tallest = max((offsets[-1] for offsets in spans if offsets), default=0.0)
    for row, offsets in zip(rows, spans, strict=True):
        start = (tallest - (offsets[-1] if offsets else 0.0)) / 2
        for item, offset in zip(row, offsets, strict=True):
            centre[item] = start + offset
    for _ in range(PLACE_PASSES):
        for row in rows[1:]:
            _place_row(row, grid, centre, grid.up)
        for row in reversed(rows[:-1]):
            _place_row(row, grid, centre, grid.down)
    top = min(centre[i] - grid.height[i] / 2 for i in range(len(centre)))
    return [value - top + MARGIN for value in centre]


def column_x(layer: int) -> float:
    return MARGIN + layer * (NODE_W + COL_GAP)


def _ports(grid: _Grid, centre: list[float]) -> dict[tuple[int, int], float]:
    """Where each edge leaves (`(edge, 0)`) and enters (`(edge, 1)`) its real nodes: spread
    over the box's side in the order of the other ends, so fans do not pile into one point."""
    sides: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for index, chain in enumerate(grid.chains):
        sides.setdefault((chain[0], 0), []).append((centre[chain[1]], index))
        sides.setdefault((chain[-1], 1), []).append((centre[chain[-2]], index))
    ports: dict[tuple[int, int], float] = {}
    for (item, end), others in sides.items():
        others.sort()
        step = PORT_STEP
        if len(others) > 1:
            step = min(PORT_STEP, (grid.height[item] - 2 * PORT_PAD) / (len(others) - 1))
        for rank, (_, index) in enumerate(others):
            ports[(index, end)] = centre[item] + (rank - (len(others) - 1) / 2) * step
    return ports


def fmt(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _curve(x1: float, y1: float, x2: float, y2: float) -> str:
    """A cubic Bézier leaving and arriving horizontally (a loop back for a back edge)."""
    bend = max(abs(x2 - x1) / 2, 24.0)
    return f" C{fmt(x1 + bend)},{fmt(y1)} {fmt(x2 - bend)},{fmt(y2)} {fmt(x2)},{fmt(y2)}"


def _path(grid: _Grid, chain: list[int], centre: list[float], start: float, end: float) -> str:
    x = column_x(grid.layer[chain[0]]) + NODE_W
    y = start
    parts = [f"M{fmt(x)},{fmt(y)}"]
    for item in chain[1:-1]:  # waypoints: cross their column on a horizontal lane
        left = column_x(grid.layer[item])
        parts.append(_curve(x, y, left, centre[item]) + f" H{fmt(left + NODE_W)}")
        x, y = left + NODE_W, centre[item]
    parts.append(_curve(x, y, column_x(grid.layer[chain[-1]]), end))
    return "".join(parts)


def layout(
    graph: dict[str, Any],
    *,
    stages: dict[str, list[str]] | None = None,
    focus: str | None = None,
) -> Layout:
    """Place `graph` (`selectors.lineage_graph`'s nodes and edges); pure, no database."""
    stages = stages or {}
    nodes = list(graph["nodes"])
    index = {node["id"]: i for i, node in enumerate(nodes)}
    edges = [
        edge
        for edge in graph["edges"]
        if edge["from"] in index and edge["to"] in index and edge["from"] != edge["to"]
    ]
    pairs = [(index[edge["from"]], index[edge["to"]]) for edge in edges]
    layer = assign_layers(len(nodes), pairs)
    heights = [node_height(n, stages.get(n["id"], ()), n["id"] == focus) for n in nodes]
    grid = _build_grid(layer, heights, pairs)
    layer_count = max(layer, default=-1) + 1
    rows = _order(grid, layer_count)
    centre = _place(grid, rows) if nodes else []
    ports = _ports(grid, centre)
    boxes: dict[str, Box] = {}
    for col, row in enumerate(rows):
        real = [item for item in row if item < grid.real]
        for order, item in enumerate(real):
            top = centre[item] - heights[item] / 2
            boxes[nodes[item]["id"]] = Box(
                nodes[item], col, order, column_x(col), top, NODE_W, heights[item]
            )
    routes = [
        Route(edge, _path(grid, chain, centre, ports[(i, 0)], ports[(i, 1)]))
        for i, (edge, chain) in enumerate(zip(edges, grid.chains, strict=True))
    ]
    bottom = max((centre[i] + grid.height[i] / 2 for i in range(len(centre))), default=0.0)
    width = column_x(layer_count) - COL_GAP + MARGIN if layer_count else 2 * MARGIN
    return Layout(boxes, routes, layer_count, width, bottom + MARGIN)
