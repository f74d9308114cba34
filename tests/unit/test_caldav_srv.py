"""CalDAV DNS SRV discovery (RFC 6764, docs/decisions/0015): the pure parts.

How SRV records are ordered and which are usable, how the TXT `path=` is read and what hostile
answers are ignored, the `spec.caldav.domain` field and the `dns_nameservers` setting, and how
the provider factory judges what DNS found (the URL guard and the Secret's allowed host apply
to the SRV target, the host actually contacted). tests/integration/test_caldav_srv.py asks a
real (local) DNS server.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError

from calsync.api import CalendarConnectionSpec
from calsync.api.connection import (
    MSG_CALDAV_URL_REQUIRED,
    MSG_DOMAIN_MALFORMED,
    MSG_URL_AND_DOMAIN,
)
from calsync.controllers import provider_factory
from calsync.controllers.credentials import SecretData, evaluate, refusal
from calsync.controllers.policy import scope_digest
from calsync.controllers.provider_factory import ProviderDeps, build_provider
from calsync.providers.base import InvalidConfiguration
from calsync.providers.caldav import CalDAVProvider
from calsync.providers.caldav.srv import (
    MAX_PATH_LENGTH,
    MAX_SRV_RECORDS,
    MAX_TXT_STRINGS,
    Discovered,
    DiscoveryFailed,
    SrvRecord,
    context_path,
    normalize_domain,
    order_srv,
    parse_nameserver,
    refuses_service,
    service_url,
    usable_target,
)
from calsync.settings import Settings, SettingsError, load_settings

pytestmark = pytest.mark.unit

CALDAV_DATA = {"username": b"alice", "password": b"pw-srv-secret"}


def srv(priority: int, weight: int, target: str, port: int = 443) -> SrvRecord:
    return SrvRecord(priority, weight, port, target)


# -- SRV ordering (RFC 2782) ------------------------------------------------------------------


def test_lowest_priority_comes_first_whatever_the_weights() -> None:
    records = [srv(20, 100, "b.example"), srv(10, 0, "a.example"), srv(30, 5, "c.example")]
    for seed in range(20):
        ordered = order_srv(records, random.Random(seed))
        assert [r.target for r in ordered] == ["a.example", "b.example", "c.example"]


def test_weights_share_the_load_within_one_priority() -> None:
    records = [srv(10, 1, "light.example"), srv(10, 3, "heavy.example")]
    rng = random.Random(1234)
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(4000))
    share = firsts["heavy.example"] / 4000
    assert 0.70 < share < 0.80, firsts  # 3/4 by weight


def test_zero_weights_are_picked_rarely_but_never_lost() -> None:
    records = [srv(10, 0, "zero.example"), srv(10, 50, "main.example")]
    rng = random.Random(7)
    runs = [order_srv(records, rng) for _ in range(2000)]
    assert all(len(r) == 2 for r in runs)
    firsts = Counter(r[0].target for r in runs)
    assert firsts["main.example"] > 1900, firsts


def test_only_zero_weights_keep_every_record() -> None:
    records = [srv(1, 0, "a.example"), srv(1, 0, "b.example")]
    assert {r.target for r in order_srv(records, random.Random(0))} == {"a.example", "b.example"}


def test_a_lone_dot_target_means_the_service_is_not_offered() -> None:
    assert refuses_service([srv(0, 0, ".")])
    assert refuses_service([srv(0, 0, "")])
    assert not refuses_service([srv(0, 0, "dav.example")])
    assert order_srv([srv(0, 0, ".")]) == []


@pytest.mark.parametrize(
    "target",
    [
        ".",
        "dav example.com",
        "dav\\000.example.com",
        "dav/evil.example.com",
        "user@dav.example.com",
        "dav.example.com:8443",
        "[::1]",
        "a" * 64 + ".example.com",
        ("a" * 60 + ".") * 5 + "example",
    ],
)
def test_targets_no_url_can_carry_are_skipped(target: str) -> None:
    assert usable_target(target) is None
    records = [srv(0, 10, target), srv(5, 10, "ok.example.com")]
    assert [r.target for r in order_srv(records)] == ["ok.example.com"]


def test_port_zero_is_skipped() -> None:
    assert order_srv([srv(0, 1, "dav.example.com", port=0)]) == []


def test_a_flood_of_records_is_cut_to_the_first_ones() -> None:
    flood = [srv(i, 1, f"h{i}.example.com") for i in range(MAX_SRV_RECORDS * 100)]
    ordered = order_srv(flood)
    assert len(ordered) == MAX_SRV_RECORDS
    assert ordered[0].target == "h0.example.com"


def test_targets_are_lower_cased_without_the_final_dot() -> None:
    assert usable_target("DAV.Example.COM.") == "dav.example.com"


# -- TXT path (RFC 6764 section 4) ----------------------------------------------------------


def test_the_path_comes_from_the_txt_record() -> None:
    assert context_path([b"path=/caldav/"]) == "/caldav/"
    assert context_path([b"txtvers=1", b"PATH=/dav/users/"]) == "/dav/users/"


@pytest.mark.parametrize(
    "strings",
    [
        [],
        [b"txtvers=1"],
        [b"path"],
        [b"path="],
        [b"path=relative/path"],
        [b"path=https://attacker.example/"],
        [b"path=/with space/"],
        [b"path=/ctrl\x00/"],
        [b"path=/\r\nHost: evil/"],
        ["path=/kalender-ä/".encode()],
        [b"path=/\xff\xfe/"],
        [b"path=/x?query=1"],
        [b"path=/x#fragment"],
        [b"path=/" + b"a" * MAX_PATH_LENGTH],
    ],
)
def test_unusable_paths_fall_back_to_the_well_known_url(strings: list[bytes]) -> None:
    assert context_path(strings) is None


def test_a_huge_txt_answer_is_read_only_so_far() -> None:
    junk = [b"x" * 255] * 10_000
    assert context_path([*junk, b"path=/late/"]) is None
    early = [b"x" * 255] * (MAX_TXT_STRINGS - 1)
    assert context_path([*early, b"path=/in-time/"]) == "/in-time/"


def test_the_first_usable_path_wins() -> None:
    assert context_path([b"path=bad", b"path=/good/", b"path=/later/"]) == "/good/"


# -- URLs, domains, nameservers ---------------------------------------------------------------


def test_service_urls_leave_out_the_default_port() -> None:
    assert service_url("https", "dav.example.com", 443, "/dav/") == "https://dav.example.com/dav/"
    assert service_url("https", "dav.example.com", 8443, "/") == "https://dav.example.com:8443/"
    assert service_url("http", "localhost", 80, "/x/") == "http://localhost/x/"
    assert service_url("http", "localhost", 5232, "/x/") == "http://localhost:5232/x/"


def test_discovered_describes_what_was_found() -> None:
    found = Discovered(
        "example.com",
        "_caldavs._tcp.example.com",
        "dav.example.com",
        443,
        "https://dav.example.com/dav/",
        "TXT",
    )
    text = found.describe()
    assert "_caldavs._tcp.example.com" in text and "https://dav.example.com/dav/" in text


@pytest.mark.parametrize("domain", ["Example.COM", "example.com.", " example.com "])
def test_domains_are_normalised(domain: str) -> None:
    assert normalize_domain(domain) == "example.com"


@pytest.mark.parametrize(
    "domain", ["", "https://example.com", "example.com/dav", "ex ample.com", "a@b.c", "x:1"]
)
def test_non_domains_are_refused(domain: str) -> None:
    with pytest.raises(ValueError, match="not a DNS domain name"):
        normalize_domain(domain)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.53", ("192.0.2.53", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("[2001:db8::53]:5353", ("2001:db8::53", 5353)),
        ("[::1]", ("::1", 53)),
    ],
)
def test_nameservers_are_addresses_with_an_optional_port(
    text: str, expected: tuple[str, int]
) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("text", ["dns.example.com", "127.0.0.1:0", "127.0.0.1:99999", "[::1"])
def test_nameserver_names_and_bad_ports_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(text)


def test_the_dns_nameservers_setting() -> None:
    assert Settings().dns_nameservers == ()
    settings = load_settings(environ={"CALSYNC_DNS_NAMESERVERS": "127.0.0.1:5353, [::1]:53"})
    assert settings.dns_nameservers == ("127.0.0.1:5353", "[::1]:53")
    with pytest.raises(SettingsError, match="dns_nameservers"):
        load_settings(environ={"CALSYNC_DNS_NAMESERVERS": "dns.example.com"})


# -- spec.caldav.domain -----------------------------------------------------------------------


def spec(**caldav: Any) -> dict[str, Any]:
    return {
        "provider": "caldav",
        "caldav": {"credentialsSecretRef": {"name": "dav"}, **caldav},
    }


def test_a_domain_replaces_the_url() -> None:
    parsed = CalendarConnectionSpec.model_validate(spec(domain="example.com"))
    assert parsed.caldav is not None and parsed.caldav.domain == "example.com"
    assert parsed.caldav_url is None


def test_url_or_domain_is_required() -> None:
    with pytest.raises(ValidationError) as caught:
        CalendarConnectionSpec.model_validate(spec())
    assert MSG_CALDAV_URL_REQUIRED in str(caught.value)
    assert "spec.caldav.domain" in MSG_CALDAV_URL_REQUIRED


def test_url_and_domain_are_exclusive() -> None:
    with pytest.raises(ValidationError) as caught:
        CalendarConnectionSpec.model_validate(
            spec(url="https://dav.example.com/", domain="example.com")
        )
    assert MSG_URL_AND_DOMAIN in str(caught.value)


@pytest.mark.parametrize(
    "domain", ["https://example.com/", "example.com/dav", "alice@example.com", "exa mple.com"]
)
def test_a_malformed_domain_is_refused_with_one_message(domain: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CalendarConnectionSpec.model_validate(spec(domain=domain))
    assert MSG_DOMAIN_MALFORMED in str(caught.value)
    assert MSG_URL_AND_DOMAIN not in str(caught.value)


def test_the_domain_is_part_of_the_sync_scope_and_urls_keep_their_digest() -> None:
    by_url = CalendarConnectionSpec.model_validate(spec(url="https://dav.example.com/"))
    one = CalendarConnectionSpec.model_validate(spec(domain="example.com"))
    other = CalendarConnectionSpec.model_validate(spec(domain="example.org"))
    assert len({scope_digest(by_url), scope_digest(one), scope_digest(other)}) == 3
    # Connections by URL keep the digest they had before the domain existed (no full resync).
    assert scope_digest(by_url) == "ef7416b1836330a3"


# -- the provider factory: guard and allowed host on the SRV target --------------------------


def found(host: str, port: int = 443, scheme: str = "https") -> Discovered:
    return Discovered(
        "example.com",
        f"_caldav{'s' if scheme == 'https' else ''}._tcp.example.com",
        host,
        port,
        service_url(scheme, host, port, "/dav/"),
        "TXT",
    )


@pytest.fixture
def dns_answer(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What `discover` returns (or raises) in the provider factory; records its calls."""
    box: list[Any] = []
    calls: list[dict[str, Any]] = []

    async def fake(domain: str, **options: Any) -> Discovered:
        calls.append({"domain": domain, **options})
        if isinstance(box[0], BaseException):
            raise box[0]
        result: Discovered = box[0]
        return result

    monkeypatch.setattr(provider_factory, "discover", fake)
    box.append(calls)  # box[-1] is the call log
    return box


