"""Model cards: Markdown rendered through an allowlist sanitiser, their sections and diffs.

Rendering is python-markdown (tables, fenced code, sane lists) followed by nh3 with an explicit
allowlist (SECURITY AR-09): no scripts, styles, frames, forms, SVG/MathML or event handlers;
links only to http(s), mailto, relative paths and fragments, always with
``rel="nofollow noopener noreferrer"``; images only from relative paths, so a card cannot make
a reader's browser fetch from another host (tracking pixels, credential prompts).
"""

import difflib
import re
from html.parser import HTMLParser

import markdown as markdown_lib
import nh3
from markdown.extensions.tables import TableExtension

_TAGS = frozenset(
    {"a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt"}
    | {"em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p"}
    | {"pre", "s", "samp", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td"}
    | {"tfoot", "th", "thead", "tr", "ul"}
)
# Dropped together with their content: text inside these is never meant to be read.
_DROPPED_WITH_CONTENT = frozenset(
    {"script", "style", "iframe", "object", "embed", "svg", "math", "template", "noscript"}
    | {"textarea", "title", "select"}
)
_ATTRIBUTES = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "code": {"class"},
    "img": {"src", "alt", "title", "width", "height"},
    "ol": {"start"},
}
_ALIGN = {"align": {"left", "center", "right"}}
_CODE_CLASS = re.compile(r"language-[A-Za-z0-9_+#.-]{1,32}")
# Browsers drop tabs and newlines inside URLs and treat `\` as `/`, so `/\evil.example` and
# `/<TAB>/evil.example` are protocol-relative too: normalise the same way before deciding.
_URL_NOISE = re.compile(r"[\t\n\r]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def _is_remote(url: str) -> bool:
    cleaned = _URL_NOISE.sub("", url).strip("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c ")
    cleaned = cleaned.replace("\\", "/")
    return cleaned.startswith("//") or bool(_SCHEME.match(cleaned))


def _filter_attribute(tag: str, name: str, value: str) -> str | None:
    if tag == "img" and name == "src" and _is_remote(value):
        return None
    if tag == "code" and name == "class":
        return value if _CODE_CLASS.fullmatch(value) else None
    return value


_CLEANER = nh3.Cleaner(
    tags=set(_TAGS),
    clean_content_tags=set(_DROPPED_WITH_CONTENT),
    attributes={tag: set(names) for tag, names in _ATTRIBUTES.items()},
    tag_attribute_values={"th": _ALIGN, "td": _ALIGN},
    attribute_filter=_filter_attribute,
    url_schemes={"http", "https", "mailto"},
    link_rel="nofollow noopener noreferrer",
    strip_comments=True,
)


def render_model_card(text: str) -> str:
    """Render a Markdown model card to sanitised HTML, safe to insert into a page."""
    html = markdown_lib.markdown(
        text,
        # align="…" rather than style="text-align…": no style attribute is ever allowed.
        extensions=[TableExtension(use_align_attribute=True), "fenced_code", "sane_lists"],
        output_format="html",
    )
    return _CLEANER.clean(html)


class _HeadingCollector(HTMLParser):
    """Collects the text of h1-h6 elements, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[str] = []
        self._parts: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if re.fullmatch(r"h[1-6]", tag):
            self._parts = []

    def handle_endtag(self, tag: str) -> None:
        if re.fullmatch(r"h[1-6]", tag) and self._parts is not None:
            self.headings.append("".join(self._parts))
            self._parts = None

    def handle_data(self, data: str) -> None:
        if self._parts is not None:
            self._parts.append(data)


def card_sections(text: str) -> list[str]:
    """The card's headings (ATX and setext) in order, as plain text with markup removed.

    Headings are read from the rendered card, so they are exactly what a reader sees: a `#`
    line inside a code fence is not a heading, and `## **Intended** use ##` is
    "Intended use". Whitespace is collapsed and a trailing colon dropped; empty headings are
    skipped. Compare sections with `section_key`.
    """
    collector = _HeadingCollector()
    collector.feed(render_model_card(text))
    collector.close()
    headings = (" ".join(heading.split()).rstrip(":").rstrip() for heading in collector.headings)
    return [heading for heading in headings if heading]


def section_key(heading: str) -> str:
    """A comparison key for a section title: case-, space- and punctuation-insensitive."""
    words = re.findall(r"\w+", heading.casefold())
    return " ".join(words)


def card_word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """A word-level diff of two texts as (op, text) pairs, op one of equal/insert/delete.

    Whitespace runs are tokens too, so joining the equal and delete parts gives back `old`
    and joining the equal and insert parts gives back `new`.
    """
    before, after = _words(old), _words(new)
    # autojunk off: on long texts it would treat frequent tokens (spaces) as noise.
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    chunks: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op in ("equal", "delete", "replace"):
            _append(chunks, "equal" if op == "equal" else "delete", "".join(before[i1:i2]))
        if op in ("insert", "replace"):
            _append(chunks, "insert", "".join(after[j1:j2]))
    return chunks


def _words(text: str) -> list[str]:
    return re.findall(r"\s+|\S+", text)


def _append(chunks: list[tuple[str, str]], op: str, text: str) -> None:
    if not text:
        return
    if chunks and chunks[-1][0] == op:
        chunks[-1] = (op, chunks[-1][1] + text)
    else:
        chunks.append((op, text))
