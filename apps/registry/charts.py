"""Inline SVG charts drawn on the server: no JavaScript, no CDN, no inline `style`.

Every piece of user text (metric names, URLs) goes through `format_html`, so a metric named
`<script>` is text inside the SVG. Looks come from classes styled in `static/css/insight.css`
(CSP is `style-src 'self'`, so `style=` attributes would be blocked) with presentation
attributes (`fill`, `stroke`) as fallbacks. Colour never carries meaning alone: versions that
held production are diamonds, the others circles, and a legend says so.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.utils.html import conditional_escape, format_html
from django.utils.safestring import SafeString, mark_safe

from apps.registry.compare import exact

WIDTH, HEIGHT = 720, 300
# The value axis is on the right, next to the newest versions (as on a stock chart): a
# narrow screen shows that end first.
TOP, RIGHT, BOTTOM, LEFT = 40, 64, 44, 20
PLOT_LEFT, PLOT_RIGHT = LEFT, WIDTH - RIGHT
PLOT_TOP, PLOT_BOTTOM = TOP, HEIGHT - BOTTOM
X_LABEL_WIDTH = 52  # room per x label ("v1200" at 12 px is ~34 px, plus a gap)
Y_TICKS = 5
CHAR_WIDTH = 7.2  # ~0.6 em at 12 px: to size the hover label's box without measuring
NICE_STEPS = (1, 2, 5, 10)


@dataclass(frozen=True)
class TrendPoint:
    """One version's value of one metric."""

    number: int
    value: float
    url: str = ""
    held_production: bool = False  # held the production stage at some time
    in_production: bool = False  # holds it now


@dataclass(frozen=True)
class Scale:
    """A linear map from a data domain onto a pixel range."""

    lo: float
    hi: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        if self.hi == self.lo:
            return (self.start + self.end) / 2
        return self.start + (value - self.lo) / (self.hi - self.lo) * (self.end - self.start)


# --- Ticks and numbers -----------------------------------------------------------------------


def nice_step(span: float, count: int) -> float:
    """A step of 1, 2 or 5 x 10^k giving about `count` intervals over `span`."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in NICE_STEPS:
        if raw <= factor * magnitude * (1 + 1e-9):
            return factor * magnitude
    return 10 * magnitude


def nice_ticks(lo: float, hi: float, count: int = Y_TICKS) -> list[float]:
    """Round tick values covering [lo, hi]; a flat series gets a band around its value."""
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, count)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [_tidy(index * step) for index in range(first, last + 1)]


def _tidy(value: float) -> float:
    """Drop binary noise: 3 * 0.1 is 0.30000000000000004, a tick means 0.3."""
    return float(f"{value:.12g}")


def version_ticks(first: int, last: int, max_labels: int) -> list[int]:
    """Version numbers to label on the x axis: every one, or every k-th (k = 2, 5, 10, 20…),
    at multiples of k so the labels read v20, v40, v60."""
    count = last - first + 1
    step = version_step(count, max_labels)
    if step == 1:
        return list(range(first, last + 1))
    start = math.ceil(first / step) * step
    return list(range(start, last + 1, step))


def version_step(count: int, max_labels: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50… that leaves at most `max_labels` labels."""
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            if math.ceil(count / step) <= max(max_labels, 1):
                return step
        magnitude *= 10


def tick_label(value: float, step: float) -> str:
    """An axis label with as many decimals as the step needs (0.05 → "0.95")."""
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step else 0
    if step and abs(round(step * 10**decimals) - step * 10**decimals) > 1e-6:
        decimals += 1  # a step like 0.25 needs one more digit than its magnitude
    return f"{value:,.{decimals}f}"


# --- Building blocks -------------------------------------------------------------------------


def _join(parts: Iterable[SafeString | str]) -> SafeString:
    """Concatenate markup; anything not already marked safe is escaped."""
    return mark_safe("".join(conditional_escape(part) for part in parts))  # noqa: S308


def _f(value: float) -> str:
    return f"{value:.1f}"


def diamond_path(x: float, y: float, size: float) -> str:
    return (
        f"M{_f(x)},{_f(y - size)} L{_f(x + size)},{_f(y)} "
        f"L{_f(x)},{_f(y + size)} L{_f(x - size)},{_f(y)} Z"
    )


def marker(x: float, y: float, number: int, *, production: bool, radius: float) -> SafeString:
    """A circle for a version, a diamond for one that held production.

    Diamonds keep a legible size on dense charts; the white halo that separates markers
    from the line is dropped when markers are too small for it (it would hide them).
    """
    halo = "1" if radius >= 2.5 else "0"
    if production:
        return format_html(
            '<path class="trend-marker trend-marker-production" data-marker="{}" d="{}" '
            'fill="#116329" stroke="#ffffff" stroke-width="1"/>',
            number,
            diamond_path(x, y, max(radius + 2.5, 5.5)),
        )
    return format_html(
        '<circle class="trend-marker" data-marker="{}" cx="{}" cy="{}" r="{}" fill="#0969da" '
        'stroke="#ffffff" stroke-width="{}"/>',
        number,
        _f(x),
        _f(y),
        _f(radius),
        halo,
    )