def domain_spec(**extra: Any) -> CalendarConnectionSpec:
    return CalendarConnectionSpec.model_validate(spec(domain="example.com", **extra))


async def test_the_factory_starts_from_the_discovered_url(dns_answer: list[Any]) -> None:
    dns_answer.insert(0, found("93.184.215.14"))
    settings = Settings(dns_nameservers=("127.0.0.1:5353",), provider_timeout=7.0)
    provider = await build_provider(
        domain_spec(),
        {"dav": SecretData(CALDAV_DATA)},
        budget=None,
        deps=ProviderDeps(settings),
    )
    try:
        assert isinstance(provider, CalDAVProvider)
        assert provider.url == "https://93.184.215.14/dav/"
        assert provider.discovered is not None
    finally:
        await provider.aclose()
    (call,) = dns_answer[-1]
    assert call["domain"] == "example.com"
    assert call["nameservers"] == ("127.0.0.1:5353",)
    assert call["allow_insecure_http"] is False


async def test_a_target_the_guard_refuses_is_refused_before_any_request(
    dns_answer: list[Any],
) -> None:
    dns_answer.insert(0, found("127.0.0.1", 5232))
    with pytest.raises(InvalidConfiguration) as caught:
        await build_provider(
            domain_spec(),
            {"dav": SecretData(CALDAV_DATA)},
            budget=None,
            deps=ProviderDeps(Settings()),
        )
    message = str(caught.value)
    assert "_caldavs._tcp.example.com" in message and "loopback" in message
    assert caught.value.reason == "DNSDiscoveryRefused"


