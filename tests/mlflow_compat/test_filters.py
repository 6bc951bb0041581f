"""MLflow's search grammar: every accepted form, and everything else refused as
INVALID_PARAMETER_VALUE — never evaluated, never pasted into SQL."""

import re

import pytest

from apps.mlflow_compat.errors import INVALID_PARAMETER_VALUE, MlflowError
from apps.mlflow_compat.filters import (
    MODELS,
    VERSIONS,
    Clause,
    filter_q,
    like_to_regex,
    order_by_fields,
    parse_filter,
    tokenize,
)
from apps.registry.models import RegisteredModel
from apps.registry.services import model_create

TAG = "tag"
ATTR = "attribute"


@pytest.mark.parametrize(
    ("text", "target", "expected"),
    [
        ("name = 'fraud'", MODELS, [Clause(ATTR, "name", "=", "fraud")]),
        ('name="fraud"', MODELS, [Clause(ATTR, "name", "=", "fraud")]),
        ("name != 'a'", MODELS, [Clause(ATTR, "name", "!=", "a")]),
        ("name LIKE 'fr%'", MODELS, [Clause(ATTR, "name", "LIKE", "fr%")]),
        ("name like 'fr_ud'", MODELS, [Clause(ATTR, "name", "LIKE", "fr_ud")]),
        ("name ILIKE '%RAUD'", MODELS, [Clause(ATTR, "name", "ILIKE", "%RAUD")]),
        ("name IN ('a', \"b\")", MODELS, [Clause(ATTR, "name", "IN", ["a", "b"])]),
        ("name in ('a')", VERSIONS, [Clause(ATTR, "name", "IN", ["a"])]),
        ("attribute.name = 'a'", MODELS, [Clause(ATTR, "name", "=", "a")]),
        ("tags.team = 'risk'", MODELS, [Clause(TAG, "team", "=", "risk")]),
        ("tag.team != 'risk'", MODELS, [Clause(TAG, "team", "!=", "risk")]),
        ("tags.`my key` LIKE 'x%'", MODELS, [Clause(TAG, "my key", "LIKE", "x%")]),
        ("tags.\"quoted\" ILIKE 'x'", VERSIONS, [Clause(TAG, "quoted", "ILIKE", "x")]),
        ("tags.a.b.c = 'v'", MODELS, [Clause(TAG, "a.b.c", "=", "v")]),
        (
            "tags.`mlflow.prompt.is_prompt` != 'true'",
            MODELS,
            [Clause(TAG, "mlflow.prompt.is_prompt", "!=", "true")],
        ),
        ("tags.in = 'x'", MODELS, [Clause(TAG, "in", "=", "x")]),
        ("version_number = 3", VERSIONS, [Clause(ATTR, "version_number", "=", 3)]),
        ("version_number != 3", VERSIONS, [Clause(ATTR, "version_number", "!=", 3)]),
        ("version_number>=2", VERSIONS, [Clause(ATTR, "version_number", ">=", 2)]),
        ("version_number <= 2", VERSIONS, [Clause(ATTR, "version_number", "<=", 2)]),
        ("version_number < 10", VERSIONS, [Clause(ATTR, "version_number", "<", 10)]),
        ("version_number > 1", VERSIONS, [Clause(ATTR, "version_number", ">", 1)]),
        ("run_id = 'abc'", VERSIONS, [Clause(ATTR, "run_id", "=", "abc")]),
        ("run_id IN ('a','b')", VERSIONS, [Clause(ATTR, "run_id", "IN", ["a", "b"])]),
        ("name = 'it''s'", MODELS, [Clause(ATTR, "name", "=", "it's")]),
        ('name = "say ""hi"""', MODELS, [Clause(ATTR, "name", "=", 'say "hi"')]),
        (
            "name = 'a' AND tags.t = 'b' and version_number = 1",
            VERSIONS,
            [
                Clause(ATTR, "name", "=", "a"),
                Clause(TAG, "t", "=", "b"),
                Clause(ATTR, "version_number", "=", 1),
            ],
        ),
        ("   ", MODELS, []),
        ("", VERSIONS, []),
        (None, VERSIONS, []),
    ],
)
def test_accepted_forms(text, target, expected):
    assert parse_filter(text, target) == expected


