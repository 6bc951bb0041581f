"""MLflow's search grammar for registered models and model versions, parsed by hand.

A small tokenizer and a recursive-descent parser turn a filter string into `Clause`s, which
become Django `Q` objects: values always travel as query parameters, nothing is evaluated
and no SQL is written from user text. Anything outside the grammar is INVALID_PARAMETER_VALUE.

    filter     := clause ( AND clause )*
    clause     := identifier operator value
    identifier := name | version_number | run_id            (attributes)
                | ( tag | tags ) "." ( word | `quoted` | "quoted" )
    value      := 'string' | "string" | integer | ( 'a', 'b', ... )

What each target accepts:

    registered models  name  = != LIKE ILIKE IN     tags.k  = != LIKE ILIKE
    model versions     name  = != LIKE ILIKE IN     tags.k  = != LIKE ILIKE
                       run_id  = IN                 version_number  = != < <= > >= (integer)

`attribute.name` is accepted as a spelling of `name` (MLflow allows it). Strings are quoted
with ' or "; a quote inside is doubled (`'it''s'`). LIKE patterns use `%` (any run) and `_`
(one character); `\\%`, `\\_` and `\\\\` match those characters literally. A tag comparison
needs the tag to be present, except `mlflow.prompt.is_prompt`, which Regent models never
carry and which compares as 'false' (the stock client adds `!= 'true'` to every search).
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db.models import Expression, F, Func, Q, TextField, Value
from django.db.models.functions import Coalesce
from django.db.models.lookups import Exact, In, IRegex, Regex

from apps.mlflow_compat.errors import MlflowError, invalid

MAX_FILTER_CHARS = 4_000
MAX_CLAUSES = 50
MAX_LIST_ITEMS = 100
MAX_WILDCARDS = 16
MAX_VERSION_NUMBER = 2_147_483_647
IS_PROMPT_TAG = "mlflow.prompt.is_prompt"

MODELS = "models"
VERSIONS = "versions"

STRING_OPS = ("=", "!=", "LIKE", "ILIKE")
NUMBER_OPS = ("=", "!=", "<", "<=", ">", ">=")
# (target, attribute) → the operators it accepts.
ATTRIBUTE_OPS: dict[tuple[str, str], tuple[str, ...]] = {
    (MODELS, "name"): (*STRING_OPS, "IN"),
    (VERSIONS, "name"): (*STRING_OPS, "IN"),
    (VERSIONS, "run_id"): ("=", "IN"),
    (VERSIONS, "version_number"): NUMBER_OPS,
}
TAG_OPS = STRING_OPS

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>!=|<>|<=|>=|==|=|<|>)
  | (?P<punct>[(),.])
  | (?P<quote>['"`])
    """,
    re.VERBOSE,
)
_KEYWORDS = {"AND", "OR", "NOT", "IN", "LIKE", "ILIKE", "IS", "NULL"}


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "keyword", "string", "backtick", "number", "op", "punct"
    text: str  # as written; strings and backticks without their quotes
    position: int

    @property
    def upper(self) -> str:
        return self.text.upper()


@dataclass(frozen=True)
class Clause:
    """One comparison: `kind` "attribute" or "tag", `op` upper-cased, `value` parsed."""

    kind: str
    key: str
    op: str
    value: Any


def _error(message: str, position: int | None = None) -> MlflowError:
    where = f" at position {position}" if position is not None else ""
    return invalid(f"Invalid filter{where}: {message}")


