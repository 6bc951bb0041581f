"""The SSRF guard of outbound webhooks (SECURITY principle 4, AR-05).

A webhook URL is parsed once, into a canonical form, by `parse_webhook_url`; that form is
what is stored, re-checked before every delivery and used to connect (AR-04: validated =
stored = used). Rules, unless REGENT_WEBHOOK_ALLOW_PRIVATE is on (local development, tests):

- https only (with the setting: http too); no credentials, no fragment, no control
  characters, spaces or backslashes; at most 2048 characters;
- the host is lowercase ASCII (IDNA; fullwidth look-alikes fold to ASCII first);
- a host ending in a number is an IPv4 address whatever its spelling (`2130706433`,
  `0x7f000001`, `0177.0.0.1`, `127.1`, the WHATWG URL rules): anything but four decimal
  numbers is refused, naming the address it means;
- loopback, private, link-local, multicast, reserved, unspecified and shared (CGNAT)
  addresses are refused, so are IPv4-mapped IPv6 addresses, and NAT64 / 6to4 addresses
  embedding a refused IPv4 address; `localhost` and `*.localhost` are loopback by definition.

At delivery time `resolve_checked` resolves the host and checks *every* address before the
sender connects to one of them by IP (the connection is pinned: DNS cannot change its answer
between the check and the connect). Redirects are never followed (webhook_delivery).
"""

import ipaddress
import re
import socket
import unicodedata
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from urllib.parse import urlsplit

from django.conf import settings

from registry_site.api_errors import ApiError

MAX_URL_CHARS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = IPv4Address | IPv6Address
SockAddress = tuple[int, tuple]  # (address family, socket address)

NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local use
# Not public, although `is_global` says so on some Python versions.
NOT_PUBLIC_V4 = (
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("192.0.0.0/24"),
)

# WHATWG "ends in a number": a last label of digits, or 0x and hex digits.
NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
IPV4_NUMBER = {
    16: re.compile(r"[0-9a-f]*"),
    8: re.compile(r"[0-7]*"),
    10: re.compile(r"[0-9]+"),
}
HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# Anything at or below space, DEL, a backslash: never part of a URL we accept.
UNSAFE_CHARACTER = re.compile(r"[\x00-\x20\x7f\\]")


class UnsafeWebhookUrl(ApiError):
    """A URL the server must not call: a 400 naming the field at registration, a permanent
    failure (no retry) at delivery."""

    def __init__(self, message: str, field: str = "url") -> None:
        super().__init__(f"{field}: {message}", status=400, details={"field": field})


class ResolutionFailed(Exception):
    """The host did not resolve (a temporary failure: the delivery is retried)."""


@dataclass(frozen=True)
class WebhookTarget:
    """A checked URL: canonical scheme, host and port, and the request target to send."""

    scheme: str
    host: str  # lowercase ASCII; an IPv6 address without brackets
    port: int
    target: str  # path and query, at least "/"
    ip: IPAddress | None = None  # the host, when it is an address

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if isinstance(self.ip, IPv6Address) else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.target}"


def allow_private() -> bool:
    """REGENT_WEBHOOK_ALLOW_PRIVATE: plain http and private addresses allowed (dev, tests)."""
    return bool(getattr(settings, "REGENT_WEBHOOK_ALLOW_PRIVATE", False))


# --- Parsing -----------------------------------------------------------------------------------


def parse_webhook_url(raw: object, *, allow_private: bool) -> WebhookTarget:
    """The canonical target of `raw`, or UnsafeWebhookUrl saying what is wrong with it."""
    if not isinstance(raw, str) or not raw.strip():
        raise UnsafeWebhookUrl("give an absolute https:// URL.")
    raw = raw.strip()
    if len(raw) > MAX_URL_CHARS:
        raise UnsafeWebhookUrl(f"at most {MAX_URL_CHARS} characters.")
    if UNSAFE_CHARACTER.search(raw):
        raise UnsafeWebhookUrl("spaces, control characters and backslashes are not allowed.")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as error:
        raise UnsafeWebhookUrl(f"not a valid URL ({error}).") from None
    scheme = _checked_scheme(parts.scheme.lower(), allow_private)
    if "@" in parts.netloc:
        raise UnsafeWebhookUrl("credentials in URLs are not allowed (use the signature).")
    if "#" in raw:
        raise UnsafeWebhookUrl("a fragment (#…) is never sent; remove it.")
    host, ip = _canonical_host(parts.netloc, parts.hostname or "", allow_private)
    if port == 0:
        raise UnsafeWebhookUrl("port 0 is not a port.")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not target.isascii() or not target.startswith("/"):
        raise UnsafeWebhookUrl("percent-encode characters outside ASCII in the path and query.")
    return WebhookTarget(scheme, host, port or DEFAULT_PORTS[scheme], target, ip)


def _checked_scheme(scheme: str, allow_private: bool) -> str:
    if scheme == "https" or (scheme == "http" and allow_private):
        return scheme
    if scheme == "http":
        raise UnsafeWebhookUrl(
            "plain http is refused; use https (REGENT_WEBHOOK_ALLOW_PRIVATE=1 allows http "
            "for local development)."
        )
    raise UnsafeWebhookUrl(f"only https URLs are allowed, not {scheme or 'a relative URL'}.")