@pytest.mark.parametrize(
    ("text", "target", "reason"),
    [
        # Injection attempts: nothing beyond the grammar gets through.
        ("name = 'x' OR 1=1", MODELS, "only AND joins clauses"),
        ("name = 'x' OR name = 'y'", VERSIONS, "only AND"),
        ("name = 'x'; DROP TABLE registry_registeredmodel", MODELS, "unexpected character ';'"),
        ("name = 'x' -- comment", MODELS, "unexpected character '-'"),
        ("1=1", MODELS, "expected an attribute"),
        ("name = 'x' AND 1=1", MODELS, "expected an attribute"),
        ("(name = 'x')", MODELS, "expected an attribute"),
        ("name = 'x')", MODELS, "unexpected"),
        ("name = name", MODELS, "expected a quoted string"),
        ("name = 'a' AND", MODELS, "the filter ended"),
        ("name = 'a' name = 'b'", MODELS, "unexpected 'name'"),
        ("__import__('os').system('id')", MODELS, "unknown attribute '__import__'"),
        ("name = `x`", MODELS, "expected a quoted string"),
        ("name = 'x\x00'", MODELS, "NUL"),
        # Unbalanced quotes and lists.
        ("name = 'fraud", MODELS, "unbalanced quote '"),
        ('name = "fraud', MODELS, 'unbalanced quote "'),
        ("tags.`team = 'x'", MODELS, "unbalanced quote `"),
        ("name = 'it''s", MODELS, "unbalanced quote"),
        ("name IN ('a', 'b'", MODELS, "the filter ended"),
        ("name IN 'a'", MODELS, "parenthesised list"),
        ("name IN ('a' 'b')", MODELS, "expected ',' or ')'"),
        ("name IN ()", MODELS, "expected a quoted string"),
        ("name IN (1, 2)", MODELS, "expected a quoted string"),
        # Attributes, operators and values outside the grammar.
        ("owner = 'x'", MODELS, "unknown attribute 'owner'"),
        ("version_number = 1", MODELS, "unknown attribute 'version_number'"),
        ("run_id = 'a'", MODELS, "unknown attribute 'run_id'"),
        ("source_path = 'x'", VERSIONS, "unknown attribute 'source_path'"),
        ("creation_timestamp > 1", VERSIONS, "unknown attribute"),
        ("params.lr = '1'", MODELS, "unknown prefix 'params'"),
        ("metrics.auc > 1", VERSIONS, "unknown prefix 'metrics'"),
        ("name > 'a'", MODELS, "name supports"),
        ("name NOT IN ('a')", VERSIONS, "NOT is not supported"),
        ("tags.t IS NULL", MODELS, "IS is not supported"),
        ("tags.t IN ('a')", MODELS, "tags supports"),
        ("tags.t > 'a'", MODELS, "tags supports"),
        ("tags.t = 1", MODELS, "expected a quoted string"),
        ("tags.`` = 'x'", MODELS, "expected a tag key"),
        ("tags. = 'x'", MODELS, "expected a tag key"),
        ("run_id != 'a'", VERSIONS, "run_id supports"),
        ("run_id LIKE 'a%'", VERSIONS, "run_id supports"),
        ("version_number = '1'", VERSIONS, "compares with an integer"),
        ("version_number = 1.5", VERSIONS, "compares with an integer"),
        ("version_number = 1e3", VERSIONS, "compares with an integer"),
        ("version_number LIKE 1", VERSIONS, "version_number supports"),
        ("version_number IN (1)", VERSIONS, "version_number supports"),
        ("version_number == 1", VERSIONS, "expected a comparison operator"),
        ("version_number <> 1", VERSIONS, "expected a comparison operator"),
        ("name = 'a' & name = 'b'", MODELS, "unexpected character '&'"),
        ("name LIKE '" + "%a" * 17 + "'", MODELS, "at most 16 '%'"),
    ],
)
def test_refused_forms(text, target, reason):
    with pytest.raises(MlflowError) as refused:
        parse_filter(text, target)
    assert refused.value.code == INVALID_PARAMETER_VALUE
    assert refused.value.status == 400
    assert refused.value.message.startswith("Invalid filter")
    assert reason in refused.value.message


def test_limits():
    with pytest.raises(MlflowError, match="longer than"):
        parse_filter("name = '" + "a" * 5000 + "'", MODELS)
    with pytest.raises(MlflowError, match="more than 50 clauses"):
        parse_filter(" AND ".join(["name = 'a'"] * 51), MODELS)
    with pytest.raises(MlflowError, match="at most 100 values"):
        parse_filter("name IN (" + ", ".join(["'a'"] * 101) + ")", MODELS)


def test_errors_name_the_position():
    with pytest.raises(MlflowError, match="at position 11: unexpected 'OR'"):
        parse_filter("name = 'x' OR 1=1", MODELS)


