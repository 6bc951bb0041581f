"""Business rules for catalog metadata, shared by every channel (API, pages, MLflow, admin).

Each `check_*` function returns the normalised value or raises `ApiError` (400, code
"invalid") whose `details["field"]` names the offending field as a dotted path, e.g.
"metrics.auc" or "training_data.2.sha256". Nothing here touches the database.

Strings are refused when PostgreSQL could not store them (NUL, unpaired surrogates), so bad
input is a 400 rather than a 500. Numbers must be finite and fit a float: the audit chain
hashes numbers as floats, and NaN/Infinity are not JSON.
"""

import math
import re
from collections.abc import Mapping
from typing import Any

from apps.registry.models import Visibility
from apps.registry.paths import (
    InvalidChecksum,
    InvalidModelName,
    model_name_key,
    sha256_hex_claim,
    validate_model_name,
)
from registry_site.api_errors import ApiError

MAX_DESCRIPTION_CHARS = 100_000
MAX_TAGS = 100
MAX_TAG_KEY_CHARS = 64
MAX_TAG_VALUE_CHARS = 256
MAX_ENTRIES = 500  # metrics, params, metric directions
MAX_KEY_CHARS = 256  # metric, param and dependency names
MAX_PARAM_VALUE_CHARS = 6_000
MAX_TRAINING_DATA = 100
MAX_URI_CHARS = 2_048
MAX_REF_DESCRIPTION_CHARS = 10_000
MAX_DEPENDENCIES = 200
MAX_DEPENDENCY_ITEMS = 1_000
MAX_DEPENDENCY_VALUE_CHARS = 1_000
MAX_SOURCE_FIELD_CHARS = {"uri": MAX_URI_CHARS, "run_id": 256, "commit": 256}
MAX_PARENTS = 20
MAX_VERSION_NUMBER = 2_147_483_647  # PostgreSQL integer
METRIC_DIRECTIONS = ("higher", "lower")

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_PARENT_REF = re.compile(r"(?s)(.+)/([1-9][0-9]{0,9})")
_TRAINING_DATA_KEYS = frozenset({"uri", "sha256", "description"})


def invalid(field: str, message: str) -> ApiError:
    """The 400 error for a broken business rule, naming the field."""
    return ApiError(message, code="invalid", status=400, details={"field": field})


def check_text(value: Any, field: str, *, max_chars: int, required: bool = False) -> str:
    """A string PostgreSQL can store, at most `max_chars` long (non-empty if `required`)."""
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be a string.")
    if required and not value:
        raise invalid(field, f"{field} must not be empty.")
    if len(value) > max_chars:
        raise invalid(field, f"{field} is {len(value)} characters long; the limit is {max_chars}.")
    if _UNSTORABLE.search(value):
        raise invalid(field, f"{field} contains a NUL or an unpaired surrogate character.")
    return value


def check_model_name(name: Any) -> str:
    """The canonical (NFKC) model name, or a 400 naming "name"."""
    try:
        return validate_model_name(name)
    except InvalidModelName as error:
        raise invalid("name", f"Invalid model name: {error}.") from None


def check_description(value: Any, field: str = "description") -> str:
    return check_text(value, field, max_chars=MAX_DESCRIPTION_CHARS)


def check_visibility(value: Any) -> str:
    if value not in Visibility.values:
        choices = ", ".join(Visibility.values)
        raise invalid("visibility", f"visibility must be one of: {choices}.")
    return str(value)


