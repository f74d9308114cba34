"""CalDAVProvider against a real Radicale: discovery, the listings and sync-collection, the ladder.

Where Radicale cannot show a behaviour (it never truncates, never asks for Digest, never sends
hostile XML or broken calendar data), a thin transport wrapper or a small aiohttp server in
front of it plays that part, and everything else still comes from the real server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from aiohttp import web

from calsync.model import Calendar, ChangePage, Resource, Window
from calsync.providers.base import (
    AuthenticationFailed,
    CalendarGone,
    CredentialsRevoked,
    CursorInvalid,
    InvalidConfiguration,
    ProviderError,
)
from calsync.providers.caldav import CalDAVProvider
from calsync.providers.ical import extract_events
from calsync.testing.icalgen import generate_events
from calsync.testing.radicale import RadicaleServer
from tests.fixtures.radicale import USERS, CalDAVCalendar
from tests.support import free_port

pytestmark = pytest.mark.integration

WINDOW = Window(dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC))


def make_provider(url: str, password: str = USERS["alice"], **options: Any) -> CalDAVProvider:
    options.setdefault("allow_insecure_http", True)
    options.setdefault("allow_private_addresses", True)
    return CalDAVProvider(url, "alice", password, **options)


def nothing_known() -> Callable[[], Awaitable[Mapping[str, str | None]]]:
    async def known() -> Mapping[str, str | None]:
        return {}

    return known


class Store:
    """What the engine would keep: applies pages with its full/complete semantics."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.cursor: str | None = None

    async def known(self) -> Mapping[str, str | None]:
        return {pid: r.etag for pid, r in self.resources.items()}

    def apply(self, pages: list[ChangePage]) -> None:
        seen: set[str] = set()
        for page in pages:
            for resource in page.upserts:
                self.resources[resource.provider_id] = resource
                if page.full:
                    seen.add(resource.provider_id)
            for provider_id in page.deletes:
                self.resources.pop(provider_id, None)
            if page.cursor is not None:
                self.cursor = page.cursor
            if page.complete and page.full:
                for provider_id in set(self.resources) - seen:
                    del self.resources[provider_id]

    async def sync(
        self, provider: CalDAVProvider, calendar: Calendar, batch_size: int = 50
    ) -> list[ChangePage]:
        pages = await collect(provider, calendar, self.cursor, self.known, batch_size)
        self.apply(pages)
        return pages

    def state(self) -> dict[str, tuple[str | None, list[Any]]]:
        return {pid: (r.etag, r.events) for pid, r in self.resources.items()}


async def collect(
    provider: CalDAVProvider,
    calendar: Calendar,
    cursor: str | None,
    known: Callable[[], Awaitable[Mapping[str, str | None]]] | None = None,
    batch_size: int = 50,
) -> list[ChangePage]:
    return [
        page
        async for page in provider.changes(
            calendar, cursor, window=WINDOW, known=known or nothing_known(), batch_size=batch_size
        )
    ]


async def the_calendar(provider: CalDAVProvider, cal: CalDAVCalendar) -> Calendar:
    calendars = {c.id: c for c in await provider.list_calendars()}
    return calendars[cal.path]


def assert_page_shape(pages: list[ChangePage], *, full: bool) -> None:
    assert pages[-1].complete and pages[-1].cursor
    for page in pages[:-1]:
        assert not page.complete and page.cursor is None
    assert all(page.full is full for page in pages)


# --- discovery ----------------------------------------------------------------------------------


async def test_discovery_from_the_server_root_lists_names_colours_and_state(
    caldav_calendar: CalDAVCalendar, radicale: RadicaleServer
) -> None:
    async with make_provider(radicale.url) as provider:
        calendars = {c.id: c for c in await provider.list_calendars(with_state=True)}
    calendar = calendars[caldav_calendar.path]
    assert calendar.name == caldav_calendar.name
    assert calendar.color == caldav_calendar.color
    assert calendar.components == ("VEVENT",)
    assert calendar.supports_sync_collection and not calendar.read_only
    assert calendar.ctag and '"' not in calendar.ctag
    assert calendar.sync_token and calendar.sync_token.startswith("http://radicale.org/ns/sync/")