def test_tokens_keep_what_was_written():
    tokens = list(tokenize("tags.`a b` like 'it''s'"))
    assert [(t.kind, t.text) for t in tokens] == [
        ("word", "tags"),
        ("punct", "."),
        ("backtick", "a b"),
        ("keyword", "like"),
        ("string", "it's"),
    ]


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("fr%", ["fraud", "fr"], ["afr"]),
        ("%d", ["fraud", "d"], ["dx"]),
        ("f_aud", ["fraud"], ["fraaud", "faud"]),
        ("a.b", ["a.b"], ["axb"]),
        ("100\\%", ["100%"], ["1000"]),
        ("a\\_b", ["a_b"], ["axb"]),
        ("(x)[y]*", ["(x)[y]*"], ["x"]),
        ("%%%%a", ["a", "bba"], ["ab"]),
    ],
)
def test_like_patterns_become_anchored_regexes(pattern, matches, misses):
    regex = like_to_regex(pattern)
    assert ".*.*" not in regex
    for text in matches:
        assert re.match(regex, text, re.DOTALL), (pattern, text)
    for text in misses:
        assert not re.match(regex, text, re.DOTALL), (pattern, text)


@pytest.mark.parametrize(
    ("order_by", "target", "expected"),
    [
        (None, MODELS, ["name_key"]),
        (["name DESC"], MODELS, ["-name_key"]),
        (["last_updated_timestamp desc"], MODELS, ["-updated_at", "name_key"]),
        (["timestamp", "name"], MODELS, ["created_at", "name_key"]),
        ([], VERSIONS, ["model__name_key", "-number"]),
        (["version_number ASC"], VERSIONS, ["number", "model__name_key"]),
        (["creation_timestamp DESC"], VERSIONS, ["-created_at", "model__name_key", "-number"]),
        (["attribute.name"], VERSIONS, ["model__name_key", "-number"]),
    ],
)
def test_order_by(order_by, target, expected):
    assert order_by_fields(order_by, target) == expected


@pytest.mark.parametrize("order_by", [["owner"], ["name sideways"], ["name; DROP"], [""], [3]])
def test_bad_order_by(order_by):
    with pytest.raises(MlflowError) as refused:
        order_by_fields(order_by, MODELS)
    assert refused.value.code == INVALID_PARAMETER_VALUE


# --- Against the database: values are parameters, whatever they contain -------------------------


@pytest.fixture
def tagged(alice):
    for name, tags in (
        ("plain", {"team": "risk"}),
        ("numeric-key", {"1": "one"}),
        ("quoted-key", {'say "hi"': "yes", "it's": "x"}),
        ("percent", {"share": "100%"}),
        ("multiline", {"note": "line1\nline2"}),
    ):
        model_create(actor=alice, name=name, tags=tags)


def matching(text: str) -> list[str]:
    return sorted(
        RegisteredModel.objects.filter(filter_q(text, MODELS)).values_list("name", flat=True)
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tags.team = 'risk'", ["plain"]),
        ("tags.`1` = 'one'", ["numeric-key"]),
        ("tags.`say \"hi\"` = 'yes'", ["quoted-key"]),
        ("tags.\"it's\" = 'x'", ["quoted-key"]),
        ("tags.share LIKE '100\\%'", ["percent"]),
        ("tags.share LIKE '10_\\%'", ["percent"]),
        ("tags.share LIKE '1000'", []),
        ("tags.note LIKE 'line1_line2'", ["multiline"]),
        ("tags.note LIKE 'line1%'", ["multiline"]),
        ("tags.note LIKE 'line1'", []),
        ("tags.note ILIKE '%LINE2'", ["multiline"]),
        ("tags.team != 'ops'", ["plain"]),
        (
            "tags.`mlflow.prompt.is_prompt` != 'true'",
            ["multiline", "numeric-key", "percent", "plain", "quoted-key"],
        ),
        (
            "tags.`mlflow.prompt.is_prompt` = 'false'",
            ["multiline", "numeric-key", "percent", "plain", "quoted-key"],
        ),
        ("tags.`mlflow.prompt.is_prompt` = 'true'", []),
        ("name = 'plain'' OR ''1''=''1'", []),
        ("name IN ('plain', 'x''); DELETE FROM x; --')", ["plain"]),
        ("name LIKE '%'", ["multiline", "numeric-key", "percent", "plain", "quoted-key"]),
    ],
)
def test_values_are_matched_literally(tagged, text, expected):
    assert matching(text) == expected
    assert RegisteredModel.objects.count() == 5