def _canonical_host(netloc: str, hostname: str, allow: bool) -> tuple[str, IPAddress | None]:
    if not hostname:
        raise UnsafeWebhookUrl("the URL has no host.")
    if netloc.startswith("["):
        ip = _ipv6_literal(hostname)
        _refuse_blocked(ip, hostname, allow)
        return str(ip), ip
    host = _ascii_host(hostname)
    ip4 = parse_ipv4(host)
    if ip4 is not None:
        _refuse_blocked(ip4, host, allow)
        if str(ip4) != host:
            raise UnsafeWebhookUrl(f"{hostname} means {ip4}; write the address as {ip4}.")
        return host, ip4
    if not allow and (host == "localhost" or host.endswith(".localhost")):
        raise UnsafeWebhookUrl(f"{host} is this machine (a loopback name).")
    return host, None


def _ipv6_literal(hostname: str) -> IPv6Address:
    if "%" in hostname:
        raise UnsafeWebhookUrl("IPv6 zone identifiers are not allowed.")
    try:
        return IPv6Address(hostname)
    except ValueError:
        raise UnsafeWebhookUrl(f"[{hostname}] is not an IPv6 address.") from None


def _ascii_host(hostname: str) -> str:
    """Lowercase ASCII labels, no trailing dot; IDNA for names outside ASCII."""
    host = unicodedata.normalize("NFKC", hostname).lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UnsafeWebhookUrl(f"{hostname} is not a valid host name.") from None
    host = host.removesuffix(".")
    labels = host.split(".")
    if len(host) > 253 or not all(HOST_LABEL.fullmatch(label) for label in labels):
        raise UnsafeWebhookUrl(f"{hostname} is not a valid host name.")
    return host


def parse_ipv4(host: str) -> IPv4Address | None:
    """The IPv4 address a host ending in a number means (WHATWG URL parser); None for a name.

    `127.1`, `2130706433`, `0x7f000001` and `0177.0.0.1` all mean 127.0.0.1. A host ending
    in a number that is no address at all (`1.2.3.4.5`, `256.1.1.1`) is refused.
    """
    labels = host.removesuffix(".").split(".")
    if not NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    numbers = [_ipv4_number(label) for label in labels]
    if len(numbers) > 4 or any(number is None for number in numbers):
        raise UnsafeWebhookUrl(f"{host} looks like an IPv4 address but is not one.")
    *head, last = [number or 0 for number in numbers]
    if any(number > 255 for number in head) or last >= 256 ** (4 - len(head)):
        raise UnsafeWebhookUrl(f"{host} looks like an IPv4 address but is not one.")
    return IPv4Address(sum(number << (8 * (3 - i)) for i, number in enumerate(head)) + last)


def _ipv4_number(label: str) -> int | None:
    if label.startswith("0x"):
        digits, base = label[2:], 16
    elif len(label) > 1 and label.startswith("0"):
        digits, base = label[1:], 8
    else:
        digits, base = label, 10
    if not IPV4_NUMBER[base].fullmatch(digits):
        return None
    return int(digits, base) if digits else 0


# --- Addresses ---------------------------------------------------------------------------------


def address_problem(ip: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why the server must not connect to `ip` ("a loopback address"…), or None."""
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if allow_private:
        return None
    if isinstance(ip, IPv6Address):
        return _ipv6_problem(ip)
    return _ipv4_problem(ip)


def _ipv4_problem(ip: IPv4Address) -> str | None:
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global or any(ip in network for network in NOT_PUBLIC_V4):
        return "not a public address"
    return None


def _ipv6_problem(ip: IPv6Address) -> str | None:
    if ip.ipv4_mapped is not None:
        return f"an IPv4-mapped IPv6 address (of {ip.ipv4_mapped})"
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        problem = _ipv4_problem(embedded)
        return f"an IPv6 address embedding {embedded}, {problem}" if problem else None
    if ip in LOCAL_NAT64:
        return "a local-use NAT64 address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local or ip.is_site_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return None


def _embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address inside a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address."""
    if ip in NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _refuse_blocked(ip: IPAddress, spelled: str, allow: bool) -> None:
    problem = address_problem(ip, allow_private=allow)
    if problem:
        means = "" if spelled == str(ip) else f" (means {ip})"
        raise UnsafeWebhookUrl(f"{spelled}{means} is {problem}; webhooks must reach the internet.")


def resolve_checked(target: WebhookTarget, *, allow_private: bool) -> list[SockAddress]:
    """Every address `target.host` resolves to, each checked; UnsafeWebhookUrl if any one
    is refused (a name with one private answer among public ones is refused whole)."""
    try:
        answers = socket.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError) as error:
        raise ResolutionFailed(f"cannot resolve {target.host}: {error}") from None
    addresses: list[SockAddress] = []
    for family, _type, _proto, _name, sockaddr in answers:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        problem = address_problem(ip, allow_private=allow_private)
        if problem:
            raise UnsafeWebhookUrl(f"{target.host} resolves to {ip}, {problem}.")
        if (family, sockaddr) not in addresses:
            addresses.append((family, sockaddr))
    if not addresses:
        raise ResolutionFailed(f"{target.host} has no IPv4 or IPv6 address.")
    return addresses