# --- Tokenizer ----------------------------------------------------------------------------------


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The body of the quoted run starting at `start` (a doubled quote is one quote)."""
    quote, index, parts = text[start], start + 1, []
    while True:
        end = text.find(quote, index)
        if end < 0:
            raise _error(f"unbalanced quote {quote}", start)
        parts.append(text[index:end])
        if text.startswith(quote, end + 1):  # a doubled quote: a literal quote character
            parts.append(quote)
            index = end + 2
            continue
        return "".join(parts), end + 1


def tokenize(text: str) -> Iterator[Token]:
    """The tokens of `text`; anything that is not a token of the grammar is an error."""
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise _error(f"unexpected character {text[position]!r}", position)
        kind = match.lastgroup or ""
        if kind == "quote":
            body, position_after = _quoted(text, position)
            quote_kind = "backtick" if text[position] == "`" else "string"
            yield Token(quote_kind, body, position)
            position = position_after
            continue
        value = match.group()
        if kind == "word" and value.upper() in _KEYWORDS:
            yield Token("keyword", value, position)
        elif kind != "space":
            yield Token(kind, value, position)
        position = match.end()


# --- Parser -------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, target: str) -> None:
        self.tokens = list(tokenize(text))
        self.index = 0
        self.target = target
        self.end = len(text)

    def peek(self) -> Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, expected: str) -> Token:
        token = self.peek()
        if token is None:
            raise _error(f"expected {expected} but the filter ended", self.end)
        self.index += 1
        return token

    def parse(self) -> list[Clause]:
        clauses = [self.clause()]
        while (token := self.peek()) is not None:
            if token.kind != "keyword" or token.upper != "AND":
                hint = "; only AND joins clauses" if token.upper == "OR" else ""
                raise _error(f"unexpected {token.text!r}{hint}", token.position)
            self.index += 1
            clauses.append(self.clause())
            if len(clauses) > MAX_CLAUSES:
                raise _error(f"more than {MAX_CLAUSES} clauses")
        return clauses

    def clause(self) -> Clause:
        kind, key, start = self.identifier()
        op = self.operator()
        allowed = TAG_OPS if kind == "tag" else ATTRIBUTE_OPS[(self.target, key)]
        if op not in allowed:
            subject = "tags" if kind == "tag" else key
            raise _error(f"{subject} supports {', '.join(allowed)}, not {op}", start)
        value = self.value_list() if op == "IN" else self.value()
        return Clause(kind, key, op, _check_value(kind, key, op, value))

    def identifier(self) -> tuple[str, str, int]:
        token = self.take("a name, tags.<key> or another attribute")
        if token.kind != "word":
            raise _error(
                f"expected an attribute or tags.<key>, found {token.text!r}", token.position
            )
        name = token.text
        follows = self.peek()
        if follows is None or follows.text != ".":
            return self.attribute(name, token.position)
        self.index += 1
        if name in ("tag", "tags"):
            return "tag", self.tag_key(), token.position
        if name in ("attribute", "attributes", "attr"):
            inner = self.take("an attribute name")
            if inner.kind != "word":
                raise _error(f"expected an attribute name, found {inner.text!r}", inner.position)
            return self.attribute(inner.text, inner.position)
        raise _error(f"unknown prefix {name!r}: use tags.<key>", token.position)

    def attribute(self, name: str, position: int) -> tuple[str, str, int]:
        if (self.target, name) not in ATTRIBUTE_OPS:
            known = sorted(key for target, key in ATTRIBUTE_OPS if target == self.target)
            raise _error(f"unknown attribute {name!r} (one of {', '.join(known)})", position)
        return "attribute", name, position

    def tag_key(self) -> str:
        token = self.take("a tag key")
        if token.kind in ("word", "keyword"):
            key = token.text
            # Unquoted keys may contain dots: tags.a.b is the key "a.b".
            while (dot := self.peek()) is not None and dot.text == "." and self._word_after():
                self.index += 1
                key += "." + self.take("a tag key").text
            return key
        if token.kind in ("backtick", "string") and token.text:
            return token.text
        raise _error(f"expected a tag key, found {token.text!r}", token.position)

    def _word_after(self) -> bool:
        following = self.tokens[self.index + 1] if self.index + 1 < len(self.tokens) else None
        return following is not None and following.kind in ("word", "keyword")

    def operator(self) -> str:
        token = self.take("a comparison operator")
        if token.kind == "op" and token.text in NUMBER_OPS:
            return token.text
        if token.kind == "keyword" and token.upper in ("LIKE", "ILIKE", "IN"):
            return token.upper
        if token.kind == "keyword" and token.upper in ("NOT", "IS"):
            raise _error(f"{token.text} is not supported", token.position)
        raise _error(f"expected a comparison operator, found {token.text!r}", token.position)

    def value(self) -> Token:
        token = self.take("a value")
        if token.kind not in ("string", "number"):
            raise _error(
                f"expected a quoted string or a number, found {token.text!r}", token.position
            )
        return token

    def value_list(self) -> list[Token]:
        opening = self.take("(")
        if opening.text != "(":
            raise _error("IN needs a parenthesised list of quoted strings", opening.position)
        items = [self.value()]
        while (token := self.take("',' or ')'")).text == ",":
            items.append(self.value())
            if len(items) > MAX_LIST_ITEMS:
                raise _error(f"an IN list holds at most {MAX_LIST_ITEMS} values", token.position)
        if token.text != ")":
            raise _error(f"expected ',' or ')', found {token.text!r}", token.position)
        return items


def _check_value(kind: str, key: str, op: str, value: Any) -> Any:
    """The Python value of a clause: strings for strings, an int for version_number."""
    if key == "version_number" and kind == "attribute":
        if value.kind != "number" or not re.fullmatch(r"-?\d+", value.text):
            raise _error("version_number compares with an integer", value.position)
        return int(value.text)
    items = value if isinstance(value, list) else [value]
    for item in items:
        if item.kind != "string":
            raise _error(f"expected a quoted string, found {item.text}", item.position)
    if op in ("LIKE", "ILIKE") and value.text.count("%") > MAX_WILDCARDS:
        raise _error(f"a pattern holds at most {MAX_WILDCARDS} '%'", value.position)
    if isinstance(value, list):
        return [item.text for item in value]
    return value.text


def parse_filter(text: str | None, target: str) -> list[Clause]:
    """The clauses of an MLflow filter string for `target` (MODELS or VERSIONS); [] if empty."""
    if text is None or not text.strip():
        return []
    if len(text) > MAX_FILTER_CHARS:
        raise _error(f"longer than {MAX_FILTER_CHARS} characters")
    if "\x00" in text:
        raise _error("NUL character")
    return _Parser(text, target).parse()


# --- From clauses to Q objects ------------------------------------------------------------------


class JsonText(Func):
    """The text of one key of a JSON object column (NULL when the key is absent).

    The key is always a query parameter: `jsonb_extract_path_text(col, %s)` on PostgreSQL,
    and SQLite's `json_extract` with a quoted path elsewhere (SQLite paths cannot hold a `"`,
    so on the embedded quick start such a key matches nothing). Unlike Django's key
    transforms, a key that looks like a number ("1") is still an object key here.
    """

    output_field = TextField()

    def __init__(self, column: str, key: str) -> None:
        super().__init__(F(column))
        self.key = key

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list]:
        sql, params = compiler.compile(self.source_expressions[0])
        return f"jsonb_extract_path_text({sql}, %s)", [*params, self.key]

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list]:
        sql, params = compiler.compile(self.source_expressions[0])
        path = '$."' + self.key.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"json_extract({sql}, %s)", [*params, path]


def like_to_regex(pattern: str) -> str:
    """An anchored regular expression matching what SQL LIKE `pattern` matches.

    Written for both PostgreSQL's AREs and Python's `re` (SQLite): `(?s)` lets `.` match a
    newline and `\\A`/`\\Z` anchor at the very ends of the text, as LIKE does.
    """
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            out.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        if char == "%":
            if not out or out[-1] != ".*":  # %% is %: no stacked .*.* to backtrack over
                out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
        index += 1
    return r"(?s)\A" + "".join(out) + r"\Z"


def bound_value(op: str, value: Any) -> Any:
    """What a comparison sends to the database: a LIKE pattern's regex, else the value."""
    return like_to_regex(value) if op in ("LIKE", "ILIKE") else value


