"""Where a webhook may go: the URL's shape, and the addresses its host resolves to.

A webhook makes our server send a request to a URL a user chose, so it is a way into
every network our server can reach (SSRF). A URL is refused unless it is ``https``
(``http`` too in dev), names no credentials, and its host resolves **only** to public
addresses (not loopback, private, link-local such as the cloud metadata service at
169.254.169.254, shared, multicast or reserved), except networks the operator allows.

The check runs twice: at submission (a clear 422 at once) and before each delivery,
and the delivery then connects to the very address it checked (DNS rebinding: a name
that resolved to a public address at submission may resolve to 127.0.0.1 later).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Target", "WebhookTargetRefused", "check_url", "resolve_target"]

MAX_URL_LENGTH = 2048
_RESOLVE_TIMEOUT_S = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookTargetRefused(ValueError):
    """The URL may not be called; the message says why, in words for its author."""


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
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _refusal(address: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why ``address`` may not be called, or None."""
    if address.version == 6 and address.ipv4_mapped is not None:  # ::ffff:127.0.0.1
        address = address.ipv4_mapped
    if any(address in network for network in allowed):
        return None
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (such as a cloud metadata service)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private or not address.is_global:
        return "a private or reserved address"
    return None


def _networks(allow_networks: Sequence[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(entry, strict=False) for entry in allow_networks]


async def resolve_target(url: str, *, allow_http: bool,
                         allow_networks: Sequence[str]) -> Target:
    """``url`` checked whole: its shape, then every address its host resolves to.

    Every address must be allowed, not just the first: a host with one public and one
    private record would otherwise be a coin toss for an attacker to win.
    """
    scheme, host, port = check_url(url, allow_http=allow_http)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), _RESOLVE_TIMEOUT_S)
    except (OSError, TimeoutError):
        raise WebhookTargetRefused(f"webhook_url's host {host!r} does not resolve") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0])
                                   for info in infos))  # "%eth0": an IPv6 scope
    if not addresses:
        raise WebhookTargetRefused(f"webhook_url's host {host!r} does not resolve")
    allowed = _networks(allow_networks)
    for address in addresses:
        why = _refusal(address, allowed)
        if why is not None:
            raise WebhookTargetRefused(
                f"webhook_url's host {host!r} resolves to {address}, {why}; webhooks go "
                "only to public addresses")
    return Target(url=url, scheme=scheme, host=host, port=port, address=str(addresses[0]))
