"""SSRF guard: decide whether a URL may be fetched, before any connection is made.

A URL is refused when its host is (or resolves to) an address outside the public internet:
loopback, private, link-local, cloud metadata, unspecified, multicast, reserved, CGNAT, and
the IPv4 addresses hidden inside IPv6 forms (::ffff:a.b.c.d, 6to4, NAT64). The `allow` string
(comma-separated hostnames, IPs or CIDRs) opens exceptions, e.g. "127.0.0.1,localhost" in tests.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from flashhead import constants as C
from flashhead.errors import FetchError, InputError, LimitExceeded, UnsafeURLError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_IPS = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254"))
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SCHEMES = ("http", "https")
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class Allow:
    """Parsed allow-list: hostnames (lower case, no trailing dot) and networks."""

    hosts: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def permits_host(self, host: str) -> bool:
        return host in self.hosts

    def permits_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)


def parse_allow(allow: str) -> Allow:
    hosts, networks = set(), []
    for item in (s.strip() for s in allow.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            hosts.add(item.lower().rstrip("."))
    return Allow(frozenset(hosts), tuple(networks))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_kind(ip: IPAddress | str) -> str | None:
    """What kind of non-public address `ip` is ("a loopback address", ...; of the IPv4 address
    inside an IPv6 form), or None when it is a public unicast address."""
    ip = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    inner = _embedded_ipv4(ip) if ip.version == 6 else None
    if inner is not None:
        return address_kind(inner)
    checks = (
        (ip in METADATA_IPS, "a cloud metadata address"),
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.version == 4 and ip in CGNAT, "a carrier-grade NAT address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (not ip.is_global, "not a public address"),
    )
    return next((why for bad, why in checks if bad), None)


def check_address(ip: IPAddress | str) -> str | None:
    """Why `ip` must not be fetched from, or None when it is a public unicast address."""
    ip = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    kind = address_kind(ip)
    inner = _embedded_ipv4(ip) if ip.version == 6 else None
    if kind is None or inner is None:
        return kind and f"{ip} is {kind}"
    return f"{inner} is {kind} (inside {ip})"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve(host: str, port: int, *, field: str | None = None) -> list[IPAddress]:
    """All addresses `host` stands for; an IP literal resolves to itself without DNS."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):   # the resolver's own words (errno) stay here
        raise FetchError(f"cannot resolve host {host!r}", field=field) from None
    ips = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if ip not in ips:
            ips.append(ip)
    return ips


def url_scheme(value: str) -> str:
    """The scheme of a URL or URI, lower case ("" if none), without urlsplit: urllib caches
    urlsplit's last 128 answers, each holding the URL twice, so a data: URI of megabytes must
    never go through it (20 portraits of 4 MB stayed as 163 MB)."""
    m = _SCHEME.match(value)
    return m[1].lower() if m else ""


def check_url_length(url: str, field: str | None = None) -> None:
    """An http(s) input or webhook URL is at most MAX_URL_CHARS long."""
    if len(url) > C.MAX_URL_CHARS:
        raise LimitExceeded(f"the URL is {len(url)} characters; the limit is {C.MAX_URL_CHARS}", field=field)


def split_url(url: str, field: str | None = None) -> SplitResult:
    """urlsplit of an http(s) URL at most MAX_URL_CHARS long, with a malformed URL (e.g. an
    unclosed IPv6 bracket) refused as bad input."""
    check_url_length(url, field)
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise InputError(f"the URL is malformed: {exc}", field=field) from None


def guard_url(url: str, allow: str | Allow = "", *, field: str | None = None) -> list[IPAddress]:
    """Check `url` and return the addresses it may be fetched from (connect to these only).

    Raises UnsafeURLError when the scheme is not http(s), the host is a metadata name, or any
    address it resolves to is non-public and not opened by `allow`.
    """
    allow = parse_allow(allow) if isinstance(allow, str) else allow
    parts = split_url(url, field)
    if parts.scheme.lower() not in SCHEMES:
        raise UnsafeURLError(f"only http and https URLs can be fetched, not {parts.scheme!r}", field=field)
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURLError("the URL has no host", field=field)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise UnsafeURLError("the URL has an invalid port", field=field) from None
    if host in METADATA_HOSTS:
        raise UnsafeURLError(f"{host} is a cloud metadata host", field=field)
    ips = resolve(host, port, field=field)
    if allow.permits_host(host):
        return ips
    literal = _is_ip(host)
    for ip in ips:
        if allow.permits_ip(ip) or address_kind(ip) is None:
            continue
        # a name: what it resolves to, not the address (no map of internal names for key holders)
        reason = check_address(ip) if literal else f"it resolves to {address_kind(ip)}"
        raise UnsafeURLError(f"refusing to fetch {host}: {reason}", field=field)
    return ips