def _compare(lhs: Expression, op: str, bound: Any) -> Q:
    """`bound` is `bound_value(op, value)`; it reaches the SQL unchanged, as one parameter
    (a list for IN: one parameter per item)."""
    if op == "=":
        return Q(Exact(lhs, bound))
    if op == "!=":
        return ~Q(Exact(lhs, bound))
    if op == "LIKE":
        return Q(Regex(lhs, bound))
    if op == "ILIKE":
        return Q(IRegex(lhs, bound))
    if op == "IN":
        return Q(In(lhs, list(bound)))
    raise AssertionError(op)  # the parser accepts nothing else for strings


_NUMBER_LOOKUPS = {"=": "exact", "<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}


def _number_q(field: str, op: str, value: int) -> Q:
    if op == "!=":
        return ~Q(**{field: value})
    return Q(**{f"{field}__{_NUMBER_LOOKUPS[op]}": value})


def _tag_q(clause: Clause, column: str, bound: Any) -> Q:
    value = JsonText(column, clause.key)
    if clause.key == IS_PROMPT_TAG:
        # Regent holds no prompts: a missing tag compares as 'false' (as MLflow does).
        missing_is_false = Coalesce(value, Value("false"), output_field=TextField())
        return _compare(missing_is_false, clause.op, bound)
    return Q(**{f"{column}__has_key": clause.key}) & _compare(value, clause.op, bound)


def clause_q(clause: Clause, target: str, bound: Any = None) -> Q:
    """The Q object of one clause, against RegisteredModel (MODELS) or ModelVersion.

    `bound`: what to send instead of `bound_value(clause.op, clause.value)` for a string
    comparison (a prepared query's placeholder); the clause's own value otherwise."""
    prefix = "model__" if target == VERSIONS else ""
    if bound is None:
        bound = bound_value(clause.op, clause.value)
    if clause.kind == "tag":
        return _tag_q(clause, "tags", bound)
    if clause.key == "name":
        return _compare(F(f"{prefix}name"), clause.op, bound)
    if clause.key == "run_id":
        return _compare(JsonText("source", "run_id"), clause.op, bound)
    if clause.key == "version_number":
        if not -MAX_VERSION_NUMBER <= clause.value <= MAX_VERSION_NUMBER:
            raise _error("version_number is out of range")
        return _number_q("number", clause.op, clause.value)
    raise AssertionError(clause.key)


def filter_q(text: str | None, target: str) -> Q:
    """One Q for a whole filter string: every clause must hold (AND)."""
    combined = Q()
    for clause in parse_filter(text, target):
        combined &= clause_q(clause, target)
    return combined


# --- order_by -----------------------------------------------------------------------------------

ORDER_KEYS = {
    # Names sort ignoring case, as everywhere in Regent (name_key is the casefolded name).
    MODELS: {
        "name": "name_key",
        "creation_timestamp": "created_at",
        "timestamp": "created_at",
        "last_updated_timestamp": "updated_at",
    },
    VERSIONS: {
        "name": "model__name_key",
        "version_number": "number",
        "creation_timestamp": "created_at",
        "last_updated_timestamp": "last_updated",
    },
}
# Tie-breakers, as MLflow's: name ascending, then (versions) the newest version first.
TIE_BREAKERS = {MODELS: ["name_key"], VERSIONS: ["model__name_key", "-number"]}
_ORDER = re.compile(r"\s*(?:attribute\.)?([A-Za-z_]+)\s*(?:\s(ASC|DESC))?\s*", re.IGNORECASE)


def order_by_fields(order_by: list[str] | None, target: str) -> list[str]:
    """Django `order_by` fields for MLflow's `order_by` list ("name ASC", "version_number")."""
    fields: list[str] = []
    for item in order_by or []:
        match = _ORDER.fullmatch(item) if isinstance(item, str) else None
        key = match.group(1) if match else None
        if match is None or key not in ORDER_KEYS[target]:
            allowed = ", ".join(sorted(ORDER_KEYS[target]))
            raise invalid(f"Invalid order_by clause {item!r}: order by {allowed}, ASC or DESC.")
        field = ORDER_KEYS[target][key]
        descending = (match.group(2) or "ASC").upper() == "DESC"
        fields.append(f"-{field}" if descending else field)
    for field in TIE_BREAKERS[target]:
        if field.lstrip("-") not in {existing.lstrip("-") for existing in fields}:
            fields.append(field)
    return fields