async def test_discovery_from_a_collection_url_is_that_one_calendar(
    caldav_calendar: CalDAVCalendar,
) -> None:
    async with make_provider(caldav_calendar.url) as provider:
        calendars = await provider.list_calendars()
    assert [c.id for c in calendars] == [caldav_calendar.path]
    assert calendars[0].ctag is None and calendars[0].sync_token is None  # not asked for


async def test_discovery_from_principal_and_through_well_known(
    caldav_calendar: CalDAVCalendar, radicale: RadicaleServer
) -> None:
    # /alice/ is principal and home; /nowhere/ is nothing, so /.well-known/caldav (a 301 to /)
    # has to find the principal.
    for start in (f"{radicale.url}alice/", f"{radicale.url}nowhere/deeper/"):
        async with make_provider(start) as provider:
            ids = [c.id for c in await provider.list_calendars()]
        assert caldav_calendar.path in ids, start


async def test_calendars_without_vevent_are_not_listed(
    caldav_calendar: CalDAVCalendar, radicale: RadicaleServer
) -> None:
    tasks_url = f"{radicale.url}alice/tasks-{secrets.token_hex(4)}/"
    body = (
        '<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop>'
        '<C:supported-calendar-component-set><C:comp name="VTODO"/>'
        "</C:supported-calendar-component-set></D:prop></D:set></C:mkcalendar>"
    )
    async with httpx.AsyncClient(auth=caldav_calendar.auth) as client:
        response = await client.request("MKCALENDAR", tasks_url, content=body)
        assert response.status_code == 201
        try:
            async with make_provider(radicale.url) as provider:
                ids = [c.id for c in await provider.list_calendars()]
            assert caldav_calendar.path in ids
            assert not any(i.startswith("/alice/tasks-") for i in ids)
        finally:
            await client.delete(tasks_url)


async def test_wrong_password_is_authentication_failed(radicale: RadicaleServer) -> None:
    async with make_provider(radicale.url, password="wrong") as provider:
        with pytest.raises(AuthenticationFailed) as info:
            await provider.list_calendars()
    assert not isinstance(info.value, CredentialsRevoked)
    assert info.value.retryable is False
    assert "wrong" not in str(info.value)


async def test_icloud_flavour_reports_revoked_app_passwords(radicale: RadicaleServer) -> None:
    async with make_provider(radicale.url, password="revoked", icloud=True) as provider:
        with pytest.raises(CredentialsRevoked, match="app-specific password"):
            await provider.list_calendars()


# --- sync-collection ----------------------------------------------------------------------------


async def test_initial_sync_returns_every_event(caldav_calendar: CalDAVCalendar) -> None:
    generated = generate_events(130, seed=11)
    caldav_calendar.seed(generated)
    async with make_provider(caldav_calendar.url) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        pages = await collect(provider, calendar, None, batch_size=40)
    assert_page_shape(pages, full=True)
    assert len(pages) == 4
    assert pages[-1].cursor is not None and pages[-1].cursor.startswith("sync:http://radicale")
    resources = {r.provider_id: r for page in pages for r in page.upserts}
    assert set(resources) == {caldav_calendar.provider_id(name) for name in generated}
    for name, text in generated.items():
        resource = resources[caldav_calendar.provider_id(name)]
        assert resource.etag and '"' not in resource.etag
        assert resource.raw_format == "ical"
        assert resource.events == extract_events(text), name


async def test_incremental_sync_returns_exactly_the_changes(
    caldav_calendar: CalDAVCalendar,
) -> None:
    generated = generate_events(20, seed=12)
    caldav_calendar.seed(generated)
    names = sorted(generated)
    fresh = generate_events(1, seed=13)
    odd_name = "a b@c+d.ics"  # a name that needs percent-encoding in hrefs
    async with make_provider(caldav_calendar.url) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        store = Store()
        await store.sync(provider, calendar)
        first_cursor = store.cursor

        modified = generated[names[0]].replace("SUMMARY:", "SUMMARY:Moved ", 1)
        caldav_calendar.put(names[0], modified)
        caldav_calendar.delete(names[1])
        caldav_calendar.put(odd_name, next(iter(fresh.values())))

        pages = await store.sync(provider, calendar)
        assert_page_shape(pages, full=False)
        upserted = {r.provider_id for page in pages for r in page.upserts}
        deleted = [d for page in pages for d in page.deletes]
        assert upserted == {
            caldav_calendar.provider_id(names[0]),
            caldav_calendar.provider_id(odd_name),
        }
        assert deleted == [caldav_calendar.provider_id(names[1])]
        assert store.cursor != first_cursor
        changed = store.resources[caldav_calendar.provider_id(names[0])]
        assert changed.events[0].summary.startswith("Moved ")

        quiet = await store.sync(provider, calendar)
        assert len(quiet) == 1 and not quiet[0].upserts and not quiet[0].deletes
        assert quiet[0].complete and quiet[0].cursor == store.cursor


