"""Where low-balance webhooks may go: not to the sidecar's own network (SSRF).

A webhook URL is given by an operator on a tenant's behalf, and the sidecar sits inside the
operator's network: a URL naming 127.0.0.1, a cloud metadata address or a private host would
make the sidecar a proxy into that network. So, unless ``SIDECAR_NOTIFY_ALLOW_PRIVATE``:

- when a URL is saved, :func:`saved_url_refusal` refuses a host that is a disallowed literal
  address (in any spelling the resolver would accept: IPv4-mapped IPv6, ``0177.0.0.1``,
  ``2130706433``) or a ``localhost`` name;
- when a webhook is sent, the address check runs on the URL, and :class:`GuardedResolver` drops
  every resolved address that is disallowed (a name resolving to 10.0.0.5). aiohttp connects
  to exactly the addresses the resolver returned, so a DNS answer that changes between the
  check and the connection (rebinding) cannot switch the target.

Disallowed: loopback, link-local, private (RFC 1918, ULA fc00::/7), shared (CGNAT
100.64.0.0/10), multicast, unspecified, and reserved or documentation ranges; IPv6 forms that
embed an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by that address.
"""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_ALLOW = "set SIDECAR_NOTIFY_ALLOW_PRIVATE=true to allow such addresses"


class RefusedAddress(Exception):
    """Every address a webhook host resolved to is one webhooks may not reach."""


def address_refusal(ip: IPAddress) -> str | None:
    """What kind of address ``ip`` is if webhooks may not reach it, else None."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_refusal(embedded)
        if ip in _NAT64_LOCAL:
            return "private"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared (CGNAT)"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def _literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form a resolver would take as an address."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # legacy IPv4 forms getaddrinfo still accepts: 0177.0.0.1, 0x7f.1, 2130706433
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def webhook_host(url: str) -> str:
    """The host part of a webhook URL (lowercase, IPv6 without brackets); '' if it has none.
    Deliveries in flight are limited per host."""
    try:
        return (URL(url).host or "").rstrip(".")
    except ValueError:
        return ""


def url_refusal(url: str, *, allow_private: bool) -> str | None:
    """Why a webhook may not go to ``url`` as written (its scheme, or a host that is an
    address), else None. Checked before each delivery: aiohttp does not ask the resolver about
    a host that is an address."""
    try:
        parsed = URL(url)
    except ValueError:
        return "is not a valid URL"
    if parsed.scheme not in ("http", "https"):
        return "must be an http(s) URL"
    host = (parsed.host or "").rstrip(".")
    if not host:
        return "has no host"
    ip = _literal(host)
    if ip is not None and isinstance(ip, ipaddress.IPv4Address) and str(ip) != host:
        # aiohttp refuses these spellings at delivery; and they hide what they point at.
        return f"spells {ip} in a legacy form: write IPv4 addresses as four decimal numbers"
    if allow_private:
        return None
    kind = None if ip is None else address_refusal(ip)
    if kind is not None:
        return f"points at a non-public address ({kind}: {ip}); {_ALLOW}"
    return None


def saved_url_refusal(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` may not be saved as a webhook endpoint, else None: :func:`url_refusal`,
    and names that are loopback by definition (RFC 6761). Other names are judged by what
    they resolve to when a webhook is sent."""
    refused = url_refusal(url, allow_private=allow_private)
    if refused is not None or allow_private:
        return refused
    host = webhook_host(url)
    if host == "localhost" or host.endswith(".localhost"):
        return f"points at a non-public address (loopback: {host}); {_ALLOW}"
    return None


class GuardedResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver, keeping only addresses webhooks may reach."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if _allowed(r["host"])]
        if not kept:
            raise RefusedAddress(host)
        return kept

    async def close(self) -> None:
        await self._inner.close()


def _allowed(address: str) -> bool:
    try:
        return address_refusal(ipaddress.ip_address(address)) is None
    except ValueError:
        return False


def webhook_session(*, allow_private: bool, limit: int) -> aiohttp.ClientSession:
    """The HTTP client of webhook deliveries: guarded resolver (unless private addresses are
    allowed), at most ``limit`` connections, no proxy from the environment."""
    connector = aiohttp.TCPConnector(
        limit=limit, resolver=None if allow_private else GuardedResolver()
    )
    return aiohttp.ClientSession(connector=connector, trust_env=False)


def error_category(e: BaseException) -> str:
    """A delivery failure as a category, never the OS's text (which names addresses and
    ports): what a webhook's ``last_error`` may show without mapping the network."""
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    if any(isinstance(c, RefusedAddress) for c in chain):
        return "refused_address"
    if any(isinstance(c, TimeoutError) for c in chain):
        return "timeout"
    if any(isinstance(c, aiohttp.ClientSSLError) for c in chain):
        return "tls_error"
    if any(isinstance(c, socket.gaierror) for c in chain):
        return "dns_failed"
    if any(isinstance(c, (aiohttp.InvalidURL, ValueError)) for c in chain):
        return "invalid_url"
    return "connection_failed"
