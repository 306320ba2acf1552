"""Where a webhook may go, as a class of addresses, and how names are looked up.

The address policy is checked on every form an internal address can take (each IANA
special-purpose block, IPv4 embedded in IPv6 by mapping, NAT64 or 6to4, literal and
numeric spellings); the resolver on names whose DNS never answers."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time

import pytest

from web_backend.webhooks.targets import (
    Resolver,
    ResolverBusy,
    WebhookTargetRefused,
    check_url,
    is_public,
    resolve_target,
)

NOT_PUBLIC = [
    # IPv4 special-purpose blocks, first and last addresses where it matters
    "0.0.0.0", "0.255.255.255", "10.0.0.1", "10.255.255.255", "100.64.0.1",
    "100.127.255.254", "127.0.0.1", "127.8.9.10", "169.254.169.254", "172.16.3.4",
    "172.31.255.255", "192.0.0.8", "192.0.0.170", "192.0.2.1", "192.31.196.1",
    "192.52.193.1", "192.88.99.1", "192.168.1.1", "192.175.48.1", "198.18.0.1",
    "198.19.255.254", "198.51.100.7", "203.0.113.9", "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.255",
    # IPv6 outside global unicast
    "::", "::1", "::127.0.0.1", "::ffff:0:127.0.0.1", "::ffff:0:8.8.8.8", "100::1",
    "fc00::1", "fd00::1", "fe80::1", "fec0::1", "ff02::1", "64:ff9b:1::1",
    # IPv4 embedded in IPv6: judged as the IPv4 address it reaches
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    "64:ff9b::127.0.0.1", "64:ff9b::a9fe:a9fe", "64:ff9b::192.168.0.1",
    # reserved blocks inside 2000::/3
    "2002:7f00:1::", "2002:808:808::1", "2001::1", "2001:0:4136:e378::1", "2001:db8::1",
    "2001:10::1", "3fff::1", "3ffe::1", "2620:4f:8000::1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "192.0.1.1", "192.169.0.1", "172.32.0.1",
          "100.128.0.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
          "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_internal_reserved_and_disguised_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_allowed_networks_also_match_an_embedded_address() -> None:
    allowed = [ipaddress.ip_network("127.0.0.1/32")]
    assert is_public(ipaddress.ip_address("127.0.0.1"), allowed)
    assert is_public(ipaddress.ip_address("::ffff:127.0.0.1"), allowed)
    assert not is_public(ipaddress.ip_address("127.0.0.2"), allowed)


@pytest.mark.parametrize(("url", "says"), [
    ("https://example.com\r/hook", "printable ASCII"),         # urlsplit would drop it
    ("https://exa\nmple.com/hook", "printable ASCII"),
    ("https://example.com/ho ok", "printable ASCII"),
    ("https://example.com/\u2028", "printable ASCII"),
    ("https://bücher.example/hook", "xn--"),
    ("https://example.com:0/hook", "port 0"),
    ("https://example.com:99999/hook", "not a valid URL"),
])
def test_urls_the_http_client_would_refuse_are_refused_first(url: str, says: str) -> None:
    with pytest.raises(WebhookTargetRefused, match=says):
        check_url(url, allow_http=False)


def _resolve(resolver: Resolver, url: str, owner: object = None) -> str:
    async def run() -> str:
        target = await resolve_target(url, allow_http=True, allow_networks=[],
                                      resolver=resolver, owner=owner)
        return target.address
    return asyncio.run(run())


@pytest.mark.parametrize("url", ["http://[::127.0.0.1]/", "http://[::ffff:0:127.0.0.1]/",
                                 "http://[64:ff9b::127.0.0.1]/", "http://[2002:7f00:1::]/",
                                 "http://192.0.0.8/", "http://localhost/", "http://2130706433/",
                                 "http://0x7f.1/"])
def test_refusals_never_name_the_address(url: str) -> None:
    resolver = Resolver()
    try:
        with pytest.raises(WebhookTargetRefused) as refused:
            _resolve(resolver, url)
    finally:
        resolver.close()
    message = str(refused.value)
    assert "only to public addresses" in message
    for leak in ("127.0.0.1", "loopback", "private", "reserved", "link-local", "::1"):
        assert leak not in message, message


class StuckDNS:
    """A system resolver that never answers names ending in ``.stuck`` (until released)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, host: str, port: int, **_: object) -> list[tuple]:
        self.calls += 1
        if host.endswith(".stuck"):
            self.release.wait(30)
            raise OSError("timed out")
        return [(2, 1, 6, "", ("93.184.216.34", port))]


def test_names_that_never_resolve_cannot_starve_other_lookups() -> None:
    dns = StuckDNS()
    resolver = Resolver(max_in_flight=4, per_owner=2, timeout_s=0.3, lookup=dns)
    try:
        started = time.monotonic()
        with pytest.raises(WebhookTargetRefused, match="does not resolve"):
            _resolve(resolver, "https://a.stuck/", owner=1)
        assert time.monotonic() - started < 2  # the caller waits its deadline, not the DNS
        with pytest.raises(WebhookTargetRefused, match="does not resolve"):
            _resolve(resolver, "https://b.stuck/", owner=1)
        # account 1 has two lookups still stuck: its third is refused at once
        with pytest.raises(ResolverBusy, match="your earlier"):
            _resolve(resolver, "https://example.com/", owner=1)
        assert _resolve(resolver, "https://example.com/", owner=2) == "93.184.216.34"
        for name in ("c", "d"):
            with pytest.raises(WebhookTargetRefused):
                _resolve(resolver, f"https://{name}.stuck/", owner=name)
        # four stuck in all: everyone is refused at once (not queued behind them)...
        started = time.monotonic()
        with pytest.raises(ResolverBusy, match="too many"):
            _resolve(resolver, "https://example.com/", owner=3)
        assert time.monotonic() - started < 0.2
        # ...until the system resolver gives up on them
        dns.release.set()
        deadline = time.monotonic() + 5
        while resolver.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _resolve(resolver, "https://example.com/", owner=1) == "93.184.216.34"
    finally:
        dns.release.set()
        resolver.close()
