"""CalDAV DNS SRV discovery against a real DNS server on 127.0.0.1 (calsync.testing.dns) and a
real Radicale: what is looked up, in which order, what each failure says, and that the URL DNS
found leads through CalDAV discovery to the account's calendars."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from calsync.providers.base import InvalidConfiguration
from calsync.providers.caldav import CalDAVProvider
from calsync.providers.caldav.srv import (
    MAX_TXT_STRINGS,
    DiscoveryFailed,
    DiscoveryUnavailable,
    discover,
)
from calsync.testing.dns import DnsResponder
from tests.fixtures.radicale import USERS, CalDAVCalendar

pytestmark = pytest.mark.integration

DOMAIN = "example.test"
SECURE = f"_caldavs._tcp.{DOMAIN}"
PLAIN = f"_caldav._tcp.{DOMAIN}"


@pytest.fixture
def dns() -> Iterator[DnsResponder]:
    with DnsResponder() as responder:
        yield responder


async def lookup(dns: DnsResponder, *, insecure: bool = False, lifetime: float = 5.0) -> str:
    found = await discover(
        DOMAIN,
        allow_insecure_http=insecure,
        nameservers=[dns.nameserver],
        lifetime=lifetime,
        rng=random.Random(0),
    )
    return found.url


async def test_the_tls_service_and_its_path(dns: DnsResponder) -> None:
    dns.add(SECURE, "SRV", "10 1 443 dav.example.test.")
    dns.add(SECURE, "TXT", '"txtvers=1" "path=/caldav/"')
    assert await lookup(dns) == "https://dav.example.test/caldav/"


async def test_without_a_txt_path_the_well_known_url_of_the_target(dns: DnsResponder) -> None:
    dns.add(SECURE, "SRV", "10 1 8443 dav.example.test.")
    assert await lookup(dns) == "https://dav.example.test:8443/.well-known/caldav"


async def test_priority_decides_between_targets(dns: DnsResponder) -> None:
    dns.add(SECURE, "SRV", "20 100 443 backup.example.test.")
    dns.add(SECURE, "SRV", "10 1 443 primary.example.test.")
    assert await lookup(dns) == "https://primary.example.test/.well-known/caldav"


async def test_tls_wins_over_plain_http_even_when_plain_is_allowed(dns: DnsResponder) -> None:
    dns.add(SECURE, "SRV", "0 1 443 tls.example.test.")
    dns.add(PLAIN, "SRV", "0 1 80 plain.example.test.")
    assert await lookup(dns, insecure=True) == "https://tls.example.test/.well-known/caldav"
    assert (PLAIN + ".", "SRV") not in dns.queries


async def test_plain_http_is_never_looked_up_without_allow_insecure_http(
    dns: DnsResponder,
) -> None:
    dns.add(PLAIN, "SRV", "0 1 5232 localhost.")
    with pytest.raises(DiscoveryFailed) as caught:
        await lookup(dns)
    assert (PLAIN + ".", "SRV") not in dns.queries
    message = str(caught.value)
    assert f"{SECURE} has no SRV record" in message
    assert "allowInsecureHTTP" in message and "spec.caldav.url" in message
    assert await lookup(dns, insecure=True) == "http://localhost:5232/.well-known/caldav"


async def test_an_unknown_domain_is_a_configuration_error(dns: DnsResponder) -> None:
    with pytest.raises(DiscoveryFailed, match=f"no CalDAV server found for {DOMAIN}") as caught:
        await lookup(dns, insecure=True)
    assert not caught.value.retryable
    assert caught.value.reason == "DNSDiscoveryFailed"


async def test_a_dot_target_says_no_caldav_here_and_plain_http_is_asked_next(
    dns: DnsResponder,
) -> None:
    dns.add(SECURE, "SRV", "0 0 0 .")
    with pytest.raises(DiscoveryFailed, match="not offered"):
        await lookup(dns)
    dns.add(PLAIN, "SRV", "0 0 5232 localhost.")
    assert await lookup(dns, insecure=True) == "http://localhost:5232/.well-known/caldav"


async def test_a_silent_nameserver_is_retried_later_and_never_downgrades(
    dns: DnsResponder,
) -> None:
    dns.add(PLAIN, "SRV", "0 1 5232 localhost.")
    dns.silence(SECURE)
    with pytest.raises(DiscoveryUnavailable, match="timed out") as caught:
        await lookup(dns, insecure=True, lifetime=1.0)
    assert caught.value.retryable
    assert (PLAIN + ".", "SRV") not in dns.queries


async def test_a_huge_txt_answer_comes_over_tcp_and_is_read_only_so_far(
    dns: DnsResponder,
) -> None:
    dns.add(SECURE, "SRV", "0 1 443 dav.example.test.")
    junk = " ".join(['"' + "x" * 250 + '"'] * (MAX_TXT_STRINGS + 20))
    dns.add(SECURE, "TXT", junk + ' "path=/too-late/"')
    assert await lookup(dns) == "https://dav.example.test/.well-known/caldav"
    dns.clear()
    dns.add(SECURE, "SRV", "0 1 443 dav.example.test.")
    dns.add(SECURE, "TXT", '"path=/dav/" ' + " ".join(['"' + "y" * 250 + '"'] * 100))
    assert await lookup(dns) == "https://dav.example.test/dav/"


async def test_hostile_srv_targets_are_skipped(dns: DnsResponder) -> None:
    dns.add(SECURE, "SRV", "0 1 443 bad\\032name.example.test.")
    dns.add(SECURE, "SRV", "0 1 0 zero-port.example.test.")
    with pytest.raises(DiscoveryFailed, match="no usable SRV record"):
        await lookup(dns)
    dns.add(SECURE, "SRV", "5 1 443 fine.example.test.")
    assert await lookup(dns) == "https://fine.example.test/.well-known/caldav"


async def test_the_discovered_url_leads_to_the_calendars(
    dns: DnsResponder, caldav_calendar: CalDAVCalendar
) -> None:
    port = caldav_calendar.server.port
    dns.add(PLAIN, "SRV", f"0 1 {port} localhost.")
    dns.add(PLAIN, "TXT", f'"path=/{caldav_calendar.user}/"')
    url = await lookup(dns, insecure=True)
    assert url == f"http://localhost:{port}/{caldav_calendar.user}/"
    for start in (url, f"http://localhost:{port}/.well-known/caldav"):
        provider = CalDAVProvider(
            start,
            caldav_calendar.user,
            USERS[caldav_calendar.user],
            allow_insecure_http=True,
            allow_private_addresses=True,
        )
        async with provider:
            ids = [c.id for c in await provider.list_calendars()]
        assert caldav_calendar.path in ids, (start, ids)


async def test_a_private_target_meets_the_url_guard(dns: DnsResponder) -> None:
    dns.add(PLAIN, "SRV", "0 1 5232 localhost.")
    url = await lookup(dns, insecure=True)
    provider = CalDAVProvider(url, "alice", "pw", allow_insecure_http=True)
    async with provider:
        with pytest.raises(InvalidConfiguration, match="loopback"):
            await provider.list_calendars()
