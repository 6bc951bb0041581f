"""The `source` of an MLflow model version: a location kept as inert lineage metadata.

Regent never reads, lists, resolves or fetches a source (SECURITY AR-03): the value is stored
and handed back by `get-download-uri`. Still, a client that follows it must not be pointed at
the machine it runs on, so sources are checked against an allow-list before they are stored:

=====================  ====================================================================
accepted               shape
=====================  ====================================================================
``s3://`` ``gs://``    a bucket, then a key (not Regent's own artifact bucket)
``wasbs://``           ``container@account.blob.core.windows.net/path``
``hdfs://``            ``hdfs://namenode/path`` or ``hdfs:///path``
``dbfs:/``             ``dbfs:/path`` (not the bare root)
``runs:/``             ``runs:/<run_id>/path``
``models:/``           ``models:/<name>/<version|stage>``, ``models:/<name>@<alias>``,
                       ``models:/<model_id>``
``mlflow-artifacts:``  ``mlflow-artifacts:/path`` or ``mlflow-artifacts://host/path``
``https://``           a public host: no IP literal that is loopback, private, link-local,
                       reserved or otherwise not global (also hidden in IPv4-mapped, NAT64,
                       6to4 or IPv4-compatible IPv6, or in decimal/octal/hex forms such as
                       ``2130706433``), no ``localhost``, no credentials
=====================  ====================================================================

Everything else is refused: local paths (``/etc``, ``../x``, ``//proc/self/root``,
``C:\\x``), ``file:``, plain ``http:``, unknown schemes, ``..`` or ``.`` segments (also
percent-encoded, however many times), backslashes, NUL and control characters.
"""

import ipaddress
import re
from urllib.parse import SplitResult, unquote, urlsplit

from django.conf import settings

from apps.mlflow_compat.errors import MlflowError, invalid
from apps.registry.validation import MAX_URI_CHARS

SCHEMES = ("s3", "gs", "wasbs", "hdfs", "dbfs", "runs", "models", "mlflow-artifacts", "https")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_RUNS = re.compile(r"runs:/[A-Za-z0-9_-]{1,64}(/[^?#]*)?")
_MODELS = re.compile(r"models:/[A-Za-z0-9._-]+(@[A-Za-z0-9_-]+|/[A-Za-z0-9._-]+)?/?")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{0,254}", re.IGNORECASE)
_WASBS_HOST = re.compile(r"[a-z0-9-]+@[a-z0-9-]+(\.[a-z0-9-]+)+", re.IGNORECASE)
_HOSTNAME = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*\.?")
# WHATWG URL rule: a host whose last label is a number is an IPv4 address (`127.1`).
_NUMERIC_LABEL = re.compile(r"\d+|0[xX][0-9a-fA-F]*")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
MAX_DECODE_ROUNDS = 5


def _refuse(source: str, reason: str) -> MlflowError:
    shown = source if len(source) <= 200 else source[:200] + "…"
    return invalid(f"Invalid model version source {shown!r}: {reason}")


def check_source(source: object) -> str:
    """`source` as given, if it is an allowed location; INVALID_PARAMETER_VALUE otherwise."""
    if not isinstance(source, str) or not source:
        raise invalid("Missing value for required parameter 'source'.")
    if len(source) > MAX_URI_CHARS:
        raise _refuse(source, f"longer than {MAX_URI_CHARS} characters")
    decoded = _fully_decoded(source)
    if _CONTROL.search(decoded) or "\\" in decoded:
        raise _refuse(source, "control characters and backslashes are not allowed")
    scheme_match = _SCHEME.match(source)
    if scheme_match is None or len(scheme_match.group(1)) == 1:
        raise _refuse(source, "a local path; give a URI such as s3://bucket/path")
    scheme = scheme_match.group(1).lower()
    if scheme not in SCHEMES:
        raise _refuse(source, f"the {scheme}: scheme is not allowed (use {', '.join(SCHEMES)})")
    if any(segment in ("..", ".") for segment in re.split(r"[/\\]", decoded)):
        raise _refuse(source, "'..' and '.' path segments are not allowed")
    try:
        parts = urlsplit(source)
        _ = parts.port  # a malformed port raises here
    except ValueError:
        raise _refuse(source, "not a well-formed URI") from None
    _SHAPES[scheme](source, parts)
    return source


def _fully_decoded(source: str) -> str:
    """Percent-decode until stable: `%252e%252e` is `..` to a client that decodes twice."""
    current = source
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = unquote(current)
        if decoded == current:
            return decoded
        current = decoded
    raise _refuse(source, "percent-encoded too many times")