@pytest.mark.parametrize(
    "cursor",
    [
        "sync:http://radicale.org/ns/sync/" + "0" * 64,  # well-formed, unknown to the server
        "sync:http://radicale.org/ns/sync/expired",
        "sync:bogus",
        "no-prefix-at-all",
    ],
)
async def test_unknown_or_expired_tokens_are_cursor_invalid(
    caldav_calendar: CalDAVCalendar, cursor: str
) -> None:
    async with make_provider(caldav_calendar.url) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        with pytest.raises(CursorInvalid):
            await collect(provider, calendar, cursor)


async def test_deleted_calendar_is_calendar_gone(caldav_calendar: CalDAVCalendar) -> None:
    async with make_provider(caldav_calendar.url) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        async with httpx.AsyncClient(auth=caldav_calendar.auth) as client:
            await client.delete(caldav_calendar.url)
        with pytest.raises(CalendarGone):
            await collect(provider, calendar, None)


# --- transport wrappers: Radicale behind a rewriting proxy ----------------------------------------

Answer = Callable[[int, bytes], tuple[int, bytes]]
Rewrite = Callable[[httpx.Request, bytes], Awaitable[tuple[bytes, Answer | None]]]


class Rewriting(httpx.AsyncBaseTransport):
    """Real HTTP to Radicale, with a hook that may change a request body and its answer."""

    def __init__(self, rewrite: Rewrite) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._rewrite = rewrite
        self.requests: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.requests.append((request.method, str(request.url)))
        new_body, answer = await self._rewrite(request, body)
        headers = dict(request.headers)
        headers["content-length"] = str(len(new_body))
        headers["accept-encoding"] = "identity"
        forwarded = httpx.Request(request.method, request.url, headers=headers, content=new_body)
        response = await self._inner.handle_async_request(forwarded)
        content = await response.aread()
        status = response.status_code
        if answer is not None:
            status, content = answer(status, content)
        out_headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
        }
        return httpx.Response(status, headers=out_headers, content=content)

    async def aclose(self) -> None:
        await self._inner.aclose()


_RESPONSE = re.compile(rb"<response>.*?</response>", re.DOTALL)
_TOKEN = re.compile(rb"<sync-token>([^<]*)</sync-token>")


