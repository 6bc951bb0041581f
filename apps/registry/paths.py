"""The one canonical parser for user-supplied identifiers: artifact paths, digests, model names.

Every consumer (API, web upload, MLflow endpoints, storage, download headers) goes through
these functions and keeps the value they return, so the value that was validated is the value
that is stored and used (SECURITY AR-01, AR-04, AR-16).

Artifact path rules, in the order they are checked (the first failure is reported):

====================  ==========================================================================
rule                  rejects
====================  ==========================================================================
``type``              anything that is not a ``str``
``empty``             ``""``
``too_long``          more than 1024 characters (before and after NFC normalisation)
``control_char``      C0 controls (NUL, CR, LF, TAB…), DEL and C1 controls
``format_char``       Unicode format characters (category Cf: RTL/LTR overrides, zero-width…)
``invalid_char``      surrogates, private-use and unassigned code points
``whitespace``        whitespace other than the ASCII space (NBSP, line/paragraph separators…)
``backslash``         ``\\`` anywhere: a Windows separator, never a file-name character here
``percent_encoding``  ``%`` followed by two hex digits: the URL layer decoded once already
``absolute``          a leading ``/``
``drive_letter``      ``C:`` at the start (``C:/x``, ``C:x``)
``forbidden_char``    ``: ; ? # * < > | "``: URL delimiters, Windows-reserved and shell globs
``lookalike_char``    non-ASCII characters that are, or fold (NFKC) to, a slash, backslash,
                      dot, ``%`` or a forbidden character (U+FF0F, U+FF0E, U+2215, U+00A5…)
``too_deep``          more than 32 segments
``empty_segment``     ``a//b``, a trailing ``/``
``dot_segment``       ``.`` or ``..`` segments
``segment_too_long``  a segment longer than 255 UTF-8 bytes (the usual file-system limit)
``segment_edge``      a segment that starts or ends with a space or ends with a dot (Windows
                      strips those, turning ``...`` or ``.. `` into ``..``)
``reserved_name``     Windows device names (``CON``, ``NUL``, ``COM1``… with any extension),
                      which break clients that mirror a version's files to disk
====================  ==========================================================================

NFD input (as macOS produces) is accepted and returned in NFC, so two spellings of ``é``
become one stored path instead of two look-alike files.
"""

import re
import unicodedata
from urllib.parse import quote

MAX_PATH_CHARS = 1024
MAX_SEGMENTS = 32
MAX_SEGMENT_BYTES = 255
MAX_MODEL_NAME_CHARS = 128