def check_mapping(value: Any, field: str, *, max_entries: int) -> dict[str, Any]:
    """A dict with string keys and at most `max_entries` entries (None means empty)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid(field, f"{field} must be an object.")
    if len(value) > max_entries:
        raise invalid(field, f"{field} has {len(value)} entries; the limit is {max_entries}.")
    return dict(value)


def _check_key(key: Any, field: str, max_chars: int) -> str:
    if not isinstance(key, str):
        raise invalid(field, f"{field} names must be strings.")
    if _CONTROL.search(key):
        raise invalid(field, f"{field} names may not contain control characters.")
    return check_text(key, field, max_chars=max_chars, required=True)


def check_tags(tags: Any, field: str = "tags") -> dict[str, str]:
    """At most 100 tags; names 1-64 characters, values strings of at most 256."""
    mapping = check_mapping(tags, field, max_entries=MAX_TAGS)
    result = {}
    for key, value in mapping.items():
        key = _check_key(key, field, MAX_TAG_KEY_CHARS)
        result[key] = check_text(value, f"{field}.{key}", max_chars=MAX_TAG_VALUE_CHARS)
    return result


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond the float range
        return False


def check_metrics(metrics: Any, field: str = "metrics") -> dict[str, int | float]:
    """Metric name → finite number; booleans, strings, NaN and infinities are refused."""
    mapping = check_mapping(metrics, field, max_entries=MAX_ENTRIES)
    result = {}
    for key, value in mapping.items():
        key = _check_key(key, field, MAX_KEY_CHARS)
        if not _is_finite_number(value):
            raise invalid(f"{field}.{key}", f"metric {key!r} must be a finite number.")
        result[key] = value
    return result


def _check_scalar(value: Any, field: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return check_text(value, field, max_chars=MAX_PARAM_VALUE_CHARS)
    if _is_finite_number(value):
        return value
    raise invalid(field, f"{field} must be a string, a finite number, a boolean or null.")


def check_params(params: Any, field: str = "params") -> dict[str, Any]:
    """Param name → scalar (string, finite number, boolean or null)."""
    mapping = check_mapping(params, field, max_entries=MAX_ENTRIES)
    return {
        _check_key(key, field, MAX_KEY_CHARS): _check_scalar(value, f"{field}.{key}")
        for key, value in mapping.items()
    }


def check_metric_directions(value: Any, field: str = "metric_directions") -> dict[str, str]:
    """Metric name → "higher" or "lower" (which way is better)."""
    mapping = check_mapping(value, field, max_entries=MAX_ENTRIES)
    result = {}
    for key, direction in mapping.items():
        key = _check_key(key, field, MAX_KEY_CHARS)
        if direction not in METRIC_DIRECTIONS:
            raise invalid(f"{field}.{key}", f"{field}.{key} must be 'higher' or 'lower'.")
        result[key] = direction
    return result


def check_uri(value: Any, field: str) -> str:
    """A URI kept as inert metadata: the server never opens or fetches it (SECURITY AR-03)."""
    uri = check_text(value, field, max_chars=MAX_URI_CHARS, required=True)
    if _CONTROL.search(uri):
        raise invalid(field, f"{field} may not contain control characters.")
    return uri


def _check_training_ref(item: Any, field: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise invalid(field, f"{field} must be an object with a 'uri'.")
    unknown = sorted(str(key) for key in item if key not in _TRAINING_DATA_KEYS)
    if unknown:
        raise invalid(field, f"{field} has unknown keys: {', '.join(unknown)[:200]}.")
    sha256 = item.get("sha256")
    if sha256 is not None:
        try:
            sha256 = sha256_hex_claim(sha256)
        except InvalidChecksum as error:
            raise invalid(f"{field}.sha256", f"{field}.sha256: {error}.") from None
    description = item.get("description") or ""
    return {
        "uri": check_uri(item.get("uri"), f"{field}.uri"),
        "sha256": sha256,
        "description": check_text(
            description, f"{field}.description", max_chars=MAX_REF_DESCRIPTION_CHARS
        ),
    }


def check_training_data(value: Any, field: str = "training_data") -> list[dict[str, Any]]:
    """At most 100 references {uri, sha256?, description?}; sha256 is 64 lowercase hex."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise invalid(field, f"{field} must be a list.")
    if len(value) > MAX_TRAINING_DATA:
        raise invalid(field, f"{field} has {len(value)} entries; the limit is {MAX_TRAINING_DATA}.")
    return [_check_training_ref(item, f"{field}.{index}") for index, item in enumerate(value)]


def _check_dependency(value: Any, field: str) -> str | list[str]:
    if isinstance(value, list | tuple):
        if len(value) > MAX_DEPENDENCY_ITEMS:
            raise invalid(field, f"{field} has more than {MAX_DEPENDENCY_ITEMS} items.")
        return [
            check_text(item, f"{field}.{index}", max_chars=MAX_DEPENDENCY_VALUE_CHARS)
            for index, item in enumerate(value)
        ]
    return check_text(value, field, max_chars=MAX_DEPENDENCY_VALUE_CHARS)


def check_dependencies(value: Any, field: str = "dependencies") -> dict[str, str | list[str]]:
    """Name → string or list of strings (framework, versions, requirements)."""
    mapping = check_mapping(value, field, max_entries=MAX_DEPENDENCIES)
    return {
        _check_key(key, field, MAX_KEY_CHARS): _check_dependency(item, f"{field}.{key}")
        for key, item in mapping.items()
    }


def check_source(value: Any, field: str = "source") -> dict[str, str]:
    """{uri?, run_id?, commit?}: where the version came from, kept as inert metadata."""
    mapping = check_mapping(value, field, max_entries=len(MAX_SOURCE_FIELD_CHARS))
    unknown = sorted(str(key) for key in mapping if key not in MAX_SOURCE_FIELD_CHARS)
    if unknown:
        raise invalid(field, f"{field} has unknown keys: {', '.join(unknown)[:200]}.")
    result = {}
    for key, item in mapping.items():
        if item is None:
            continue
        item_field = f"{field}.{key}"
        if key == "uri":
            result[key] = check_uri(item, item_field)
        else:
            max_chars = MAX_SOURCE_FIELD_CHARS[key]
            result[key] = check_text(item, item_field, max_chars=max_chars, required=True)
    return result


def parse_parent_refs(value: Any, field: str = "parents") -> list[tuple[str, str, int]]:
    """Parse "model-name/3" references into (as written, name key, number).

    Only the shape is checked here; whether a parent exists (for this caller) is the
    service's question, answered with one message for "missing" and "not visible".
    """
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise invalid(field, f"{field} must be a list of 'model-name/number' strings.")
    if len(value) > MAX_PARENTS:
        raise invalid(field, f"{field} has {len(value)} entries; the limit is {MAX_PARENTS}.")
    refs = [_parse_parent_ref(item, f"{field}.{index}") for index, item in enumerate(value)]
    seen: set[tuple[str, int]] = set()
    for index, (raw, key, number) in enumerate(refs):
        if (key, number) in seen:
            raise invalid(f"{field}.{index}", f"parent {raw} is listed twice.")
        seen.add((key, number))
    return refs


def _parse_parent_ref(item: Any, field: str) -> tuple[str, str, int]:
    raw = check_text(item, field, max_chars=MAX_URI_CHARS, required=True)
    match = _PARENT_REF.fullmatch(raw)
    try:
        name = validate_model_name(match.group(1)) if match else None
    except InvalidModelName:
        name = None
    if name is None or match is None:
        raise invalid(field, f"parent {raw[:300]!r} must look like 'model-name/3'.")
    number = int(match.group(2))
    if not 1 <= number <= MAX_VERSION_NUMBER:
        raise invalid(field, f"parent {raw} does not exist")
    return raw, model_name_key(name), number
