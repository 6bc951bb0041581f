"""A small accessibility checker that runs inside the page (`page.evaluate`).

Not a replacement for axe or a screen reader: it checks the things Regent's pages are made
of, from the rendered DOM and `getComputedStyle`, and names each offending element.

Rules (each violation is `{"rule", "element", "detail"}`):

- `lang`: `<html>` has a `lang`.
- `control-name`: every visible form control (input, select, textarea) has an accessible
  name: `<label for>`, a wrapping `<label>`, `aria-label`, `aria-labelledby` or `title`.
- `link-name`, `button-name`: links (HTML and SVG `<a>`) and buttons have a name: their text
  (visually hidden text counts, `aria-hidden` text does not), `aria-label`,
  `aria-labelledby`, an image's `alt`, or `title`.
- `image-name`: `<img>` has an `alt` (empty means decorative); an inline `<svg>` that is not
  `aria-hidden` has a name (`aria-label`, `aria-labelledby` or a `<title>` child) and a role
  (`img`, `group`, `figure`, `graphics-document`).
- `aria-ref`: every id named by `aria-labelledby`/`aria-describedby`/`label[for]` exists.
- `duplicate-id`: ids are unique.
- `headings`: exactly one `<h1>`; heading levels never go down by more than one
  (h2 → h4 skips).
- `region-name`: a scrollable `role=region` has a name.
- `text-contrast`: the contrast ratio of rendered text (HTML text from `color`, SVG
  `<text>` from `fill`, placeholders from `::placeholder`) against what is behind it is at
  least 4.5:1, or 3:1 for large text (24 px, or 18.66 px bold). Hidden, visually-hidden and
  disabled text is skipped. The background is the nearest opaque layer: ancestors'
  `background-color` for HTML, the topmost shape drawn beneath the text for SVG (e.g. a
  node's box). A background image makes the check "unknown" (reported, never passed).
- `graphic-contrast`: in every chart (an `<svg>` that is not `aria-hidden` and has a name),
  each visible shape is distinguishable: its stroke or its fill has at least 3:1 against
  the shape beneath it or the chart's background (WCAG 1.4.11). Decorative parts (grid
  lines, invisible hit areas, tooltip boxes, halos) are excluded by `DECORATIVE`.

`check(page)` returns the violations; `assert_accessible(page, name)` fails with a readable
list. The ratios use the WCAG 2.x relative luminance formula.
"""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import Page

# Chart parts that carry no information of their own (WCAG 1.4.11 only covers graphics
# "required to understand the content"): grid lines, invisible hit areas, the hover guide,
# and the tooltip's box (its text is checked as text, against that box).
DECORATIVE = (
    ".trend-gridline",
    ".trend-hit",
    ".trend-guide",
    ".trend-tip rect",
    "marker",
    "defs *",
)

