"""Where a webhook may go: the URL's shape, and the addresses its host resolves to.

A webhook makes our server send a request to a URL a user chose, so it is a way into
every network our server can reach (SSRF). A URL is refused unless it is ``https``
(``http`` too in dev), is printable ASCII, names no credentials and no port 0, and its
host resolves **only** to public addresses, except networks the operator allows.

"Public" is decided here, from the IANA special-purpose registries, not from
:mod:`ipaddress`'s ``is_global`` (which calls ``192.0.0.8``, ``::127.0.0.1`` and
``64:ff9b::127.0.0.1`` global on this Python). IPv4 addresses embedded in IPv6 ones
(IPv4-mapped ``::ffff:a.b.c.d`` and NAT64 ``64:ff9b::a.b.c.d``, which a translator
turns into that IPv4 address) are unwrapped and judged as IPv4; IPv6 outside global
unicast (``2000::/3``) and the reserved blocks inside it (6to4, Teredo, documentation)
are refused.

Names are resolved by :class:`Resolver`: its own few threads (never the event loop's
shared pool), a deadline per lookup, a bound on lookups in flight, per account too,
so that names whose DNS never answers cannot starve anyone else's. Refusals never
name the address a host resolves to (that would make the check a DNS oracle into
our network).

The check runs twice: at submission (a clear 422 at once) and before each delivery,
and the delivery then connects to the very address it checked (DNS rebinding: a name
that resolved to a public address at submission may resolve to 127.0.0.1 later).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = ["Resolver", "ResolverBusy", "Target", "WebhookTargetRefused", "check_url",
           "is_public", "resolve_target"]

MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IANA IPv4 special-purpose address registry, multicast and the reserved 240/4
_NOT_PUBLIC_V4: Final = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24",
    "192.88.99.0/24", "192.168.0.0/16", "192.175.48.0/24", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4"))
_GLOBAL_UNICAST_V6: Final = ipaddress.IPv6Network("2000::/3")
# reserved inside 2000::/3: IETF protocol assignments (Teredo among them), documentation,
# 6to4 (an IPv4 address in disguise), AS112, the old 6bone
_NOT_PUBLIC_V6: Final = tuple(ipaddress.IPv6Network(n) for n in (
    "2001::/23", "2001:db8::/32", "2002::/16", "2620:4f:8000::/48", "3fff::/20",
    "3ffe::/16"))
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


class WebhookTargetRefused(ValueError):
    """The URL may not be called; the message says why, in words for its author."""


class ResolverBusy(Exception):
    """Too many lookups are in flight (for this account, or for this process)."""


@dataclass(frozen=True)
class Target:
    """A checked webhook URL and the address to connect to."""

    url: str
    scheme: str
    host: str          # as written (the Host header, TLS server name)
    port: int
    address: str       # the resolved, allowed address the request goes to


def check_url(url: str, *, allow_http: bool) -> tuple[str, str, int]:
    """The URL's (scheme, host, port) if its shape is acceptable, else refused."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookTargetRefused(f"webhook_url is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or " " in url:
        # urlsplit drops tabs and line breaks silently; the HTTP client would refuse them
        raise WebhookTargetRefused("webhook_url must be printable ASCII without spaces "
                                   "(write a non-ASCII host name in its xn-- form)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookTargetRefused("webhook_url is not a valid URL") from None
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed:
        raise WebhookTargetRefused(
            "webhook_url must start with https://" + (" or http://" if allow_http else ""))
    if not parts.hostname:
        raise WebhookTargetRefused("webhook_url has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookTargetRefused("webhook_url may not carry a user name or password; "
                                   "verify our signature instead")
    if parts.fragment:
        raise WebhookTargetRefused("webhook_url may not have a #fragment")
    if port == 0:
        raise WebhookTargetRefused("webhook_url may not name port 0")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _unwrapped(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries where it is reached as that IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:                  # ::ffff:a.b.c.d
            return address.ipv4_mapped
        if address in _NAT64:                                # 64:ff9b::a.b.c.d
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def is_public(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> bool:
    """Whether a webhook may connect to ``address`` (or it is in an ``allowed`` network)."""
    for candidate in {address, _unwrapped(address)}:
        if any(candidate.version == net.version and candidate in net for net in allowed):
            return True
    address = _unwrapped(address)
    if isinstance(address, ipaddress.IPv4Address):
        return not any(address in net for net in _NOT_PUBLIC_V4)
    return address in _GLOBAL_UNICAST_V6 and not any(address in net for net in _NOT_PUBLIC_V6)


def _networks(allow_networks: Sequence[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(entry, strict=False) for entry in allow_networks]


class Resolver:
    """Host names to addresses on threads of its own, bounded in time and in flight.

    A lookup that outlives ``timeout_s`` is refused as "does not resolve", but its
    thread runs on until the system resolver gives up, and it keeps its place in
    ``max_in_flight`` (and its account's in ``per_owner``) until then: new lookups
    beyond those bounds are refused at once (:class:`ResolverBusy`) rather than queued
    behind names that never answer.
    """

    def __init__(self, *,
                 max_in_flight: int = 16,      # lookups at once in this process
                 per_owner:     int = 2,       # of those, one account's
                 timeout_s:     float = 5.0,   # a caller waits this long for an answer
                 lookup:        Callable[..., list[Any]] = socket.getaddrinfo,
                 ) -> None:
        self.lookup = lookup
        self.max_in_flight = max_in_flight
        self.per_owner = per_owner
        self.timeout_s = timeout_s
        self._pool: ThreadPoolExecutor | None = None  # made on first use (and after close)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._by_owner: Counter[object] = Counter()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _take(self, owner: object) -> None:
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                raise ResolverBusy("too many webhook host names are being looked up")
            if owner is not None and self._by_owner[owner] >= self.per_owner:
                raise ResolverBusy("your earlier webhook host names are still being looked up")
            self._in_flight += 1
            if owner is not None:
                self._by_owner[owner] += 1

    def _give_back(self, owner: object) -> None:
        with self._lock:
            self._in_flight -= 1
            if owner is not None:
                self._by_owner[owner] -= 1
                if self._by_owner[owner] <= 0:
                    del self._by_owner[owner]

    def _lookup(self, host: str, port: int, owner: object) -> list[IPAddress]:
        try:
            infos = self.lookup(host, port, type=socket.SOCK_STREAM)
        finally:
            self._give_back(owner)  # when the system resolver is done, not when we stop waiting
        return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0])
                                  for info in infos))  # "%eth0": an IPv6 scope

    async def resolve(self, host: str, port: int, *, owner: object = None) -> list[IPAddress]:
        """Every address ``host`` resolves to; refuses when it does not resolve in time,
        raises :class:`ResolverBusy` when the bounds are reached."""
        try:  # a literal address needs no lookup (and no thread)
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        self._take(owner)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.max_in_flight,
                                            thread_name_prefix="webhook-dns")
        future = asyncio.get_running_loop().run_in_executor(
            self._pool, self._lookup, host, port, owner)
        try:
            addresses = await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except (OSError, TimeoutError, UnicodeError):
            raise WebhookTargetRefused(f"webhook_url's host {host!r} does not resolve") from None
        if not addresses:
            raise WebhookTargetRefused(f"webhook_url's host {host!r} does not resolve")
        return addresses

    def close(self) -> None:
        """Let go of the threads (a lookup still stuck ends with its system resolver); a
        later lookup starts new ones (an app may be served again)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


async def resolve_target(url: str, *, allow_http: bool, allow_networks: Sequence[str],
                         resolver: Resolver, owner: object = None) -> Target:
    """``url`` checked whole: its shape, then every address its host resolves to.

    Every address must be allowed, not just the first: a host with one public and one
    private record would otherwise be a coin toss for an attacker to win.
    """
    scheme, host, port = check_url(url, allow_http=allow_http)
    addresses = await resolver.resolve(host, port, owner=owner)
    allowed = _networks(allow_networks)
    if not all(is_public(address, allowed) for address in addresses):
        raise WebhookTargetRefused("webhook_url's host is not a public address or resolves "
                                   "to one that is not; webhooks go only to public addresses")
    return Target(url=url, scheme=scheme, host=host, port=port, address=str(addresses[0]))