async def test_truncated_answers_resume_from_the_returned_token(
    caldav_calendar: CalDAVCalendar,
) -> None:
    """The first answer holds half the members and a 507; the client continues from its token."""
    generated = generate_events(24, seed=14)
    caldav_calendar.seed(generated)
    served: list[bytes] = []
    fake = "http://radicale.org/ns/sync/truncated-1"

    async def rewrite(request: httpx.Request, body: bytes) -> tuple[bytes, Answer | None]:
        if request.method == "REPORT" and b"calendar-query" in body:
            # Refuse the query listing: only sync-collection can be truncated and resumed.
            return body, lambda status, content: (501, b"")
        if request.method != "REPORT" or b"sync-collection" not in body:
            return body, None
        if b"<D:sync-token></D:sync-token>" in body:

            def first_half(status: int, content: bytes) -> tuple[int, bytes]:
                members = _RESPONSE.findall(content)
                kept = members[: len(members) // 2]
                served.extend(kept)
                truncation = (
                    f"<response><href>{caldav_calendar.path}</href>"
                    "<status>HTTP/1.1 507 Insufficient Storage</status></response>"
                ).encode()
                head = content[: content.index(b"<response>")]
                head = _TOKEN.sub(b"<sync-token>" + fake.encode() + b"</sync-token>", head)
                return status, head + b"".join(kept) + truncation + b"</multistatus>"

            return body, first_half
        if fake.encode() in body:
            # The continuation: everything from scratch, minus what the first answer held.
            def the_rest(status: int, content: bytes) -> tuple[int, bytes]:
                for member in served:
                    content = content.replace(member, b"")
                return status, content

            return body.replace(fake.encode(), b""), the_rest
        return body, None

    transport = Rewriting(rewrite)
    async with make_provider(caldav_calendar.url, transport=transport) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        pages = await collect(provider, calendar, None, batch_size=5)
        resumable = [p for p in pages if p.cursor == "sync:" + fake]
        assert len(resumable) == 1 and not resumable[0].complete
        assert pages.index(resumable[0]) < len(pages) - 1
        assert pages[-1].complete and pages[-1].cursor and fake not in pages[-1].cursor
        assert all(p.full for p in pages)
        assert all(p.cursor is None for p in pages if p is not resumable[0] and p is not pages[-1])
        ids = [r.provider_id for page in pages for r in page.upserts]
        assert sorted(ids) == sorted(caldav_calendar.provider_id(n) for n in generated)
        # The final token is real: an incremental sync from it sees nothing new.
        quiet = await collect(provider, calendar, pages[-1].cursor)
        assert not quiet[0].upserts and quiet[0].complete


def _report_kinds(transport: Rewriting, bodies: list[bytes]) -> list[str]:
    """What each recorded request was: 'token' (PROPFIND of the sync-token), 'query',
    'sync-collection', or the method."""
    kinds = []
    for (method, _), body in zip(transport.requests, bodies, strict=True):
        if method == "PROPFIND" and b"<D:prop><D:sync-token/></D:prop>" in body:
            kinds.append("token")
        elif b"calendar-query" in body:
            kinds.append("query")
        elif b"sync-collection" in body:
            kinds.append("sync-collection")
        else:
            kinds.append(method)
    return kinds


async def test_the_initial_listing_is_a_token_then_one_calendar_query(
    caldav_calendar: CalDAVCalendar,
) -> None:
    generated = generate_events(30, seed=24)
    caldav_calendar.seed(generated)
    names = sorted(generated)
    bodies: list[bytes] = []

    async def record(request: httpx.Request, body: bytes) -> tuple[bytes, Answer | None]:
        bodies.append(body)
        return body, None

    transport = Rewriting(record)
    async with make_provider(caldav_calendar.url, transport=transport) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        before = len(bodies)
        store = Store()
        pages = await store.sync(provider, calendar, batch_size=8)
        assert _report_kinds(transport, bodies)[before:] == ["token", "query"]
        assert_page_shape(pages, full=True)
        assert set(store.resources) == {caldav_calendar.provider_id(n) for n in generated}
        assert store.cursor is not None and store.cursor.startswith("sync:http://radicale")
        # The token read before the query is a real one: the next run sees just the change.
        caldav_calendar.put(names[3], generated[names[3]].replace("SUMMARY:", "SUMMARY:New ", 1))
        before = len(bodies)
        changed = await store.sync(provider, calendar)
        assert _report_kinds(transport, bodies)[before:] == ["sync-collection"]
        assert [r.provider_id for p in changed for r in p.upserts] == [
            caldav_calendar.provider_id(names[3])
        ]


async def test_a_change_while_the_query_runs_is_listed_and_reported_again(
    caldav_calendar: CalDAVCalendar,
) -> None:
    """The token comes first: a change racing the listing shows up twice, never not at all."""
    generated = generate_events(10, seed=25)
    caldav_calendar.seed(generated)
    victim = sorted(generated)[5]
    changed = generated[victim].replace("SUMMARY:", "SUMMARY:Raced ", 1)

    async def change_first(request: httpx.Request, body: bytes) -> tuple[bytes, Answer | None]:
        if b"calendar-query" in body:
            async with httpx.AsyncClient(auth=caldav_calendar.auth) as client:
                answer = await client.put(caldav_calendar.url + victim, content=changed.encode())
                assert answer.status_code in (200, 201, 204)
        return body, None

    async with make_provider(caldav_calendar.url, transport=Rewriting(change_first)) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        store = Store()
        await store.sync(provider, calendar)
        listed = store.resources[caldav_calendar.provider_id(victim)]
        assert listed.events[0].summary.startswith("Raced ")
        again = await store.sync(provider, calendar)
    assert [r.provider_id for p in again for r in p.upserts] == [
        caldav_calendar.provider_id(victim)
    ]


@pytest.mark.parametrize("spoil", ["truncated", "refused", "empty"])
async def test_a_truncated_refused_or_empty_query_listing_falls_back_to_sync_collection(
    caldav_calendar: CalDAVCalendar, spoil: str
) -> None:
    generated = generate_events(12, seed=26)
    caldav_calendar.seed(generated)
    bodies: list[bytes] = []
    truncation = (
        f"<response><href>{caldav_calendar.path}</href>"
        "<status>HTTP/1.1 507 Insufficient Storage</status></response></multistatus>"
    ).encode()

    async def rewrite(request: httpx.Request, body: bytes) -> tuple[bytes, Answer | None]:
        bodies.append(body)
        if b"calendar-query" not in body:
            return body, None
        if spoil == "refused":
            return body, lambda status, content: (403, b"")
        if spoil == "empty":
            return body, lambda status, content: (status, b"<multistatus xmlns='DAV:'/>")

        def truncated(status: int, content: bytes) -> tuple[int, bytes]:
            members = _RESPONSE.findall(content)[:4]
            head = content[: content.index(b"<response>")]
            return status, head + b"".join(members) + truncation

        return body, truncated

    transport = Rewriting(rewrite)
    async with make_provider(caldav_calendar.url, transport=transport) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        for attempt in range(2):
            before = len(bodies)
            pages = await collect(provider, calendar, None, batch_size=5)
            assert_page_shape(pages, full=True)
            ids = {r.provider_id for page in pages for r in page.upserts}
            assert ids == {caldav_calendar.provider_id(n) for n in generated}
            kinds = _report_kinds(transport, bodies)[before:]
            # Truncation and refusal are remembered: the second full listing goes to
            # sync-collection straight away. An empty answer is checked every time.
            first = ["token", "query"] if attempt == 0 or spoil == "empty" else []
            assert kinds == [*first, "sync-collection"]


async def test_icloud_lists_with_sync_collection(caldav_calendar: CalDAVCalendar) -> None:
    generated = generate_events(5, seed=27)
    caldav_calendar.seed(generated)
    bodies: list[bytes] = []

    async def record(request: httpx.Request, body: bytes) -> tuple[bytes, Answer | None]:
        bodies.append(body)
        return body, None

    transport = Rewriting(record)
    async with make_provider(caldav_calendar.url, icloud=True, transport=transport) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        before = len(bodies)
        pages = await collect(provider, calendar, None)
    assert _report_kinds(transport, bodies)[before:] == ["sync-collection"]
    assert sum(len(p.upserts) for p in pages) == 5


async def test_malformed_calendar_data_is_skipped_and_reported(
    caldav_calendar: CalDAVCalendar,
) -> None:
    generated = generate_events(6, seed=15)
    caldav_calendar.seed(generated)
    victim = sorted(generated)[2]

    async def rewrite(request: httpx.Request, body: bytes) -> tuple[bytes, Answer | None]:
        if request.method != "REPORT":
            return body, None

        def break_one(status: int, content: bytes) -> tuple[int, bytes]:
            def spoil(match: re.Match[bytes]) -> bytes:
                member = match.group(0)
                if victim.encode() not in member:
                    return member
                return re.sub(
                    rb"(<C:calendar-data>).*?(</C:calendar-data>)",
                    rb"\1BEGIN:VCALENDAR&#13;\nthis is not iCalendar\2",
                    member,
                    flags=re.DOTALL,
                )

            return status, _RESPONSE.sub(spoil, content)

        return body, break_one

    async with make_provider(caldav_calendar.url, transport=Rewriting(rewrite)) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        pages = await collect(provider, calendar, None)
        ids = {r.provider_id for page in pages for r in page.upserts}
        assert ids == {caldav_calendar.provider_id(n) for n in generated if n != victim}
        assert [pid for pid, _ in provider.skipped] == [caldav_calendar.provider_id(victim)]
        assert "content line" in provider.skipped[0][1] or "VCALENDAR" in provider.skipped[0][1]


async def test_one_unreadable_object_is_isolated_from_its_multiget_batch(
    caldav_calendar: CalDAVCalendar,
) -> None:
    generated = generate_events(9, seed=21)
    caldav_calendar.seed(generated)
    victim = sorted(generated)[4]
    multigets: list[int] = []

    async def rewrite(request: httpx.Request, body: bytes) -> tuple[bytes, Answer | None]:
        if b"calendar-query" in body or (b"sync-collection" in body and b"calendar-data" in body):
            # The data-carrying answers are spoilt too: the etag-only retry must follow.
            return body, lambda status, content: (207, b"<multistatus xmlns='DAV:'><oops")
        if b"calendar-multiget" not in body:
            return body, None
        multigets.append(body.count(b"<D:href>"))
        if victim.encode() in body:
            return body, lambda status, content: (207, b"<multistatus xmlns='DAV:'><oops")
        return body, None

    async with make_provider(caldav_calendar.url, transport=Rewriting(rewrite)) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        pages = await collect(provider, calendar, None)
    ids = {r.provider_id for page in pages for r in page.upserts}
    assert ids == {caldav_calendar.provider_id(n) for n in generated if n != victim}
    assert [pid for pid, _ in provider.skipped] == [caldav_calendar.provider_id(victim)]
    assert "cannot be read" in provider.skipped[0][1]
    assert multigets[0] == 9 and 1 in multigets  # halved down to the one object


async def test_servers_refusing_sync_collection_get_the_ladder(
    caldav_calendar: CalDAVCalendar,
) -> None:
    caldav_calendar.seed(generate_events(12, seed=16))

    async def rewrite(request: httpx.Request, body: bytes) -> tuple[bytes, Answer | None]:
        if request.method == "REPORT" and b"sync-collection" in body:
            return body, lambda status, content: (501, b"")
        if request.method == "PROPFIND" and b"sync-token" in body:
            # Nor does such a server have a DAV:sync-token property.
            return body, lambda status, content: (status, _TOKEN.sub(b"<sync-token/>", content))
        return body, None

    transport = Rewriting(rewrite)
    async with make_provider(caldav_calendar.url, transport=transport) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        pages = await collect(provider, calendar, None)
        assert pages[-1].cursor is not None and pages[-1].cursor.startswith("ctag:")
        assert sum(len(p.upserts) for p in pages) == 12
        before = len(transport.requests)
        await collect(provider, calendar, pages[-1].cursor)
        methods = [m for m, _ in transport.requests[before:]]
        assert methods == ["PROPFIND"]  # remembered: no second sync-collection attempt


async def test_radicale_occurrence_cap_falls_back_to_multiget(tmp_path: Any) -> None:
    """Radicale answers 400 when a REPORT would hold more VEVENTs than its cap."""
    server = RadicaleServer(tmp_path, settings={"reporting": {"max_expand_occurrence": "25"}})
    server.add_user("alice", USERS["alice"])
    sent: list[bytes] = []

    async def record(request: httpx.Request, body: bytes) -> tuple[bytes, Answer | None]:
        sent.append(body)
        return body, None

    def with_data_reports() -> int:
        return sum(b"sync-collection" in b and b"calendar-data" in b for b in sent)

    with server:
        url = server.create_calendar("alice", USERS["alice"], "capped", "Capped")
        async with make_provider(url, transport=Rewriting(record)) as provider:
            (calendar,) = await provider.list_calendars()
            store = Store()
            await store.sync(provider, calendar)
            generated = generate_events(40, seed=17)
            expected = {f"/alice/capped/{name}" for name in generated}
            server.seed_collection_files("alice", "capped", generated)
            # Incremental: the REPORT with data is refused, etags + multigets (also halved).
            pages = await store.sync(provider, calendar, batch_size=7)
            assert {r.provider_id for p in pages for r in p.upserts} == expected
            # A full listing: refused with data once, then remembered for this collection.
            for _ in range(2):
                before = with_data_reports()
                pages = await collect(provider, calendar, None, batch_size=7)
                assert {r.provider_id for p in pages for r in p.upserts} == expected
                assert all(p.full for p in pages)
                refused_now = with_data_reports() - before
            assert refused_now == 0
            assert not provider.skipped


# --- the fallback ladder -----------------------------------------------------------------------


async def test_fallback_ladder_reaches_the_same_state(caldav_calendar: CalDAVCalendar) -> None:
    generated = generate_events(45, seed=18)
    caldav_calendar.seed(generated)
    names = sorted(generated)
    async with (
        make_provider(caldav_calendar.url, use_sync_collection=False) as ladder,
        make_provider(caldav_calendar.url) as syncing,
    ):
        ladder_calendar = await the_calendar(ladder, caldav_calendar)
        assert not ladder_calendar.supports_sync_collection
        sync_calendar = await the_calendar(syncing, caldav_calendar)
        by_ladder, by_sync = Store(), Store()

        pages = await by_ladder.sync(ladder, ladder_calendar, batch_size=20)
        assert_page_shape(pages, full=True)
        assert by_ladder.cursor is not None and by_ladder.cursor.startswith("ctag:")
        await by_sync.sync(syncing, sync_calendar)
        assert by_ladder.state() == by_sync.state()

        unchanged = await by_ladder.sync(ladder, ladder_calendar)
        assert len(unchanged) == 1 and not unchanged[0].upserts and not unchanged[0].deletes
        assert unchanged[0].cursor == by_ladder.cursor and unchanged[0].complete

        caldav_calendar.put(names[3], generated[names[3]].replace("SUMMARY:", "SUMMARY:X ", 1))
        caldav_calendar.delete(names[4])
        caldav_calendar.delete(names[5])
        caldav_calendar.put("new.ics", generate_events(1, seed=19)["evt-19-000000.ics"])

        pages = await by_ladder.sync(ladder, ladder_calendar, batch_size=20)
        assert_page_shape(pages, full=False)
        assert {r.provider_id for p in pages for r in p.upserts} == {
            caldav_calendar.provider_id(names[3]),
            caldav_calendar.provider_id("new.ics"),
        }
        assert sorted(d for p in pages for d in p.deletes) == sorted(
            caldav_calendar.provider_id(n) for n in names[4:6]
        )
        await by_sync.sync(syncing, sync_calendar)
        assert by_ladder.state() == by_sync.state()
        assert len(by_ladder.resources) == 44


# --- windowed listing ---------------------------------------------------------------------------


async def test_calendar_query_lists_a_window(caldav_calendar: CalDAVCalendar) -> None:
    def event(uid: str, day: str) -> str:
        return (
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\n"
            f"UID:{uid}\r\nDTSTAMP:20250101T000000Z\r\nDTSTART:{day}T100000Z\r\n"
            f"DTEND:{day}T110000Z\r\nSUMMARY:{uid}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        )

    caldav_calendar.put("in.ics", event("in", "20250310"))
    caldav_calendar.put("out.ics", event("out", "20250610"))
    async with make_provider(caldav_calendar.url) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        window = Window(
            dt.datetime(2025, 3, 1, tzinfo=dt.UTC), dt.datetime(2025, 4, 1, tzinfo=dt.UTC)
        )
        found = await provider.calendar_query(calendar, window)
    assert [r.provider_id for r in found] == [caldav_calendar.provider_id("in.ics")]


# --- a Digest-only front and a hostile server (aiohttp) ----------------------------------------


@asynccontextmanager
async def serve(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324  # RFC 2617 Digest is MD5


async def test_digest_auth_is_used_when_the_server_asks_for_it(radicale: RadicaleServer) -> None:
    realm, nonce = "calsync-test", secrets.token_hex(16)
    challenges = 0

    def valid(header: str, method: str) -> bool:
        fields = {k: a or b for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', header)}
        if fields.get("username") != "alice" or fields.get("nonce") != nonce:
            return False
        ha1 = _md5(f"alice:{realm}:{USERS['alice']}")
        ha2 = _md5(f"{method}:{fields.get('uri')}")
        expected = _md5(
            f"{ha1}:{nonce}:{fields.get('nc')}:{fields.get('cnonce')}:{fields.get('qop')}:{ha2}"
        )
        return secrets.compare_digest(expected, fields.get("response", ""))

    async def front(request: web.Request) -> web.StreamResponse:
        nonlocal challenges
        header = request.headers.get("Authorization", "")
        if not (header.startswith("Digest ") and valid(header, request.method)):
            challenges += 1
            return web.Response(
                status=401,
                headers={
                    "WWW-Authenticate": f'Digest realm="{realm}", nonce="{nonce}", '
                    'qop="auth", algorithm=MD5'
                },
            )
        async with httpx.AsyncClient(auth=("alice", USERS["alice"])) as client:
            answer = await client.request(
                request.method,
                radicale.url.rstrip("/") + request.path_qs,
                content=await request.read(),
                headers={
                    k: v for k, v in request.headers.items() if k in ("Depth", "Content-Type")
                },
            )
        headers = {"Content-Type": answer.headers.get("Content-Type", "text/plain")}
        if "Location" in answer.headers:
            headers["Location"] = answer.headers["Location"]
        return web.Response(status=answer.status_code, body=answer.content, headers=headers)

    async with serve(front) as url, make_provider(url) as provider:
        ids = [c.id for c in await provider.list_calendars()]
        assert "/alice/" not in ids
        await provider.list_calendars()
    # Basic once (refused with a Digest challenge), then Digest for everything, reusing the
    # challenge instead of being challenged on every request.
    assert 1 <= challenges <= 2


@pytest.mark.parametrize("status", [301, 302, 307])
async def test_a_redirect_to_another_origin_is_refused_without_sending_the_credentials(
    status: int,
) -> None:
    """Two servers on 127.0.0.1 (two ports, two origins): the connection's own answers the
    PROPFIND with a redirect to the other. The other never sees the credentials, nor any
    request; the error names the host the redirect pointed at."""
    first_auth: list[str | None] = []
    second_auth: list[str | None] = []

    async def second(request: web.Request) -> web.StreamResponse:
        second_auth.append(request.headers.get("Authorization"))
        return web.Response(status=207, body=b"", content_type="application/xml")

    async with serve(second) as other:

        async def first(request: web.Request) -> web.StreamResponse:
            first_auth.append(request.headers.get("Authorization"))
            return web.Response(status=status, headers={"Location": other + "dav/"})

        async with serve(first) as url, make_provider(url) as provider:
            with pytest.raises(InvalidConfiguration) as refused:
                await provider.list_calendars()
    other_host = other.removeprefix("http://").rstrip("/")  # 127.0.0.1:<port>
    assert second_auth == []  # not even a request without credentials
    assert first_auth and all(h and h.startswith("Basic ") for h in first_auth)
    assert refused.value.reason == "RedirectToAnotherHost"
    assert refused.value.retryable is False
    assert other_host in str(refused.value)
    assert USERS["alice"] not in str(refused.value)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<multistatus xmlns="DAV:"><response><href>/cal/</href><propstat><prop>
<displayname>&lol9;</displayname><resourcetype><collection/>
<calendar xmlns="urn:ietf:params:xml:ns:caldav"/></resourcetype>
</prop><status>HTTP/1.1 200 OK</status></propstat></response></multistatus>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE m [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<multistatus xmlns="DAV:"><response><href>/cal/</href><propstat><prop>
<displayname>&secret;</displayname><resourcetype><collection/>
<calendar xmlns="urn:ietf:params:xml:ns:caldav"/></resourcetype>
</prop><status>HTTP/1.1 200 OK</status></propstat></response></multistatus>"""


@pytest.mark.parametrize("payload", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["laughs", "xxe"])
async def test_hostile_xml_is_refused_unexpanded(payload: bytes) -> None:
    async def hostile(request: web.Request) -> web.StreamResponse:
        return web.Response(status=207, body=payload, content_type="application/xml")

    async with serve(hostile) as url, make_provider(url) as provider:
        with pytest.raises(ProviderError, match="DOCTYPE") as info:
            await provider.list_calendars()
    assert info.value.retryable is False
    assert "root:" not in str(info.value) and "lollol" not in str(info.value)


# --- budget ------------------------------------------------------------------------------------


class CountingBudget:
    def __init__(self) -> None:
        self.spent = 0

    async def acquire(self) -> None:
        self.spent += 1


async def test_every_request_spends_the_budget(caldav_calendar: CalDAVCalendar) -> None:
    caldav_calendar.seed(generate_events(5, seed=20))
    budget = CountingBudget()
    transport = Rewriting(lambda request, body: _passthrough(body))
    async with make_provider(
        caldav_calendar.url, rate_limiter=budget, transport=transport
    ) as provider:
        calendar = await the_calendar(provider, caldav_calendar)
        await collect(provider, calendar, None)
    assert budget.spent == len(transport.requests) >= 2  # discovery PROPFIND + REPORT


async def _passthrough(
    body: bytes,
) -> tuple[bytes, Answer | None]:
    return body, None