def current_ring(x: float, y: float, radius: float) -> SafeString:
    """An outline diamond around the version in production now."""
    return format_html(
        '<path class="trend-current" d="{}" fill="none" stroke="#1f2328" stroke-width="1.5"/>',
        diamond_path(x, y, max(radius + 2.5, 5.5) + 4.5),
    )


_KEY_SHAPES = {
    "version": '<circle class="trend-key" cx="{x}" cy="16" r="4" fill="#0969da"/>',
    "held production": (
        '<path class="trend-key trend-key-production" d="{diamond}" fill="#116329"/>'
    ),
    "in production now": (
        '<path class="trend-key-current" d="{ring}" fill="none" stroke="#1f2328" '
        'stroke-width="1.5"/>'
    ),
}
LEGEND_GAP = 22


def _legend_item(label: str, x: float) -> SafeString:
    shape = _KEY_SHAPES[label].format(
        x=_f(x + 6), diamond=diamond_path(x + 6, 16, 6.5), ring=diamond_path(x + 6, 16, 8)
    )
    return format_html(
        '{}<text class="trend-legend-text" x="{}" y="20" font-size="12">{}</text>',
        mark_safe(shape),  # noqa: S308 - constant markup and numbers only
        _f(x + 18),
        label,
    )


def _legend(has_production: bool, has_current: bool) -> SafeString:
    """Right-aligned, so it stays in view with the newest versions on a narrow screen."""
    labels = ["version"]
    labels += ["held production"] if has_production else []
    labels += ["in production now"] if has_current else []
    widths = [18 + len(label) * CHAR_WIDTH * 0.95 for label in labels]
    x = PLOT_RIGHT - sum(widths) - LEGEND_GAP * (len(labels) - 1)
    items = []
    for label, width in zip(labels, widths, strict=True):
        items.append(_legend_item(label, x))
        x += width + LEGEND_GAP
    return format_html('<g class="trend-legend" aria-hidden="true">{}</g>', _join(items))


def _y_axis(ticks: Sequence[float], scale: Scale) -> SafeString:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 0.0
    lines = [
        format_html(
            '<line class="trend-gridline" x1="{}" x2="{}" y1="{}" y2="{}" stroke="#d1d9e0"/>'
            '<text class="trend-tick trend-y-tick" x="{}" y="{}" text-anchor="start" '
            'font-size="12">{}</text>',
            PLOT_LEFT,
            PLOT_RIGHT,
            _f(scale(tick)),
            _f(scale(tick)),
            PLOT_RIGHT + 8,
            _f(scale(tick) + 4),
            tick_label(tick, step),
        )
        for tick in ticks
    ]
    return format_html('<g class="trend-y-axis" aria-hidden="true">{}</g>', _join(lines))


def _x_axis(labels: Sequence[int], scale: Scale) -> SafeString:
    ticks = [
        format_html(
            '<line class="trend-tickmark" x1="{}" x2="{}" y1="{}" y2="{}" stroke="#818b98"/>'
            '<text class="trend-tick trend-x-tick" x="{}" y="{}" text-anchor="middle" '
            'font-size="12">v{}</text>',
            _f(scale(number)),
            _f(scale(number)),
            PLOT_BOTTOM,
            PLOT_BOTTOM + 5,
            _f(scale(number)),
            PLOT_BOTTOM + 19,
            number,
        )
        for number in labels
    ]
    axis = format_html(
        '<line class="trend-axis" x1="{}" x2="{}" y1="{}" y2="{}" stroke="#818b98"/>'
        '<text class="trend-axis-title" x="{}" y="{}" text-anchor="middle" font-size="12">'
        "version</text>",
        PLOT_LEFT,
        PLOT_RIGHT,
        PLOT_BOTTOM,
        PLOT_BOTTOM,
        (PLOT_LEFT + PLOT_RIGHT) / 2,
        HEIGHT - 6,
    )
    return format_html('<g class="trend-x-axis" aria-hidden="true">{}{}</g>', axis, _join(ticks))


# --- Points: what is drawn, and what is hovered or focused -----------------------------------


def point_label(metric: str, point: TrendPoint) -> str:
    """ "v3 auc 0.93, held production": the accessible name and the tooltip of a point."""
    label = f"v{point.number} {metric} {exact(point.value)}"
    if point.in_production:
        return f"{label}, in production now"
    if point.held_production:
        return f"{label}, held production"
    return label


def _tip(text: str, x: float, y: float) -> SafeString:
    """The value label shown on hover or focus (CSS flips `visibility` and gives the colours:
    without CSS it stays hidden), kept inside the plot."""
    width = len(text) * CHAR_WIDTH * 0.92 + 12
    left = min(max(x - width / 2, PLOT_LEFT), PLOT_RIGHT - width)
    top = y - 34 if y - 34 >= PLOT_TOP - 30 else y + 12
    return format_html(
        '<g class="trend-tip" visibility="hidden"><rect x="{}" y="{}" width="{}" height="22" '
        'rx="3"/><text x="{}" y="{}" font-size="12">{}</text></g>',
        _f(left),
        _f(top),
        _f(width),
        _f(left + 6),
        _f(top + 15),
        text,
    )