async def test_the_allowed_host_is_checked_against_the_srv_target(dns_answer: list[Any]) -> None:
    dns_answer.insert(0, found("dav.attacker.example"))
    data = SecretData(CALDAV_DATA, allowed_host="example.com")
    # Before DNS is asked, the domain alone cannot be judged: the verdict lets it through ...
    assert refusal(domain_spec(), {"dav": data}) is None
    assert evaluate(domain_spec(), {"dav": data}).ready[0] == "True"
    # ... and the factory refuses the host DNS named, before any request.
    with pytest.raises(InvalidConfiguration) as caught:
        await build_provider(
            domain_spec(),
            {"dav": data},
            budget=None,
            deps=ProviderDeps(Settings(allow_private_addresses=True)),
        )
    assert caught.value.reason == "CredentialsHostMismatch"
    message = str(caught.value)
    assert "dav.attacker.example" in message and "_caldavs._tcp.example.com" in message
    assert "pw-srv-secret" not in message


async def test_the_allowed_host_may_be_the_srv_target(dns_answer: list[Any]) -> None:
    dns_answer.insert(0, found("dav.example.com"))
    data = SecretData(CALDAV_DATA, allowed_host="DAV.example.com.")
    provider = await build_provider(
        domain_spec(),
        {"dav": data},
        budget=None,
        deps=ProviderDeps(Settings(allow_private_addresses=True)),
    )
    await provider.aclose()