_SCRIPT = r"""
(options) => {
  const violations = [];
  const decorative = options.decorative.join(", ");
  const report = (rule, el, detail) => violations.push({rule, element: describe(el), detail});

  // --- helpers ------------------------------------------------------------------------
  function describe(el) {
    if (!el || el.nodeType !== 1) return String(el);
    const parts = [];
    let node = el;
    for (let depth = 0; node && node.nodeType === 1 && depth < 4; depth++) {
      let part = node.tagName.toLowerCase();
      if (node.id) { parts.unshift(part + "#" + node.id); break; }
      const cls = (node.getAttribute("class") || "").trim().split(/\s+/).filter(Boolean);
      if (cls.length) part += "." + cls.slice(0, 2).join(".");
      parts.unshift(part);
      node = node.parentElement;
    }
    const text = (el.textContent || "").replace(/\s+/g, " ").trim().slice(0, 50);
    return parts.join(" > ") + (text ? ` "${text}"` : "");
  }
  const canvas = document.createElement("canvas").getContext("2d");
  const RGB = new RegExp(
    "^rgba?\\(\\s*([\\d.]+)[,\\s]+([\\d.]+)[,\\s]+([\\d.]+)(?:\\s*[,/]\\s*([\\d.]+%?))?\\s*\\)$");
  function parseColor(value) {
    if (!value || value === "none" || value === "transparent" || value.startsWith("url(")) {
      return value === "transparent" ? {r: 0, g: 0, b: 0, a: 0} : null;
    }
    let m = value.match(RGB);
    if (!m) {
      canvas.fillStyle = "#000";
      canvas.fillStyle = value;
      const normal = canvas.fillStyle;
      if (normal.startsWith("#")) {
        return {r: parseInt(normal.slice(1, 3), 16), g: parseInt(normal.slice(3, 5), 16),
                b: parseInt(normal.slice(5, 7), 16), a: 1};
      }
      m = normal.match(RGB);
      if (!m) return null;
    }
    let a = m[4] === undefined ? 1 : m[4].endsWith("%") ? parseFloat(m[4]) / 100 : parseFloat(m[4]);
    return {r: +m[1], g: +m[2], b: +m[3], a};
  }
  function over(top, bottom) {  // `top` composited over an opaque `bottom`
    const a = top.a;
    return {r: top.r * a + bottom.r * (1 - a), g: top.g * a + bottom.g * (1 - a),
            b: top.b * a + bottom.b * (1 - a), a: 1};
  }
  function luminance(c) {
    const ch = [c.r, c.g, c.b].map((v) => {
      v = v / 255;
      return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * ch[0] + 0.7152 * ch[1] + 0.0722 * ch[2];
  }
  function ratio(a, b) {
    const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
    return (hi + 0.05) / (lo + 0.05);
  }
  const hex = (c) => "#" + [c.r, c.g, c.b]
    .map((v) => Math.round(v).toString(16).padStart(2, "0")).join("");
  function opacityOf(el) {
    let alpha = 1;
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      alpha *= parseFloat(getComputedStyle(node).opacity || "1");
    }
    return alpha;
  }
  function ariaHidden(el) {
    return !!el.closest("[aria-hidden='true'], [hidden]");
  }
  function rendered(el) {
    if (!el.getClientRects().length) return false;
    const style = getComputedStyle(el);
    if (style.visibility !== "visible" || style.display === "none") return false;
    // content of a closed <details> is not rendered (but its <summary> is)
    const details = el.closest("details:not([open])");
    if (details && !el.closest("summary")) return false;
    return true;
  }
  function visuallyHidden(el) {
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const rect = node.getBoundingClientRect();
      const style = getComputedStyle(node);
      if (style.position === "absolute" && rect.width <= 1 && rect.height <= 1) return true;
      const clip = style.clip || "auto";
      if (clip !== "auto" && /rect\(0(px)?,? 0(px)?,? 0(px)?,? 0(px)?\)/.test(clip)) return true;
    }
    return false;
  }
  // The opaque colour behind an HTML element: its own and its ancestors' backgrounds.
  function htmlBackground(el) {
    const layers = [];
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const style = getComputedStyle(node);
      if (style.backgroundImage && style.backgroundImage !== "none") return null;
      const bg = parseColor(style.backgroundColor);
      if (bg && bg.a > 0) {
        layers.push(bg);
        if (bg.a >= 1) break;
      }
    }
    let color = {r: 255, g: 255, b: 255, a: 1};  // the canvas
    for (let i = layers.length - 1; i >= 0; i--) color = over(layers[i], color);
    return color;
  }
  const SHAPES = "rect, path, circle, ellipse, polygon, polyline";
  function shapeFill(shape) {
    const style = getComputedStyle(shape);
    if (style.visibility !== "visible" || style.display === "none") return null;
    const fill = parseColor(style.fill);
    if (!fill) return null;
    const alpha = fill.a * parseFloat(style.fillOpacity || "1") * opacityOf(shape);
    return alpha > 0.01 ? {...fill, a: alpha} : null;
  }
  // A point of `el` (in its user space): the centre of its box, or with `onOutline` the
  // start of its outline, where a stroke is drawn.
  function samplePoint(el, onOutline) {
    if (onOutline && typeof el.getPointAtLength === "function") {
      try {
        const p = el.getPointAtLength(0);
        return new DOMPoint(p.x, p.y);
      } catch (error) { /* fall through to the centre */ }
    }
    const box = el.getBBox();
    return new DOMPoint(box.x + box.width / 2, box.y + box.height / 2);
  }
  // The colour behind a point of an element inside an SVG: every filled shape drawn before
  // it whose fill covers that point, over the SVG's own HTML background.
  function svgBackground(el, point) {
    const svg = el.ownerSVGElement || el.closest("svg");
    let color = htmlBackground(svg);
    if (!color) return null;
    const onScreen = point.matrixTransform(el.getScreenCTM());
    for (const shape of svg.querySelectorAll(SHAPES)) {
      if (shape === el || !(el.compareDocumentPosition(shape) & Node.DOCUMENT_POSITION_PRECEDING)) {
        break;  // document order: only shapes drawn before `el` are beneath it
      }
      if (shape.contains(el) || shape.closest("defs, marker, clipPath, mask")) continue;
      if (!rendered(shape)) continue;
      const fill = shapeFill(shape);
      if (!fill) continue;
      const local = onScreen.matrixTransform(shape.getScreenCTM().inverse());
      if (shape.isPointInFill(local)) color = over(fill, color);
    }
    return color;
  }
  function textOf(node) {  // accessible text content: skips aria-hidden and <title>/<desc>
    let text = "";
    for (const child of node.childNodes) {
      if (child.nodeType === 3) text += child.textContent;
      else if (child.nodeType === 1) {
        const tag = child.tagName.toLowerCase();
        if (child.getAttribute("aria-hidden") === "true" || tag === "title" || tag === "desc" ||
            tag === "script" || tag === "style") continue;
        if (tag === "img") text += child.getAttribute("alt") || "";
        else if (child.getAttribute("aria-label")) text += " " + child.getAttribute("aria-label");
        else text += " " + textOf(child);
      }
    }
    return text;
  }
  function labelledBy(el) {
    const ids = (el.getAttribute("aria-labelledby") || "").split(/\s+/).filter(Boolean);
    return ids.map((id) => {
      const target = document.getElementById(id);
      return target ? textOf(target) : "";
    }).join(" ").trim();
  }
  // Names that never come from content (regions, SVG pictures): attributes, an SVG <title>.
  function givenName(el) {
    const name = labelledBy(el) || (el.getAttribute("aria-label") || "").trim();
    if (name) return name;
    const svgTitle = el instanceof SVGElement ? el.querySelector(":scope > title") : null;
    if (svgTitle && svgTitle.textContent.trim()) return svgTitle.textContent.trim();
    return (el.getAttribute("title") || "").trim();
  }
  function accessibleName(el) {
    const byRef = labelledBy(el);
    if (byRef) return byRef;
    const label = (el.getAttribute("aria-label") || "").trim();
    if (label) return label;
    const tag = el.tagName.toLowerCase();
    if (["input", "select", "textarea"].includes(tag)) {
      const type = (el.getAttribute("type") || "").toLowerCase();
      if (["submit", "button", "reset"].includes(type)) return (el.value || "").trim();
      if (type === "image") return (el.getAttribute("alt") || "").trim();
      const parts = [];
      if (el.id) {
        const labels = document.querySelectorAll(`label[for="${CSS.escape(el.id)}"]`);
        for (const l of labels) parts.push(textOf(l));
      }
      const wrapping = el.closest("label");
      if (wrapping) parts.push(textOf(wrapping));
      const text = parts.join(" ").replace(/\s+/g, " ").trim();
      if (text) return text;
    } else {
      const text = textOf(el).replace(/\s+/g, " ").trim();
      if (text) return text;
      const svgTitle = el.querySelector(":scope > title");
      if (svgTitle && svgTitle.textContent.trim()) return svgTitle.textContent.trim();
    }
    return (el.getAttribute("title") || "").trim();
  }

  // --- structure ----------------------------------------------------------------------
  if (!document.documentElement.getAttribute("lang")) {
    report("lang", document.documentElement, "<html> has no lang");
  }

  const seen = new Map();
  for (const el of document.querySelectorAll("[id]")) {
    if (seen.has(el.id)) report("duplicate-id", el, `id "${el.id}" is used more than once`);
    seen.set(el.id, el);
  }
  for (const el of document.querySelectorAll("[aria-labelledby], [aria-describedby], label[for]")) {
    const refs = ["aria-labelledby", "aria-describedby", "for"]
      .map((name) => el.getAttribute(name)).filter(Boolean).join(" ").split(/\s+/).filter(Boolean);
    for (const id of refs) {
      if (!document.getElementById(id)) report("aria-ref", el, `refers to missing id "${id}"`);
    }
  }

  for (const el of document.querySelectorAll("input, select, textarea")) {
    const type = (el.getAttribute("type") || "").toLowerCase();
    if (type === "hidden" || ariaHidden(el)) continue;
    if (!accessibleName(el)) {
      report("control-name", el, `<${el.tagName.toLowerCase()} name="${el.name}"> has no name`);
    }
  }
  for (const el of document.querySelectorAll("a[href], button, [role=button], [role=link]")) {
    if (ariaHidden(el)) continue;
    const isButton = el.tagName.toLowerCase() === "button" || el.getAttribute("role") === "button";
    const rule = isButton ? "button-name" : "link-name";
    if (!accessibleName(el)) report(rule, el, "no accessible name (text, aria-label, title)");
  }
  for (const el of document.querySelectorAll("img")) {
    if (!el.hasAttribute("alt") && !ariaHidden(el)) report("image-name", el, "<img> without alt");
  }
  const charts = [];
  for (const svg of document.querySelectorAll("svg")) {
    if (ariaHidden(svg)) continue;
    if (svg.parentElement && svg.parentElement.closest("svg")) continue;  // nested: part of a chart
    const name = givenName(svg);
    const role = svg.getAttribute("role") || "";
    if (!name) report("image-name", svg, "<svg> (not aria-hidden) has no title or label");
    else if (!["img", "group", "figure", "graphics-document", "graphics-object"].includes(role)) {
      report("image-name", svg, `<svg> named "${name}" has role "${role}": use role=img or group`);
    } else charts.push(svg);
  }

  const headings = [...document.querySelectorAll("h1, h2, h3, h4, h5, h6, [role=heading]")]
    .filter((h) => !ariaHidden(h) && getComputedStyle(h).display !== "none");
  const h1s = headings.filter((h) => h.tagName === "H1" || h.getAttribute("aria-level") === "1");
  if (h1s.length !== 1) {
    report("headings", h1s[0] || document.body, `${h1s.length} h1 on the page (want exactly one)`);
  }
  let previous = 0;
  for (const h of headings) {
    const level = h.getAttribute("role") === "heading"
      ? parseInt(h.getAttribute("aria-level") || "2", 10)
      : parseInt(h.tagName[1], 10);
    if (!textOf(h).trim()) report("headings", h, "empty heading");
    if (previous && level > previous + 1) {
      report("headings", h, `h${level} follows h${previous} (skips a level)`);
    }
    previous = level;
  }
  for (const el of document.querySelectorAll("[role=region]")) {
    if (!givenName(el)) report("region-name", el, "role=region without aria-label/aria-labelledby");
  }

  // --- text contrast ------------------------------------------------------------------
  const textElements = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (!node.textContent.trim()) continue;
    const el = node.parentElement;
    if (!el || el.closest("script, style, noscript, title, desc, option, template")) continue;
    textElements.add(el);
  }
  let checkedText = 0;
  for (const el of textElements) {
    if (!rendered(el) || visuallyHidden(el)) continue;
    if (el.closest(":disabled")) continue;
    const inSvg = el instanceof SVGElement;
    const style = getComputedStyle(el);
    const paint = inSvg ? style.fill : style.color;
    let fg = parseColor(paint);
    if (!fg) {
      report("text-contrast", el, `text colour "${paint}" not understood`);
      continue;
    }
    const bg = inSvg ? svgBackground(el, samplePoint(el, false)) : htmlBackground(el);
    if (!bg) { report("text-contrast", el, "background is an image: contrast unknown"); continue; }
    fg = {...fg, a: fg.a * (inSvg ? parseFloat(style.fillOpacity || "1") : 1) * opacityOf(el)};
    const shown = over(fg, bg);
    const size = parseFloat(style.fontSize);
    const bold = parseInt(style.fontWeight, 10) >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    const need = large ? 3 : 4.5;
    const value = ratio(shown, bg);
    checkedText++;
    if (value < need - 0.005) {
      const font = `${size}px${bold ? " bold" : ""}`;
      const detail = `${value.toFixed(2)}:1 (${hex(shown)} on ${hex(bg)}, ${font})`;
      report("text-contrast", el, `${detail}, needs ${need}:1`);
    }
  }
  for (const el of document.querySelectorAll("input[placeholder], textarea[placeholder]")) {
    if (!rendered(el) || el.value) continue;
    const placeholder = parseColor(getComputedStyle(el, "::placeholder").color);
    const bg = htmlBackground(el);
    if (!placeholder || !bg) continue;
    const shown = over(placeholder, bg);
    const value = ratio(shown, bg);
    if (value < 4.5 - 0.005) {
      const detail = `placeholder ${value.toFixed(2)}:1 (${hex(shown)} on ${hex(bg)})`;
      report("text-contrast", el, `${detail}, needs 4.5:1`);
    }
  }

  // --- chart graphics contrast --------------------------------------------------------
  let checkedGraphics = 0;
  for (const svg of charts) {
    for (const shape of svg.querySelectorAll(SHAPES)) {
      if (decorative && shape.matches(decorative)) continue;
      if (shape.closest("defs, marker, clipPath, mask, title")) continue;
      if (!rendered(shape)) continue;
      const style = getComputedStyle(shape);
      const alpha = opacityOf(shape);
      const paints = [];
      const stroke = parseColor(style.stroke);
      if (stroke && parseFloat(style.strokeWidth) > 0) {
        const color = {...stroke, a: stroke.a * parseFloat(style.strokeOpacity || "1") * alpha};
        paints.push({kind: "stroke", color, bg: svgBackground(shape, samplePoint(shape, true))});
      }
      const fill = shapeFill(shape);
      if (fill) {
        const bg = svgBackground(shape, samplePoint(shape, false));
        paints.push({kind: "fill", color: fill, bg});
      }
      const judged = paints.filter((p) => p.bg && p.color.a > 0.01);
      if (!judged.length) continue;
      checkedGraphics++;
      const results = judged.map((p) => ({...p, shown: over(p.color, p.bg)}))
        .map((p) => ({...p, value: ratio(p.shown, p.bg)}));
      if (!results.some((p) => p.value >= 3 - 0.005)) {
        const detail = results
          .map((p) => `${p.kind} ${hex(p.shown)} on ${hex(p.bg)} ${p.value.toFixed(2)}:1`)
          .join(", ");
        report("graphic-contrast", shape, `${detail}; needs 3:1`);
      }
    }
  }
  return {violations, checkedText, checkedGraphics, charts: charts.length};
}
"""


