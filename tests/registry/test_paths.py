"""The canonical validators for artifact paths, digests and model names (SECURITY AR-01/04/16)."""

import random
import unicodedata

import pytest

from apps.registry.paths import (
    InvalidArtifactPath,
    InvalidChecksum,
    InvalidModelName,
    content_disposition_attachment,
    model_name_key,
    normalize_artifact_path,
    sha256_hex_claim,
    validate_model_name,
)

FULLWIDTH_MODEL = "\uff4d\uff4f\uff44\uff45\uff4c"  # looks like "model"

REJECTED = [
    # Every spelling listed in SECURITY AR-01, then the next spellings of the same attacks.
    ("../../etc/passwd", "dot_segment"),
    ("..\\..\\win.ini", "backslash"),
    ("/abs/path", "absolute"),
    ("C:/x", "drive_letter"),
    ("C:x", "drive_letter"),
    ("c:\\x", "backslash"),
    ("\\\\server\\share", "backslash"),
    ("%2e%2e%2f", "percent_encoding"),
    ("%2E%2E%2F", "percent_encoding"),
    ("%252e%252e%252f", "percent_encoding"),
    ("a%2fb", "percent_encoding"),
    ("a/./../../b", "dot_segment"),
    ("a;/../b", "forbidden_char"),
    ("..;/x", "forbidden_char"),
    ("a#/../b", "forbidden_char"),
    ("a?/../b", "forbidden_char"),
    ("a\x00.pt", "control_char"),
    ("a\r\nb.pt", "control_char"),
    ("a\tb", "control_char"),
    ("a\x7fb", "control_char"),
    ("a\x85b", "control_char"),
    ("..\uff0f", "lookalike_char"),
    ("\uff0e\uff0e/x", "lookalike_char"),
    ("a\u2215..\u2215b", "lookalike_char"),
    ("a\ufe68b", "lookalike_char"),
    ("a\u2024\u2024/b", "lookalike_char"),
    ("a\u00a5b", "lookalike_char"),
    ("model\u037e.pt", "forbidden_char"),
    ("evil\u202etxt.pt", "format_char"),
    ("\u202egpj.exe", "format_char"),
    ("a\u200bb", "format_char"),
    ("a\u2028b", "whitespace"),
    ("a\u00a0b", "whitespace"),
    ("a\ue000b", "invalid_char"),
    ("a\ud800b", "invalid_char"),
    ("a" * 1025, "too_long"),
    ("d/" * 300 + "x", "too_deep"),
    ("d/" * 32 + "x", "too_deep"),
    ("", "empty"),
    (".", "dot_segment"),
    ("..", "dot_segment"),
    ("a/", "empty_segment"),
    ("a//b", "empty_segment"),
    ("a/.", "dot_segment"),
    ("...", "segment_edge"),
    (".. /x", "segment_edge"),
    ("a. /x", "segment_edge"),
    (" a", "segment_edge"),
    ("x" * 256, "segment_too_long"),
    ("é" * 128, "segment_too_long"),
    ("a*b", "forbidden_char"),
    ('a"b', "forbidden_char"),
    ("a<b>", "forbidden_char"),
    ("a|b", "forbidden_char"),
    ("ab:c", "forbidden_char"),
    ("CON", "reserved_name"),
    ("dir/nul.txt", "reserved_name"),
    ("com1.bin", "reserved_name"),
]

ACCEPTED = [
    "model.pt",
    "weights/layer-1.safetensors",
    "saved_model/variables/variables.data-00000-of-00001",
    "MLmodel",
    "café/modèle.onnx",
    ".gitattributes",
    "model (1).pt",
    "acc_95%.txt",
    "a..b/c",
    FULLWIDTH_MODEL + ".pt",
    "x" * 255,
    "d/" * 31 + "x",
    ("x" * 254 + "/") * 4 + "abcd",
]


@pytest.mark.parametrize(("raw", "rule"), REJECTED)
def test_rejects_with_the_rule_violated(raw: str, rule: str) -> None:
    with pytest.raises(InvalidArtifactPath) as caught:
        normalize_artifact_path(raw)
    assert caught.value.rule == rule
    assert str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("raw", ACCEPTED)
def test_accepts_and_round_trips(raw: str) -> None:
    assert normalize_artifact_path(raw) == raw
    assert normalize_artifact_path(normalize_artifact_path(raw)) == raw


def test_non_text_is_rejected() -> None:
    with pytest.raises(InvalidArtifactPath) as caught:
        normalize_artifact_path(b"model.pt")  # type: ignore[arg-type]
    assert caught.value.rule == "type"


def test_nfd_and_nfc_spellings_become_one_path() -> None:
    nfd = unicodedata.normalize("NFD", "café/modèle.onnx")
    assert nfd != "café/modèle.onnx"
    assert normalize_artifact_path(nfd) == "café/modèle.onnx"


def test_message_names_the_rule() -> None:
    with pytest.raises(InvalidArtifactPath, match="percent-encoded"):
        normalize_artifact_path("%2e%2e%2f")
    with pytest.raises(InvalidArtifactPath, match="U\\+202E"):
        normalize_artifact_path("a\u202eb")


