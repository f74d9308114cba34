"""CalDAVProvider's HTTP rules with a scripted server (httpx.MockTransport): redirects and the
SSRF guard, credential scope, Digest, status mapping, the hardened XML reader."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from calsync.model import Window
from calsync.providers.base import (
    AuthenticationFailed,
    CalendarGone,
    CredentialsRevoked,
    CursorInvalid,
    InvalidConfiguration,
    ProviderError,
    RateLimited,
)
from calsync.providers.caldav import CalDAVProvider, http
from calsync.providers.caldav.xml import HostileXML, Listed, parse_listing, parse_multistatus

pytestmark = pytest.mark.unit

# Literal public addresses: the URL guard needs no DNS for them, and MockTransport never
# connects anywhere.
SERVER = "https://93.184.215.14/dav/"
OTHER = "https://8.8.8.8/"
WINDOW = Window.around(dt.datetime(2025, 1, 1, tzinfo=dt.UTC), 30, 30)

CALENDAR_AT_URL = b"""<?xml version="1.0"?>
<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><d:response>
<d:href>/dav/</d:href><d:propstat><d:prop><d:resourcetype><d:collection/><c:calendar/>
</d:resourcetype><d:displayname>Work</d:displayname></d:prop>
<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>"""


def provider(
    handler: Callable[[httpx.Request], httpx.Response], url: str = SERVER, **options: Any
) -> CalDAVProvider:
    return CalDAVProvider(
        url,
        "alice",
        "s3cret",
        transport=httpx.MockTransport(handler),
        **options,
    )


def basic(request: httpx.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None or not header.startswith("Basic "):
        return None
    return base64.b64decode(header[6:]).decode()


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/dav/",
        "https://[::ffff:127.0.0.1]/dav/",
        "https://[::1]:8443/",
        "https://10.0.0.5/",
        "https://[fd00::5]/",
    ],
)
async def test_redirects_to_private_addresses_are_refused(target: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(301, headers={"Location": target})

    async with provider(handler, allow_insecure_http=True) as dav:
        with pytest.raises(InvalidConfiguration, match="refused unless"):
            await dav.list_calendars()
    assert all(url.startswith("https://93.184.215.14/") for url in seen)


async def test_private_start_url_is_refused_before_any_request() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent")

    async with provider(handler, url="https://192.168.1.10/dav/") as dav:
        with pytest.raises(InvalidConfiguration, match="private"):
            await dav.list_calendars()
    async with provider(handler, url="http://93.184.215.14/dav/") as dav:
        with pytest.raises(InvalidConfiguration, match="plain http"):
            await dav.list_calendars()


async def test_redirect_chains_are_bounded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": str(request.url) + "x/"})

    async with provider(handler) as dav:
        with pytest.raises(ProviderError, match="more than 5 redirects"):
            await dav.list_calendars()


async def test_credentials_follow_redirects_on_their_origin_but_not_to_other_hosts() -> None:
    auth_by_url: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        auth_by_url[str(request.url)] = basic(request)
        if request.url.path == "/dav/":
            return httpx.Response(301, headers={"Location": "/dav/moved/"})
        return httpx.Response(207, content=CALENDAR_AT_URL.replace(b"/dav/", b"/dav/moved/"))

    async with provider(handler) as dav:
        (calendar,) = await dav.list_calendars()
    assert calendar.id == "/dav/moved/" and calendar.name == "Work"
    assert set(auth_by_url.values()) == {"alice:s3cret"}

    auth_by_host: dict[str, str | None] = {}

    def elsewhere(request: httpx.Request) -> httpx.Response:
        auth_by_host[request.url.host] = basic(request)
        return httpx.Response(307, headers={"Location": OTHER + "dav/"})

    async with provider(elsewhere) as dav:
        with pytest.raises(
            http.RedirectRefused, match=r"redirected \(307\) to another host, 8\.8\.8\.8"
        ):
            await dav.list_calendars()
    assert auth_by_host == {"93.184.215.14": "alice:s3cret"}  # 8.8.8.8 got no request at all

    home_elsewhere = (
        b'<?xml version="1.0"?><d:multistatus xmlns:d="DAV:" '
        b'xmlns:c="urn:ietf:params:xml:ns:caldav"><d:response><d:href>/dav/</d:href>'
        b"<d:propstat><d:prop><c:calendar-home-set><d:href>https://8.8.4.4/home/</d:href>"
        b"</c:calendar-home-set><d:resourcetype><d:collection/></d:resourcetype></d:prop>"
        b"<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>"
    )
    async with provider(lambda request: httpx.Response(207, content=home_elsewhere)) as dav:
        with pytest.raises(InvalidConfiguration, match="another host"):
            await dav.list_calendars()


async def test_basic_first_then_digest_when_challenged() -> None:
    schemes: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        header = request.headers.get("Authorization", "")
        schemes.append(header.split(" ", 1)[0])
        if not header.startswith("Digest "):
            return httpx.Response(
                401,
                headers={"WWW-Authenticate": 'Digest realm="r", nonce="abc", qop="auth"'},
            )
        assert 'username="alice"' in header and "s3cret" not in header
        return httpx.Response(207, content=CALENDAR_AT_URL)

    async with provider(handler) as dav:
        await dav.list_calendars()
        await dav.list_calendars()
    assert schemes[0] == "Basic"
    assert schemes[-2:] == ["Digest", "Digest"]
    assert schemes.count("Basic") == 1


@pytest.mark.parametrize(
    ("status", "headers", "error", "icloud"),
    [
        (401, {"WWW-Authenticate": 'Basic realm="x"'}, AuthenticationFailed, False),
        (401, {}, CredentialsRevoked, True),
        (403, {}, AuthenticationFailed, False),
        (429, {"Retry-After": "120"}, RateLimited, False),
        (503, {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}, RateLimited, False),
        (503, {}, ProviderError, False),
        (500, {}, ProviderError, False),
    ],
)
async def test_statuses_map_to_typed_errors(
    status: int, headers: dict[str, str], error: type[ProviderError], icloud: bool
) -> None:
    async with provider(lambda r: httpx.Response(status, headers=headers), icloud=icloud) as dav:
        with pytest.raises(error) as info:
            await dav.list_calendars()
    assert type(info.value) is error
    if status == 429:
        assert isinstance(info.value, RateLimited) and info.value.retry_after == 120
    if status == 503 and headers:
        assert isinstance(info.value, RateLimited) and info.value.retry_after
    if status >= 500 and not headers:
        assert info.value.retryable


def test_icloud_defaults_to_its_well_known_host() -> None:
    dav = CalDAVProvider("", "a@icloud.com", "app-pw", icloud=True)
    assert dav.url == "https://caldav.icloud.com/"
    with pytest.raises(InvalidConfiguration):
        CalDAVProvider("", "alice", "pw")


async def test_icloud_partition_hosts_receive_credentials() -> None:
    seen: dict[str, str | None] = {}
    principal = (
        b'<?xml version="1.0"?><multistatus xmlns="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        b"<response><href>/</href><propstat><prop><current-user-principal><href>/123/principal/"
        b"</href></current-user-principal><resourcetype><collection/></resourcetype></prop>"
        b"<status>HTTP/1.1 200 OK</status></propstat></response></multistatus>"
    )
    home = (
        b'<?xml version="1.0"?><multistatus xmlns="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        b"<response><href>/123/principal/</href><propstat><prop><C:calendar-home-set><href>"
        b"https://p42-caldav.icloud.com:443/123/calendars/</href></C:calendar-home-set></prop>"
        b"<status>HTTP/1.1 200 OK</status></propstat></response></multistatus>"
    )
    calendars = (
        b'<?xml version="1.0"?><multistatus xmlns="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        b"<response><href>/123/calendars/</href><propstat><prop><resourcetype><collection/>"
        b"</resourcetype></prop><status>HTTP/1.1 200 OK</status></propstat></response>"
        b"<response><href>/123/calendars/home/</href><propstat><prop><resourcetype><collection/>"
        b"<C:calendar/></resourcetype><displayname>Home</displayname></prop>"
        b"<status>HTTP/1.1 200 OK</status></propstat></response></multistatus>"
    )

    def handler(request: httpx.Request) -> httpx.Response:
        seen[str(request.url)] = basic(request)
        if request.url.host == "p42-caldav.icloud.com":
            return httpx.Response(207, content=calendars)
        if request.url.path == "/123/principal/":
            return httpx.Response(207, content=home)
        return httpx.Response(207, content=principal)

    # Resolution of the iCloud names is not possible here: let the guard skip DNS.
    async with provider(handler, url="", icloud=True, allow_private_addresses=True) as dav:
        (calendar,) = await dav.list_calendars()
    assert calendar.id == "/123/calendars/home/" and calendar.name == "Home"
    partition = [auth for url, auth in seen.items() if "p42-caldav.icloud.com" in url]
    assert partition == ["alice:s3cret"]


async def test_stale_token_precondition_is_cursor_invalid() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PROPFIND":
            return httpx.Response(207, content=CALENDAR_AT_URL)
        return httpx.Response(
            409,
            content=b'<?xml version="1.0"?><D:error xmlns:D="DAV:"><D:valid-sync-token/></D:error>',
        )

    async def known() -> dict[str, str | None]:
        return {}

    async with provider(handler) as dav:
        (calendar,) = await dav.list_calendars()
        window = Window.around(
            __import__("datetime").datetime.now(__import__("datetime").UTC), 1, 1
        )
        with pytest.raises(CursorInvalid):
            async for _ in dav.changes(
                calendar, "sync:old", window=window, known=known, batch_size=10
            ):
                pass


async def test_gone_calendar_and_oversized_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    async def known() -> dict[str, str | None]:
        return {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PROPFIND":
            return httpx.Response(207, content=CALENDAR_AT_URL)
        return httpx.Response(404)

    async with provider(handler) as dav:
        (calendar,) = await dav.list_calendars()
        with pytest.raises(CalendarGone):
            async for _ in dav.changes(calendar, None, window=WINDOW, known=known, batch_size=10):
                pass
    monkeypatch.setattr(http, "MAX_RESPONSE_BYTES", 64)
    async with provider(lambda request: httpx.Response(207, content=CALENDAR_AT_URL)) as dav:
        with pytest.raises(ProviderError, match="larger than") as info:
            await dav.list_calendars()
    assert info.value.retryable is False


def test_xml_reader_refuses_doctypes_and_garbage() -> None:
    with pytest.raises(HostileXML, match="DOCTYPE"):
        parse_multistatus(b'<?xml version="1.0"?>\n<!-- hi -->\n<!DOCTYPE x [<!ENTITY a "b">]><x/>')
    with pytest.raises(HostileXML, match="malformed"):
        parse_multistatus(b"<multistatus xmlns='DAV:'><response>")
    with pytest.raises(HostileXML, match="expected a DAV:multistatus"):
        parse_multistatus(b"<html><body>login</body></html>")
    # Stray Latin-1 bytes in a UTF-8 document cost a character, not the answer.
    status = parse_multistatus(
        b'<multistatus xmlns="DAV:"><response><href>/a.ics</href><propstat><prop>'
        b"<displayname>caf\xe9</displayname></prop><status>HTTP/1.1 200 OK</status>"
        b"</propstat></response></multistatus>"
    )
    assert status.responses[0].text("{DAV:}displayname") == "caf\ufffd"


LISTING = b"""<?xml version="1.0"?>
<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">
<d:response><d:href>/dav/</d:href><d:status>HTTP/1.1 507 Insufficient Storage</d:status>
</d:response>
<d:response><d:href> /dav/a.ics </d:href><d:propstat><d:prop><d:getetag>"1"</d:getetag>
<c:calendar-data>BEGIN:VCALENDAR</c:calendar-data></d:prop>
<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>
<d:response><d:href>/dav/b.ics</d:href><d:propstat><d:prop><d:getetag>"2"</d:getetag></d:prop>
<d:status>HTTP/1.1 200 OK</d:status></d:propstat><d:propstat><d:prop><c:calendar-data/>
</d:prop><d:status>HTTP/1.1 404 Not Found</d:status></d:propstat></d:response>
<d:response><d:href>/dav/c.ics</d:href><d:status>HTTP/1.1 404 Not Found</d:status></d:response>
<d:response><d:href>/dav/sub/</d:href><d:propstat><d:prop><d:resourcetype><d:collection/>
</d:resourcetype><c:calendar-data></c:calendar-data></d:prop>
<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>
<d:sync-token> http://example.com/sync/7 </d:sync-token>
</d:multistatus>"""


def test_listing_reader_keeps_texts_of_2xx_properties_only() -> None:
    listing = parse_listing(LISTING)
    assert listing.sync_token == "http://example.com/sync/7"
    assert listing.members == [
        Listed("/dav/", 507, None, None, False),
        Listed("/dav/a.ics", None, '"1"', "BEGIN:VCALENDAR", False),
        Listed("/dav/b.ics", None, '"2"', None, False),  # its data only in a 404 propstat
        Listed("/dav/c.ics", 404, None, None, False),
        Listed("/dav/sub/", None, None, "", True),  # present but empty is "", absent None
    ]
    # The same reading as the general reader gives.
    general = parse_multistatus(LISTING)
    for member, response in zip(listing.members, general.responses, strict=True):
        assert member.href == response.href and member.status == response.status
        assert member.etag == response.text("{DAV:}getetag")
        assert member.data == response.text("{urn:ietf:params:xml:ns:caldav}calendar-data")
    with pytest.raises(HostileXML, match="DOCTYPE"):
        parse_listing(b'<!DOCTYPE x [<!ENTITY a "b">]><multistatus xmlns="DAV:"/>')
    with pytest.raises(HostileXML, match="expected a DAV:multistatus"):
        parse_listing(b"<html/>")


async def test_default_transport_checks_addresses_at_connect_time() -> None:
    from calsync.security.urlguard import GuardedNetworkBackend

    for tls in (False, True):
        transport = http._transport(tls=tls, guarded=True)
        assert isinstance(transport._pool._network_backend, GuardedNetworkBackend)
    # End to end through the real transport: a loopback target never gets a connection.
    async with CalDAVProvider("https://127.0.0.1:1/", "alice", "pw") as dav:
        with pytest.raises(InvalidConfiguration, match="loopback"):
            await dav.list_calendars()


async def test_rebinding_between_check_and_connect_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    answers = [["93.184.215.14"], ["127.0.0.1"]]

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    async with CalDAVProvider("https://dav.rebind.example/", "alice", "pw") as dav:
        with pytest.raises(InvalidConfiguration, match="loopback"):
            await dav.list_calendars()


async def test_shared_transports_keep_the_connect_time_guard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from calsync.security.urlguard import GuardedNetworkBackend

    # The name passes the URL check, then rebinds to loopback before the connection: through
    # the shared pools, https and plain http alike never get a connection.
    answers: list[list[str]] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    async with http.DavTransports() as shared:
        for url in ("https://dav.rebind.example/", "http://dav.rebind.example/"):
            answers[:] = [["93.184.215.14"], ["127.0.0.1"]]
            async with CalDAVProvider(
                url, "alice", "pw", allow_insecure_http=True, transports=shared
            ) as dav:
                with pytest.raises(InvalidConfiguration, match="loopback"):
                    await dav.list_calendars()
        # A loopback start URL is refused before any pool is involved.
        async with CalDAVProvider("https://127.0.0.1:1/", "alice", "pw", transports=shared) as dav:
            with pytest.raises(InvalidConfiguration, match="loopback"):
                await dav.list_calendars()

        # Guarded sessions got guarded pools only; sessions allowed private addresses get
        # pools of their own, so a guarded session never reuses their connections.
        assert set(shared._pools) == {(True, True), (False, True)}
        tls = shared._pools[(True, True)]
        assert isinstance(tls, http._LazyTLSTransport) and tls._inner is not None
        for pool in (tls._inner, shared._pools[(False, True)]):
            assert isinstance(pool, httpx.AsyncHTTPTransport)
            assert isinstance(pool._pool._network_backend, GuardedNetworkBackend)
        unguarded = shared._pool(tls=False, guarded=False)
        assert isinstance(unguarded, httpx.AsyncHTTPTransport)
        assert not isinstance(unguarded._pool._network_backend, GuardedNetworkBackend)
        assert unguarded is not shared._pools[(False, True)]


def test_a_session_takes_a_transport_or_shared_transports_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        CalDAVProvider(
            SERVER,
            "alice",
            "pw",
            transport=httpx.MockTransport(lambda request: httpx.Response(500)),
            transports=http.DavTransports(),
        )


@pytest.mark.parametrize("kind", ["caldav", "icloud"])
async def test_build_provider_lends_the_shared_transports(kind: str) -> None:
    from calsync.api import CalendarConnectionSpec
    from calsync.controllers.provider_factory import ProviderDeps, build_provider
    from calsync.settings import Settings

    spec = CalendarConnectionSpec.model_validate(
        {
            "provider": kind,
            "caldav": {
                "url": "https://cloud.example.com/",
                "credentialsSecretRef": {"name": "account"},
            },
        }
    )
    secrets = {"account": {"username": b"alice", "password": b"pw"}}
    async with http.DavTransports() as shared:
        for transports in (shared, None):
            deps = ProviderDeps(Settings(), dav_transports=transports)
            dav = await build_provider(spec, secrets, budget=None, deps=deps)
            assert isinstance(dav, CalDAVProvider)
            transport = dav._http._client._transport
            if transports is None:
                assert isinstance(transport, httpx.AsyncHTTPTransport)
            else:
                assert isinstance(transport, http._Borrowed) and transport._owner is shared
            await dav.aclose()


async def test_an_upgrade_to_https_on_the_same_host_keeps_the_credentials() -> None:
    auth_by_url: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        auth_by_url[str(request.url)] = basic(request)
        if request.url.scheme == "http":
            return httpx.Response(301, headers={"Location": "https://93.184.215.14/dav/"})
        return httpx.Response(207, content=CALENDAR_AT_URL)

    async with provider(handler, url="http://93.184.215.14/dav/", allow_insecure_http=True) as dav:
        (calendar,) = await dav.list_calendars()
    assert calendar.id == "/dav/"
    assert auth_by_url == {
        "http://93.184.215.14/dav/": "alice:s3cret",
        "https://93.184.215.14/dav/": "alice:s3cret",
    }


@pytest.mark.parametrize(
    "location",
    [
        "https://93.184.215.14:8443/dav/",  # the same host, another port
        "https://8.8.8.8/dav/",
        "https://93.184.215.14.example.net/dav/",
        "https://p07-caldav.icloud.com/dav/",  # iCloud's hosts only for iCloud connections
    ],
)
async def test_a_redirect_to_another_origin_is_refused_before_it_is_sent(location: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": location})

    async with provider(handler) as dav:
        with pytest.raises(http.RedirectRefused) as refused:
            await dav.list_calendars()
    assert seen == [SERVER]
    assert refused.value.reason == "RedirectToAnotherHost" and not refused.value.retryable
    assert "s3cret" not in str(refused.value)


async def test_an_icloud_redirect_to_a_partition_host_keeps_the_credentials() -> None:
    auth_by_host: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        auth_by_host[request.url.host] = basic(request)
        if request.url.host == "93.184.215.14":
            return httpx.Response(301, headers={"Location": "https://p07-caldav.icloud.com/dav/"})
        return httpx.Response(207, content=CALENDAR_AT_URL)

    # The partition host resolves to public addresses; no DNS here, so the guard is off.
    async with provider(handler, icloud=True, allow_private_addresses=True) as dav:
        (calendar,) = await dav.list_calendars()
    assert calendar.id == "/dav/"
    assert auth_by_host == {
        "93.184.215.14": "alice:s3cret",
        "p07-caldav.icloud.com": "alice:s3cret",
    }


async def test_a_redirect_to_a_broken_port_is_refused_clearly() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "https://8.8.8.8:99999/dav/"})

    async with provider(handler) as dav:
        with pytest.raises(InvalidConfiguration, match="out of range"):
            await dav.list_calendars()
