"""Model cards render through an allowlist sanitiser (SECURITY AR-09)."""

import itertools
import random
import re

import pytest

from apps.registry.markdown import card_sections, card_word_diff, render_model_card, section_key

HOSTILE = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil/x.js></SCRIPT>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](java&#x09;script:alert(1))",
    "[click]( javascript:alert(1))",
    "<a href='javascript:alert(1)'>x</a>",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[click](vbscript:msgbox(1))",
    '<img src="x.png" onerror="alert(1)">',
    "<p onmouseover=alert(1)>hover</p>",
    '<a href="https://ok.example" onclick="alert(1)">x</a>',
    "<iframe src=https://evil.example></iframe>",
    "<object data=evil.swf></object><embed src=evil.swf>",
    "<form action=https://evil.example><input name=password></form>",
    "<svg onload=alert(1)><circle r=1 /></svg>",
    "<svg><script>alert(1)</script></svg>",
    "<math><mi xlink:href=javascript:alert(1)>x</mi></math>",
    '<div style="background:url(https://evil.example/x)">x</div>',
    "<style>body{display:none}</style>",
    "<meta http-equiv=refresh content='0;url=https://evil.example'>",
    "<base href=https://evil.example/>",
    "<link rel=stylesheet href=https://evil.example/x.css>",
    '<a href="https://ok.example" target="_blank" rel="opener">x</a>',
    "<details open ontoggle=alert(1)><summary>s</summary></details>",
    "<!-- <script>alert(1)</script> -->",
    "```\n</code></pre><script>alert(1)</script>\n```",
]

FORBIDDEN = re.compile(
    r"<script|<iframe|<object|<embed|<form|<input|<svg|<math|<style|<meta|<base|<link"
    r"|\son\w+=|javascript:|vbscript:|data:|style=|target=|opener\"",
    re.IGNORECASE,
)


@pytest.mark.parametrize("card", HOSTILE)
def test_hostile_markup_is_neutralised(card: str) -> None:
    html = render_model_card(card)
    assert not FORBIDDEN.search(html), html


def test_script_content_is_dropped_not_shown() -> None:
    assert "alert" not in render_model_card("before <script>alert(1)</script> after")


def test_safe_links_are_kept_with_rel() -> None:
    html = render_model_card(
        "[a](https://example.com/x) [b](mailto:ml@example.com) [c](#usage) [d](docs/eval.md)"
    )
    for href in ("https://example.com/x", "mailto:ml@example.com", "#usage", "docs/eval.md"):
        assert f'href="{href}"' in html
    assert html.count('rel="nofollow noopener noreferrer"') == 4


@pytest.mark.parametrize(
    "card",
    [
        "![x](https://evil.example/x.png)",
        "![x](http://evil.example/x.png)",
        "![x](//evil.example/x.png)",
        '<img src="https://evil.example/pixel.gif">',
        '<img src="//evil.example/pixel.gif">',
        '<img src="/\\evil.example/pixel.gif">',
        '<img src="\\\\evil.example/pixel.gif">',
        '<img src="/&#9;/evil.example/pixel.gif">',
        '<img src=" //evil.example/pixel.gif">',
        '<img src="HTTPS://evil.example/pixel.gif">',
        '<img src="data:image/png;base64,iVBORw0KGgo=">',
    ],
)
def test_remote_images_lose_their_source(card: str) -> None:
    html = render_model_card(card)
    assert "evil" not in html and "data:" not in html
    assert "src=" not in html


def test_relative_images_are_kept() -> None:
    html = render_model_card("![architecture](images/arch.png)")
    assert 'src="images/arch.png"' in html and 'alt="architecture"' in html


def test_tables_and_code_fences_are_preserved() -> None:
    card = "| metric | value |\n|:--|--:|\n| acc | 0.97 |\n\n```python\nx = 1 < 2\n```\n"
    html = render_model_card(card)
    assert "<table>" in html and '<th align="left">metric</th>' in html
    assert '<td align="right">0.97</td>' in html
    assert '<pre><code class="language-python">x = 1 &lt; 2' in html


def test_code_classes_are_limited_to_languages() -> None:
    html = render_model_card('<code class="alert alert-danger">x</code>')
    assert "class=" not in html


def test_card_sections_lists_headings_in_order() -> None:
    card = (
        "# Model card\n\nIntro.\n\n"
        "Intended use\n============\n\nText.\n\n"
        "```\n# not a heading\n```\n\n"
        "## **Ethical** considerations ##\n\n"
        "###   Limitations:  \n\n"
        "Training data\n-------------\n\n"
        "#### Q&amp;A\n\n"
        "#\n\n"
        "    # indented code, not a heading\n"
    )
    assert card_sections(card) == [
        "Model card",
        "Intended use",
        "Ethical considerations",
        "Limitations",
        "Training data",
        "Q&A",
    ]


def test_card_sections_of_an_empty_card() -> None:
    assert card_sections("") == []
    assert card_sections("just text") == []


def test_section_key_ignores_case_spacing_and_punctuation() -> None:
    assert section_key("Intended  Use:") == section_key("intended use") == "intended use"


def test_word_diff() -> None:
    old = "The model is accurate on iris."
    new = "The model is very accurate on the iris dataset."
    assert card_word_diff(old, new) == [
        ("equal", "The model is "),
        ("insert", "very "),
        ("equal", "accurate on "),
        ("delete", "iris."),
        ("insert", "the iris dataset."),
    ]


def test_word_diff_of_identical_and_empty_texts() -> None:
    assert card_word_diff("same text", "same text") == [("equal", "same text")]
    assert card_word_diff("", "") == []
    assert card_word_diff("", "new") == [("insert", "new")]
    assert card_word_diff("old", "") == [("delete", "old")]


def test_word_diff_reconstructs_both_sides() -> None:
    rng = random.Random(42)
    vocabulary = ["alpha", "beta", "gamma", "the", "model", "\n", "  ", "é"]
    for _ in range(300):
        old = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 40)))
        new = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 40)))
        diff = card_word_diff(old, new)
        assert "".join(text for op, text in diff if op != "insert") == old
        assert "".join(text for op, text in diff if op != "delete") == new
        assert all(op in {"equal", "insert", "delete"} and text for op, text in diff)
        assert all(a[0] != b[0] for a, b in itertools.pairwise(diff))