def _bucket(source: str, parts: SplitResult) -> None:
    if not _BUCKET.fullmatch(parts.netloc) or not parts.path.strip("/"):
        raise _refuse(source, f"expected {parts.scheme}://bucket/path")
    if parts.scheme.lower() == "s3" and parts.netloc == _regent_bucket():
        raise _refuse(source, "it points into Regent's own artifact store")


def _regent_bucket() -> str | None:
    storage = settings.STORAGES.get("artifacts", {})
    if "s3" not in storage.get("BACKEND", "").lower():
        return None
    return storage.get("OPTIONS", {}).get("bucket_name")


def _wasbs(source: str, parts: SplitResult) -> None:
    if not _WASBS_HOST.fullmatch(parts.netloc) or not parts.path.strip("/"):
        raise _refuse(source, "expected wasbs://container@account.blob.core.windows.net/path")


def _hdfs(source: str, parts: SplitResult) -> None:
    if "@" in parts.netloc or not parts.path.strip("/"):
        raise _refuse(source, "expected hdfs://namenode/path or hdfs:///path")
    if parts.hostname:
        _check_public_host(source, parts.hostname)


def _dbfs(source: str, parts: SplitResult) -> None:
    if parts.netloc or not parts.path.startswith("/") or not parts.path.strip("/"):
        raise _refuse(source, "expected dbfs:/path")


def _runs(source: str, parts: SplitResult) -> None:
    if not _RUNS.fullmatch(source):
        raise _refuse(source, "expected runs:/<run_id>/path")


def _models(source: str, parts: SplitResult) -> None:
    if not _MODELS.fullmatch(source):
        raise _refuse(source, "expected models:/<name>/<version>")


def _mlflow_artifacts(source: str, parts: SplitResult) -> None:
    if not parts.path.strip("/") or parts.query or parts.fragment:
        raise _refuse(source, "expected mlflow-artifacts:/path")
    if parts.netloc:
        _check_netloc(source, parts)


def _https(source: str, parts: SplitResult) -> None:
    if not parts.netloc:
        raise _refuse(source, "expected https://host/path")
    _check_netloc(source, parts)


def _check_netloc(source: str, parts: SplitResult) -> None:
    if "@" in parts.netloc:
        raise _refuse(source, "credentials in a URI are not allowed")
    if not parts.hostname:
        raise _refuse(source, "the host is missing")
    _check_public_host(source, parts.hostname)


def _check_public_host(source: str, host: str) -> None:
    """Refuse loopback names and IP literals that do not reach the public internet."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        raise _refuse(source, "a loopback host")
    address = _ip_literal(source, host)
    if address is None:
        if not _HOSTNAME.fullmatch(host):
            raise _refuse(source, "not a valid host name (use its punycode form)")
        return
    for candidate in _embedded_addresses(address):
        if not candidate.is_global or candidate.is_multicast:
            raise _refuse(source, "a private, loopback, link-local or reserved address")


def _ip_literal(source: str, host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in host or "%" in host:
        raise _refuse(source, "not a valid IP address")
    if _NUMERIC_LABEL.fullmatch(host.split(".")[-1]):
        return _legacy_ipv4(source, host)
    return None


def _legacy_ipv4(source: str, host: str) -> ipaddress.IPv4Address:
    """What inet_aton makes of `2130706433`, `0x7f000001`, `0177.0.0.1` or `127.1`."""
    labels = host.split(".")
    try:
        numbers = [_inet_number(label) for label in labels]
    except ValueError:
        raise _refuse(source, "not a valid IP address") from None
    if not 1 <= len(numbers) <= 4 or any(number < 0 for number in numbers):
        raise _refuse(source, "not a valid IP address")
    *head, last = numbers
    if any(number > 255 for number in head) or last >= 256 ** (5 - len(numbers)):
        raise _refuse(source, "not a valid IP address")
    value = 0
    for number in head:
        value = value * 256 + number
    return ipaddress.IPv4Address(value * 256 ** (5 - len(numbers)) + last)


def _inet_number(label: str) -> int:
    if re.fullmatch(r"0\d+", label):
        return int(label, 8)  # `08` is no number at all: ValueError, refused
    return int(label, 16) if label[:2].lower() == "0x" else int(label, 10)


def _embedded_addresses(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The address and any IPv4 address an IPv6 form carries (mapped, NAT64, 6to4…)."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            found.append(address.ipv4_mapped)
        if address.sixtofour:
            found.append(address.sixtofour)
        if any(address in network for network in _NAT64) or address.packed[:12] == bytes(12):
            found.append(ipaddress.IPv4Address(address.packed[12:]))
    return found


_SHAPES = {
    "s3": _bucket,
    "gs": _bucket,
    "wasbs": _wasbs,
    "hdfs": _hdfs,
    "dbfs": _dbfs,
    "runs": _runs,
    "models": _models,
    "mlflow-artifacts": _mlflow_artifacts,
    "https": _https,
}