async def test_dns_failures_reach_the_caller_unchanged(dns_answer: list[Any]) -> None:
    dns_answer.insert(0, DiscoveryFailed("no CalDAV server found for example.com through DNS"))
    with pytest.raises(DiscoveryFailed, match="no CalDAV server found"):
        await build_provider(
            domain_spec(),
            {"dav": SecretData(CALDAV_DATA)},
            budget=None,
            deps=ProviderDeps(Settings()),
        )


async def test_plain_http_is_looked_up_only_when_the_connection_allows_it(
    dns_answer: list[Any],
) -> None:
    dns_answer.insert(0, found("localhost", 5232, "http"))
    provider = await build_provider(
        domain_spec(allowInsecureHTTP=True),
        {"dav": SecretData(CALDAV_DATA)},
        budget=None,
        deps=ProviderDeps(Settings(allow_private_addresses=True)),
    )
    await provider.aclose()
    assert dns_answer[-1][0]["allow_insecure_http"] is True


def test_the_synced_condition_says_where_dns_led() -> None:
    import datetime as dt

    from calsync.controllers import readiness

    conds = readiness.Conditions([], 1, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    how = found("dav.example.com").describe()
    readiness.apply_sync_success(
        conds, events=2, calendars=1, duplicates=None, skipped=[], server=how
    )
    synced, ready = conds.get("Synced"), conds.get("Ready")
    assert synced is not None and ready is not None
    assert synced.message == f"2 events in 1 calendar; server found through DNS: {how}"
    assert ready.status == "True" and how in ready.message


async def test_a_domain_or_nameserver_no_lookup_can_use_is_a_configuration_error() -> None:
    from calsync.providers.caldav.srv import discover

    with pytest.raises(DiscoveryFailed, match="not a DNS domain name"):
        await discover("bücher.example", allow_insecure_http=False, nameservers=["127.0.0.1"])
    with pytest.raises(DiscoveryFailed):
        await discover("example.com", allow_insecure_http=False, nameservers=["dns.example"])