def _tip_text(point: TrendPoint) -> str:
    text = f"v{point.number}: {exact(point.value)}"
    if point.in_production:
        return f"{text} · in production"
    if point.held_production:
        return f"{text} · held production"
    return text


def _hit_box(x: float, half: float) -> SafeString:
    return format_html(
        '<rect class="trend-hit" x="{}" y="{}" width="{}" height="{}" fill-opacity="0"/>',
        _f(x - half),
        PLOT_TOP,
        _f(2 * half),
        PLOT_BOTTOM - PLOT_TOP,
    )


def _interactive_point(metric: str, point: TrendPoint, x: float, y: float, half: float) -> str:
    label = point_label(metric, point)
    state = "current" if point.in_production else "held" if point.held_production else "no"
    return format_html(
        '<a class="trend-point" href="{}" data-version="{}" data-production="{}" '
        'aria-label="{}"><title>{}</title>{}<line class="trend-guide" x1="{}" x2="{}" '
        'y1="{}" y2="{}" visibility="hidden"/>{}</a>',
        point.url or "#",
        point.number,
        state,
        label,
        label,
        _hit_box(x, half),
        _f(x),
        _f(x),
        PLOT_TOP,
        PLOT_BOTTOM,
        _tip(_tip_text(point), x, y),
    )


def _marker_radius(spacing: float) -> float:
    """Dense charts get smaller circles so neighbouring versions stay apart."""
    return max(1.5, min(4.0, spacing * 0.35))


# --- The chart -------------------------------------------------------------------------------


def _scales(points: Sequence[TrendPoint]) -> tuple[Scale, Scale, list[float]]:
    first, last = points[0].number, points[-1].number
    pad = max(0.5, (last - first) * 0.02)
    x = Scale(first - pad, last + pad, PLOT_LEFT, PLOT_RIGHT)
    values = [point.value for point in points]
    ticks = nice_ticks(min(values), max(values))
    y = Scale(ticks[0], ticks[-1], PLOT_BOTTOM, PLOT_TOP)
    return x, y, ticks


def _description(metric: str, points: Sequence[TrendPoint]) -> str:
    low = min(points, key=lambda point: point.value)
    high = max(points, key=lambda point: point.value)
    first, last = points[0], points[-1]
    held = sum(point.held_production for point in points)
    return (
        f"{len(points)} version{'s' if len(points) != 1 else ''} with {metric}: "
        f"v{first.number} {exact(first.value)} to v{last.number} {exact(last.value)}; "
        f"lowest {exact(low.value)} (v{low.number}), highest {exact(high.value)} "
        f"(v{high.number}). {held} held production (diamonds)."
    )


def trend_svg(metric: str, points: Sequence[TrendPoint], *, chart_id: str) -> SafeString:
    """A line chart of one metric across versions, one marker per point given.

    `points` must be non-empty and sorted by version number; `chart_id` must be unique on
    the page (it prefixes the ids that label the SVG).
    """
    points = sorted(points, key=lambda point: point.number)
    x, y, ticks = _scales(points)
    spacing = (PLOT_RIGHT - PLOT_LEFT) / max(x.hi - x.lo, 1)
    radius = _marker_radius(spacing)
    max_labels = max(2, int((PLOT_RIGHT - PLOT_LEFT) // X_LABEL_WIDTH))
    labels = version_ticks(points[0].number, points[-1].number, max_labels)
    coords = [(point, x(point.number), y(point.value)) for point in points]
    line = " ".join(f"{_f(px)},{_f(py)}" for _, px, py in coords)
    markers = [
        marker(px, py, p.number, production=p.held_production, radius=radius)
        for p, px, py in coords
    ]
    rings = [current_ring(px, py, radius) for p, px, py in coords if p.in_production]
    half = max(spacing / 2, 1.0) if len(points) > 1 else 20.0
    half = min(half, 24.0)
    hits = [_interactive_point(metric, p, px, py, half) for p, px, py in coords]
    return format_html(
        '<svg class="trend-svg" viewBox="0 0 {} {}" width="{}" height="{}" role="group" '
        'aria-labelledby="{}-title {}-desc" data-points="{}" '
        'xmlns="http://www.w3.org/2000/svg">'
        '<title id="{}-title">{} across versions</title><desc id="{}-desc">{}</desc>'
        "{}{}{}"
        '<polyline class="trend-line" points="{}" fill="none" stroke="#0969da" '
        'stroke-width="2" aria-hidden="true"/>'
        '<g class="trend-markers" aria-hidden="true">{}{}</g>'
        '<g class="trend-points">{}</g></svg>',
        WIDTH,
        HEIGHT,
        WIDTH,
        HEIGHT,
        chart_id,
        chart_id,
        len(points),
        chart_id,
        metric,
        chart_id,
        _description(metric, points),
        _legend(any(p.held_production for p in points), any(p.in_production for p in points)),
        _y_axis(ticks, y),
        _x_axis(labels, x),
        line if len(points) > 1 else "",
        _join(markers),
        _join(rings),
        _join(hits),
    )