def run(page: Page, *, decorative: tuple[str, ...] = DECORATIVE) -> dict[str, Any]:
    """Run the checker; returns {"violations", "checkedText", "checkedGraphics", "charts"}."""
    return page.evaluate(_SCRIPT, {"decorative": list(decorative)})


def check(page: Page, *, decorative: tuple[str, ...] = DECORATIVE) -> list[dict[str, str]]:
    """The violations on the page as it is rendered now."""
    return run(page, decorative=decorative)["violations"]


def describe(violations: list[dict[str, str]]) -> str:
    return "\n".join(f"  [{v['rule']}] {v['element']}: {v['detail']}" for v in violations)


def assert_accessible(page: Page, name: str, *, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """Fail, listing every violation, unless the page has none (rules in `ignore` aside)."""
    result = run(page)
    violations = [v for v in result["violations"] if v["rule"] not in ignore]
    assert not violations, f"{name}: {len(violations)} accessibility violations\n" + describe(
        violations
    )
    assert result["checkedText"] > 0, f"{name}: the contrast check found no text"
    return result


def _rgb(color: str) -> tuple[float, float, float]:
    numbers = re.findall(r"[\d.]+", color)
    if color.startswith("#") and len(color) == 7:
        return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    if len(numbers) < 3:
        raise ValueError(f"not an rgb() colour: {color!r}")
    return float(numbers[0]), float(numbers[1]), float(numbers[2])


def _luminance(color: str) -> float:
    channels = [value / 255 for value in _rgb(color)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast_ratio(first: str, second: str) -> float:
    """The WCAG contrast ratio of two opaque colours ("rgb(9, 105, 218)" or "#0969da")."""
    high, low = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)