_SAFE = [*"abcXYZ019._- /", "é", "e\u0301", "\uff4d", "\ufb01"]
_HOSTILE = [
    *("..", "/", ".", "\\", "%2e", "%", ":", ";", "?", "#", "\x00", "\n"),
    *"\u202e\uff0f\uff0e\u2215\u037e\u00a0\u2024",
]


def _random_path(rng: random.Random) -> str:
    # Mostly ordinary characters with hostile ones sprinkled in, so both sides get exercised.
    length = rng.randint(0, 24)
    return "".join(rng.choice(_SAFE if rng.random() < 0.95 else _HOSTILE) for _ in range(length))


def test_property_accepted_paths_stay_inside() -> None:
    rng = random.Random(20240601)
    accepted = rejected = 0
    for _ in range(20_000):
        raw = _random_path(rng)
        try:
            path = normalize_artifact_path(raw)
        except InvalidArtifactPath as error:
            assert error.rule
            rejected += 1
            continue
        accepted += 1
        segments = path.split("/")
        assert ".." not in segments and "." not in segments and "" not in segments
        assert not path.startswith("/") and "\\" not in path and "\x00" not in path
        assert path == unicodedata.normalize("NFC", path)
        assert ".." not in unicodedata.normalize("NFKC", path).split("/")
        assert normalize_artifact_path(path) == path
    assert accepted > 2000 and rejected > 2000  # both sides must be exercised


VALID_DIGEST = "9a4d295436c47cc08075678340366af934707a34bb3d9455fda1764b88b4e9fb"


@pytest.mark.parametrize("raw", [VALID_DIGEST, f"  {VALID_DIGEST}\n", f"\t{VALID_DIGEST}"])
def test_checksum_accepts_bare_lowercase_hex(raw: str) -> None:
    assert sha256_hex_claim(raw) == VALID_DIGEST


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (VALID_DIGEST[:63], "length"),
        (VALID_DIGEST + "0", "length"),
        (VALID_DIGEST.upper(), "uppercase"),
        (f"sha256:{VALID_DIGEST}", "prefixed"),
        ("../" + VALID_DIGEST[3:], "non_hex"),
        ("g" * 64, "non_hex"),
        (VALID_DIGEST[:62] + " a", "non_hex"),
        ("\uff10" * 64, "non_hex"),
        (VALID_DIGEST[:63] + "\n0", "length"),
    ],
)
def test_checksum_rejects_malformed_claims(raw: str, rule: str) -> None:
    with pytest.raises(InvalidChecksum) as caught:
        sha256_hex_claim(raw)
    assert caught.value.rule == rule
    assert "SHA-256" in str(caught.value)


@pytest.mark.parametrize(
    "name", ["model", "Model", "a", "resnet-50_v2.1", "A" * 128, "9lives", FULLWIDTH_MODEL]
)
def test_model_name_valid(name: str) -> None:
    canonical = validate_model_name(name)
    assert canonical == unicodedata.normalize("NFKC", name)
    assert canonical.isascii()


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-model",
        ".hidden",
        "_x",
        "a" * 129,
        "with space",
        "a/b",
        "..",
        "mod\u200bel",
        "modèle",
        "model\n",
        "ﷺ" * 200,
        "x" * 10_000,
    ],
)
def test_model_name_invalid(name: str) -> None:
    with pytest.raises(InvalidModelName) as caught:
        validate_model_name(name)
    assert caught.value.rule == "pattern"
    assert "letters, digits" in str(caught.value)


@pytest.mark.parametrize(
    "alias", ["model", "Model", "MODEL", FULLWIDTH_MODEL, FULLWIDTH_MODEL.title()]
)
def test_model_name_key_folds_case_and_compatibility_forms(alias: str) -> None:
    assert model_name_key(alias) == model_name_key("model") == "model"


def test_model_name_key_keeps_distinct_names_distinct() -> None:
    assert model_name_key("model-a") != model_name_key("model_a")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("weights/model.pt", "attachment; filename=\"model.pt\"; filename*=UTF-8''model.pt"),
        (
            "café/modèle.onnx",
            "attachment; filename=\"mod_le.onnx\"; filename*=UTF-8''mod%C3%A8le.onnx",
        ),
        (
            'a"b;c\\d%0d%0a.txt',
            'attachment; filename="a_b_c_d_0d_0a.txt"; '
            "filename*=UTF-8''a%22b%3Bc%5Cd%250d%250a.txt",
        ),
        (
            "evil\u202etxt.exe",
            "attachment; filename=\"evil_txt.exe\"; filename*=UTF-8''evil%E2%80%AEtxt.exe",
        ),
        ("", "attachment; filename=\"download\"; filename*=UTF-8''download"),
    ],
)
def test_content_disposition(path: str, expected: str) -> None:
    assert content_disposition_attachment(path) == expected


def test_content_disposition_never_splits_headers() -> None:
    value = content_disposition_attachment("x\r\nSet-Cookie: a=b\x00.pt")
    assert "\r" not in value and "\n" not in value and "\x00" not in value
    assert value.isascii()