_FORBIDDEN_CHARS = frozenset(':;?#*<>|"')
_STRUCTURAL_CHARS = _FORBIDDEN_CHARS | frozenset("/\\.%")
# Slashes and backslashes that NFKC leaves alone but Windows "best fit" code pages map to
# `/` or `\` (the WorstFit attacks): a client saving the file could see a separator.
_EXTRA_LOOKALIKES = frozenset("\u2215\u2044\u29f8\u2216\u29f5\u29f9\u00a5\u20a9")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_DRIVE_LETTER = re.compile(r"[A-Za-z]:")
_RESERVED_NAME = re.compile(r"(?i)(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

_CATEGORY_RULES = {
    "Cc": ("control_char", "control characters (NUL, CR, LF, TAB, DEL…) are not allowed"),
    "Cf": ("format_char", "invisible format characters (e.g. RTL override) are not allowed"),
    "Cs": ("invalid_char", "surrogate code points are not allowed"),
    "Co": ("invalid_char", "private-use characters are not allowed"),
    "Cn": ("invalid_char", "unassigned characters are not allowed"),
    "Zl": ("whitespace", "line separators are not allowed"),
    "Zp": ("whitespace", "paragraph separators are not allowed"),
}


class InvalidIdentifier(ValueError):
    """A user-supplied identifier broke a rule; ``rule`` is a short machine-readable code."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class InvalidArtifactPath(InvalidIdentifier):
    """An artifact path was rejected; str() names the rule in words."""


class InvalidChecksum(InvalidIdentifier):
    """A client-claimed SHA-256 digest is malformed."""


class InvalidModelName(InvalidIdentifier):
    """A model name does not match the naming rule."""


def normalize_artifact_path(raw: str) -> str:
    """Return the canonical (NFC) form of an artifact's relative path, or raise.

    Raises InvalidArtifactPath naming the first rule the path breaks (see the module docstring).
    """
    if not isinstance(raw, str):
        raise InvalidArtifactPath("type", "the path must be text")
    if not raw:
        raise InvalidArtifactPath("empty", "the path is empty")
    _check_length(raw)
    # Validate the NFC form, not the raw input: NFC can turn one character into another
    # (U+037E GREEK QUESTION MARK becomes `;`), and what we check must be what we store.
    path = unicodedata.normalize("NFC", raw)
    _check_length(path)
    _check_characters(path)
    _check_shape(path)
    _check_segments(path.split("/"))
    return path


def _check_length(path: str) -> None:
    if len(path) > MAX_PATH_CHARS:
        raise InvalidArtifactPath(
            "too_long", f"the path is {len(path)} characters long; the limit is {MAX_PATH_CHARS}"
        )


def _check_characters(path: str) -> None:
    for char in path:
        _check_character(char)
    if "\\" in path:
        raise InvalidArtifactPath("backslash", "backslashes are not allowed; use / between folders")
    if _PERCENT_ESCAPE.search(path):
        raise InvalidArtifactPath(
            "percent_encoding", "percent-encoded sequences such as %2e or %2f are not allowed"
        )


def _check_character(char: str) -> None:
    category = unicodedata.category(char)
    if category in _CATEGORY_RULES:
        rule, message = _CATEGORY_RULES[category]
        raise InvalidArtifactPath(rule, f"{message} (found U+{ord(char):04X})")
    if category == "Zs" and char != " ":
        raise InvalidArtifactPath(
            "whitespace", f"only the plain space is allowed as whitespace (found U+{ord(char):04X})"
        )


def _check_shape(path: str) -> None:
    if path.startswith("/"):
        raise InvalidArtifactPath(
            "absolute", "absolute paths are not allowed; give a relative path"
        )
    if _DRIVE_LETTER.match(path):
        raise InvalidArtifactPath("drive_letter", "Windows drive letters (C:) are not allowed")
    found = sorted(_FORBIDDEN_CHARS.intersection(path))
    if found:
        raise InvalidArtifactPath(
            "forbidden_char", f"the characters {' '.join(found)} are not allowed in paths"
        )
    for char in path:
        if _is_lookalike(char):
            raise InvalidArtifactPath(
                "lookalike_char",
                f"U+{ord(char):04X} looks like a path separator or dot and is not allowed",
            )


def _is_lookalike(char: str) -> bool:
    if char.isascii():
        return False
    folded = unicodedata.normalize("NFKC", char)
    return char in _EXTRA_LOOKALIKES or not _STRUCTURAL_CHARS.isdisjoint(folded)


def _check_segments(segments: list[str]) -> None:
    if len(segments) > MAX_SEGMENTS:
        raise InvalidArtifactPath(
            "too_deep", f"the path has {len(segments)} parts; the limit is {MAX_SEGMENTS}"
        )
    for segment in segments:
        _check_segment(segment)


def _check_segment(segment: str) -> None:
    if not segment:
        raise InvalidArtifactPath("empty_segment", "empty path parts (// or a trailing /)")
    if segment in (".", ".."):
        raise InvalidArtifactPath("dot_segment", "'.' and '..' path parts are not allowed")
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise InvalidArtifactPath(
            "segment_too_long", f"a path part is longer than {MAX_SEGMENT_BYTES} bytes"
        )
    if segment != segment.strip(" ") or segment.endswith("."):
        raise InvalidArtifactPath(
            "segment_edge", "path parts may not start or end with a space or end with a dot"
        )
    if _RESERVED_NAME.fullmatch(segment):
        raise InvalidArtifactPath(
            "reserved_name", f"{segment!r} is a reserved device name on Windows"
        )


def sha256_hex_claim(raw: str) -> str:
    """Validate a client-claimed SHA-256 digest and return it.

    Surrounding whitespace is stripped (HTTP header values may carry it); otherwise the value
    must be exactly 64 lowercase hex digits, as SECURITY AR-11/AR-16 require: uppercase,
    ``sha256:`` prefixes and wrong lengths are refused rather than repaired.
    """
    if not isinstance(raw, str):
        raise InvalidChecksum("type", "the checksum must be text")
    value = raw.strip()
    if _SHA256_HEX.fullmatch(value):
        return value
    rule = _checksum_rule(value)
    raise InvalidChecksum(
        rule, f"invalid SHA-256: {_CHECKSUM_PROBLEMS[rule]} (got {len(value)} chars)"
    )


_CHECKSUM_PROBLEMS = {
    "empty": "the value is empty",
    "prefixed": "give the bare hex digest without an algorithm prefix such as 'sha256:'",
    "length": "expected exactly 64 hex digits",
    "uppercase": "hex digits must be lowercase",
    "non_hex": "only the characters 0-9 and a-f are allowed",
}


def _checksum_rule(value: str) -> str:
    if not value:
        return "empty"
    if ":" in value:
        return "prefixed"
    if len(value) != 64:
        return "length"
    if re.fullmatch(r"[0-9A-Fa-f]{64}", value):
        return "uppercase"
    return "non_hex"


def validate_model_name(name: str) -> str:
    """Return the canonical (NFKC) form of a model name, or raise InvalidModelName.

    The rule (DESIGN) is checked on the NFKC form so that fullwidth or other compatibility
    spellings are stored as the plain ASCII name they stand for.
    """
    if not isinstance(name, str):
        raise InvalidModelName("type", "the model name must be text")
    # Bound the work before normalising: NFKC can expand one character into many.
    folded = unicodedata.normalize("NFKC", name) if len(name) <= 4 * MAX_MODEL_NAME_CHARS else ""
    if _MODEL_NAME.fullmatch(folded):
        return folded
    raise InvalidModelName(
        "pattern",
        "model names are 1-128 characters: letters, digits, '.', '_' and '-', "
        "starting with a letter or digit",
    )


def model_name_key(name: str) -> str:
    """The case- and compatibility-insensitive key that makes model names unique."""
    return unicodedata.normalize("NFKC", name).casefold()


def content_disposition_attachment(path: str) -> str:
    """Build a ``Content-Disposition: attachment`` value for a file (RFC 6266 / RFC 5987).

    Only the basename is sent. The quoted ``filename`` is an ASCII fallback with anything that
    could break the header or confuse a browser replaced by ``_``; ``filename*`` carries the
    real name, percent-encoded UTF-8.
    """
    basename = path.rsplit("/", 1)[-1] or "download"
    fallback = "".join(_ascii_fallback_char(char) for char in basename)
    encoded = quote(basename, safe="", encoding="utf-8", errors="replace")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def _ascii_fallback_char(char: str) -> str:
    # `%` is replaced too: some browsers percent-decode the plain filename parameter.
    if not char.isascii() or not char.isprintable() or char in '"\\;%':
        return "_"
    return char
