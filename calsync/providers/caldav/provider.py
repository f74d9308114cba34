"""CalDAV (RFC 4791, 6578, 6764) behind `calsync.providers.base.CalendarProvider`.

Discovery: the configured URL is PROPFINDed once; it may be a calendar (the account is then that
one calendar), a calendar home, a principal or a server root; failing those, RFC 6764's
/.well-known/caldav. The principal and calendar home are cached per provider instance; the
calendar list itself is read fresh on every `list_calendars` (one Depth 1 PROPFIND).

Changes, with sync-collection (RFC 6578):
- no cursor, a full listing (pages `full=True`): the collection's DAV:sync-token is read first
  (PROPFIND Depth 0), then one calendar-query whose only filter is the VCALENDAR component
  returns every object with getetag and calendar-data; the last page carries "sync:<token>".
  A change made while the query runs is listed and reported again by the next run, never lost.
  Radicale answers this pair with about 70% of the server time of a sync-collection from the
  empty token (that REPORT reads every object twice and matches names against a list). A
  server without the property, or refusing, truncating (507) or garbling the query, gets the
  sync-collection from the empty token below instead; the first three are remembered for the
  collection for the life of the process. An empty query answer is not trusted either (a full
  listing deletes what it lacks): sync-collection confirms it. iCloud, whose calendar-query
  wants a VEVENT filter, always takes sync-collection.
- otherwise one REPORT asking for getetag and calendar-data, from the cursor's token (cursor
  "sync:<token>") or from the empty token (the full listing of the servers above).
  Members answered 404 are deletes; members that come without data are fetched by
  calendar-multiget in batches of up to 500, the next batch in flight while the engine stores
  the current one. A 403/409/400 for a token is CursorInvalid.
- if the server refuses the REPORT with data (400: Radicale past its cap of 10,000 VEVENTs per
  answer), it is repeated with getetag only and the data multigot; the collection is remembered
  for the process so that its next full listing starts that way (measurements in
  docs/decisions/0005-caldav-provider-requests.md).
- truncation (a 507 for the collection itself): the pages of that answer end with the returned
  token as a resumable cursor (not complete) and another REPORT continues from it.

Fallback ladder (the server lacks sync-collection, refuses it on first use with 403/501, or the
provider was built with `use_sync_collection=False`), cursor "ctag:<getctag>":
- the collection's getctag equals the cursor's: one empty complete page, same cursor.
- otherwise a Depth 1 PROPFIND lists every member's etag. Without a cursor that is a full
  listing: everything is multigot and the pages are `full=True`, so the engine deletes what the
  listing lacks. With a cursor the listing is compared with `known()` (what the store holds):
  only new and changed hrefs are multigot and vanished ones are sent as explicit deletes, with
  `full=False`, since a page set that names only the changes cannot stand for the whole
  calendar.
The ctag is read before the listing, so a change racing the listing shows up again next time.
A server without getctag gets the cursor "ctag:" and an etag listing on every run.

A cursor of the other kind (the server gained or lost sync-collection) is not an error: a
"ctag:" cursor on a syncing calendar starts a full listing, a "sync:" cursor on the ladder is
compared with `known()`. Anything else is CursorInvalid. `window` is not used: the engine
filters, and a server-side time-range filter would judge recurrences by the server's rules.

Every calendar-data body goes through `calsync.providers.ical.parse_resource`; one that fails
with MalformedCalendarData is left out of its page and recorded in `skipped` (provider id,
reason), which the engine collects after each run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Final, NamedTuple
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpx

from calsync.model import Calendar, ChangePage, Resource, Window
from calsync.providers.base import (
    CalendarGone,
    CursorInvalid,
    InvalidConfiguration,
    KnownEtags,
    ProviderError,
    let_go,
)
from calsync.providers.budget import RequestBudget
from calsync.providers.caldav import xml
from calsync.providers.caldav.http import DavSession, DavTransports, Reply
from calsync.providers.caldav.srv import Discovered
from calsync.providers.ical import MAX_OBJECT_SIZE, MalformedCalendarData, parse_resource

log = logging.getLogger(__name__)

ICLOUD_URL: Final = "https://caldav.icloud.com/"
MULTIGET_BATCH: Final = 500  # hrefs per calendar-multiget; halved on a 400 down to one
THREAD_PARSE_BYTES: Final = 512 << 10  # parse bigger XML bodies off the event loop

SYNC_PREFIX: Final = "sync:"
CTAG_PREFIX: Final = "ctag:"


# Collections whose server refused a full sync-collection with calendar-data (Radicale past its
# VEVENT cap), remembered for the process so the next full listing skips the doomed attempt.
_REFUSED_WITH_DATA: dict[str, None] = {}
# Collections whose server did not give a clean token + calendar-query listing (no sync-token
# property, the query refused or truncated): their full listings go to sync-collection directly.
_NO_QUERY_LISTING: dict[str, None] = {}
_REFUSED_LIMIT: Final = 4096


def _remember(table: dict[str, None], url: str) -> None:
    if len(table) >= _REFUSED_LIMIT:
        table.pop(next(iter(table)))
    table[url] = None


def _remember_refusal(url: str) -> None:
    _remember(_REFUSED_WITH_DATA, url)


class _SyncUnsupported(Exception):
    """The server refused sync-collection on first use: take the fallback ladder."""


@dataclass(slots=True)
class _Collection:
    url: str
    supports_sync: bool


class _Member(NamedTuple):
    """A calendar object seen in a listing: its href as sent, id, etag, and data if given.

    A tuple of strings, which the garbage collector stops tracking: a full listing keeps
    thousands of them alive while its pages are parsed and stored.
    """

    href: str
    provider_id: str
    etag: str | None
    data: str | None = None


def _etag(text: str | None) -> str | None:
    if text is None:
        return None
    value = text.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    return value or None


def _path_of(href: str, base: str = "") -> str:
    """An href (path, absolute URL, or relative to `base`) as a decoded path.

    That path is the provider id of what the href names; hrefs arrive percent-encoded to
    different degrees, so the decoded form is the one that compares reliably.
    """
    if not href.startswith("/"):
        if "://" in href:
            href = urlsplit(href).path
        elif base:
            href = urlsplit(urljoin(base, href)).path
    return unquote(href) if "%" in href else href


def _same_collection(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _chunks(items: list[_Member], size: int) -> Iterable[list[_Member]]:
    for begin in range(0, len(items), size):
        yield items[begin : begin + size]


class CalDAVProvider:
    """A CalDAV account (or one calendar), on one keep-alive httpx client.

    `url` is where discovery starts: a server root, a principal, a calendar home or a single
    calendar's URL (empty for iCloud means https://caldav.icloud.com/). Plain http needs
    `allow_insecure_http`; loopback and private addresses need `allow_private_addresses`.
    `rate_limiter.acquire()` is awaited before every request. `transport` replaces the network
    (tests; the URL guard still checks every URL, but the connect-time re-check is part of the
    default transport only). `transports` lends connection pools shared with other providers
    of the process, which closing this one leaves open (the default: pools of its own).
    `use_sync_collection=False` forces the ctag/etag fallback ladder.
    """

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        icloud: bool = False,
        allow_insecure_http: bool = False,
        allow_private_addresses: bool = False,
        rate_limiter: RequestBudget | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        use_sync_collection: bool = True,
        transports: DavTransports | None = None,
        max_object_size: int = MAX_OBJECT_SIZE,
        max_response_size: int | None = None,
    ) -> None:
        url = (url or "").strip() or (ICLOUD_URL if icloud else "")
        if not url:
            raise InvalidConfiguration("a CalDAV connection needs a URL")
        self.url = url
        self.icloud = icloud
        # How DNS SRV discovery found `url` (spec.caldav.domain), None when it was configured.
        self.discovered: Discovered | None = None
        self.use_sync_collection = use_sync_collection
        self.skipped: list[tuple[str, str]] = []
        self.max_object_size = max_object_size
        self.max_response_size = max_response_size
        self._http = DavSession(
            username,
            password,
            max_response_bytes=max_response_size,
            icloud=icloud,
            allow_private_addresses=allow_private_addresses,
            allow_insecure_http=allow_insecure_http,
            timeout=timeout,
            transport=transport,
            rate_limiter=rate_limiter,
            transports=transports,
        )
        self._http.trust(url)
        self._single: str | None = None  # the configured URL is itself a calendar
        self._homes: list[str] | None = None
        self._fresh: xml.DavResponse | None = None  # discovery's answer, for one listing
        self._collections: dict[str, _Collection] = {}
        self._no_sync: set[str] = set()

    async def __aenter__(self) -> CalDAVProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- plumbing ------------------------------------------------------------------------------

    async def _multistatus(self, reply: Reply) -> xml.Multistatus:
        if len(reply.body) > THREAD_PARSE_BYTES:
            return await asyncio.to_thread(xml.parse_multistatus, reply.body)
        return xml.parse_multistatus(reply.body)

    async def _listing(self, reply: Reply) -> xml.Listing:
        if len(reply.body) > THREAD_PARSE_BYTES:
            return await asyncio.to_thread(xml.parse_listing, reply.body)
        return xml.parse_listing(reply.body)

    async def _propfind(
        self, url: str, body: bytes, depth: str, *, calendar: bool = False
    ) -> tuple[Reply, xml.Multistatus]:
        reply = await self._http.request("PROPFIND", url, body=body, depth=depth)
        if reply.status != 207:
            self._http.raise_for(reply, calendar=calendar)
        return reply, await self._multistatus(reply)

    def _parse(self, member: _Member) -> Resource | None:
        assert member.data is not None
        try:
            return parse_resource(
                member.provider_id, member.etag, member.data, max_size=self.max_object_size
            )
        except MalformedCalendarData as exc:
            log.warning("skipping unreadable calendar object %s: %s", member.provider_id, exc)
            self.skipped.append((member.provider_id, str(exc)))
            return None

    # -- discovery -----------------------------------------------------------------------------

    async def _discover(self) -> None:
        if self._single is not None or self._homes is not None:
            return
        principal: str | None = None
        reply = await self._http.request("PROPFIND", self.url, body=xml.DISCOVER, depth="0")
        if reply.status == 207:
            status = await self._multistatus(reply)
            here = next((r for r in status.responses if r.props), None)
            if here is not None:
                if xml.CALENDAR in here.child_tags(xml.RESOURCETYPE):
                    self._single = reply.url
                    self._fresh = here  # it holds the calendar's properties already
                    return
                homes = here.hrefs_in(xml.CALENDAR_HOME_SET)
                if homes:
                    self._homes = [self._http.trust_href(reply.url, h) for h in homes]
                    return
                principals = here.hrefs_in(xml.CURRENT_USER_PRINCIPAL)
                if principals:
                    principal = self._http.trust_href(reply.url, principals[0])
        elif reply.status in (401, 429) or reply.status >= 500:
            self._http.raise_for(reply)
        if principal is None:
            principal = await self._well_known()
        _, status = await self._propfind(principal, xml.PRINCIPAL, "0")
        homes = [h for r in status.responses for h in r.hrefs_in(xml.CALENDAR_HOME_SET)]
        if not homes:
            raise InvalidConfiguration(f"{principal}: the principal names no calendar-home-set")
        self._homes = [self._http.trust_href(principal, h) for h in dict.fromkeys(homes)]

    async def _well_known(self) -> str:
        url = urljoin(self.url, "/.well-known/caldav")
        reply = await self._http.request("PROPFIND", url, body=xml.PRINCIPAL, depth="0")
        if reply.status == 207:
            status = await self._multistatus(reply)
            for response in status.responses:
                found = response.hrefs_in(xml.CURRENT_USER_PRINCIPAL)
                if found:
                    return self._http.trust_href(reply.url, found[0])
        elif reply.status in (401, 403, 429) or reply.status >= 500:
            self._http.raise_for(reply)
        raise InvalidConfiguration(
            f"{self.url}: no CalDAV calendar, calendar home or principal found there or at "
            "/.well-known/caldav"
        )

    async def list_calendars(self, *, with_state: bool = False) -> list[Calendar]:
        """The account's VEVENT calendars.

        `ctag` and `sync_token` are only read with `with_state=True`: some servers (Radicale)
        compute them from every object of the collection, which would cost more than the
        no-change sync itself. `changes()` reads what it needs on its own.
        """
        await self._discover()
        body = xml.CALENDARS_WITH_STATE if with_state else xml.CALENDARS
        found: list[tuple[str, xml.DavResponse]] = []
        fresh, self._fresh = self._fresh, None
        if self._single is not None and fresh is not None and not with_state:
            found.append((self._single, fresh))
        elif self._single is not None:
            reply, status = await self._propfind(self._single, body, "0", calendar=True)
            found += [(reply.url, r) for r in status.responses[:1]]
        else:
            assert self._homes is not None
            for home in self._homes:
                reply, status = await self._propfind(home, body, "1")
                home_path = _path_of(urlsplit(reply.url).path)
                found += [
                    (reply.url, r)
                    for r in status.responses
                    if not _same_collection(_path_of(r.href, reply.url), home_path)
                ]
        calendars: list[Calendar] = []
        for base, response in found:
            calendar = self._calendar(base, response)
            if calendar is not None:
                calendars.append(calendar)
        return calendars

    def _calendar(self, base: str, response: xml.DavResponse) -> Calendar | None:
        if xml.CALENDAR not in response.child_tags(xml.RESOURCETYPE):
            return None
        component_set = response.props.get(xml.COMPONENT_SET)
        components: tuple[str, ...] = ("VEVENT",)
        if component_set is not None:
            components = tuple(str(c.get("name", "")).upper() for c in component_set.iter(xml.COMP))
            if "VEVENT" not in components:
                return None
        url = self._http.trust_href(base, response.href)
        calendar_id = _path_of(urlsplit(url).path)
        if not calendar_id.endswith("/"):
            calendar_id += "/"
        name = (response.text(xml.DISPLAYNAME) or "").strip()
        if not name:
            name = calendar_id.rstrip("/").rsplit("/", 1)[-1]
        color = (response.text(xml.CALENDAR_COLOR) or "").strip() or None
        if xml.SUPPORTED_REPORT_SET in response.props:
            reports = response.child_tags(xml.SUPPORTED_REPORT_SET)
            supports_sync = xml.SYNC_COLLECTION in reports
        else:
            supports_sync = True  # not advertised either way: try it, fall back on refusal
        privileges = response.child_tags(xml.PRIVILEGE_SET)
        read_only = bool(privileges) and not (privileges & xml.WRITE_PRIVILEGES)
        supports_sync = supports_sync and self.use_sync_collection
        self._collections[calendar_id] = _Collection(url, supports_sync)
        return Calendar(
            id=calendar_id,
            name=name,
            color=color,
            components=components,
            ctag=_etag(response.text(xml.GETCTAG)),
            sync_token=(response.text(xml.SYNC_TOKEN) or "").strip() or None,
            supports_sync_collection=supports_sync,
            read_only=read_only,
        )

    async def _collection(self, calendar: Calendar) -> _Collection:
        known = self._collections.get(calendar.id)
        if known is not None:
            return known
        await self.list_calendars()
        known = self._collections.get(calendar.id)
        if known is None:
            raise CalendarGone(f"calendar {calendar.id} is not listed by the server")
        return known

    # -- changes -------------------------------------------------------------------------------

    async def changes(
        self,
        calendar: Calendar,
        cursor: str | None,
        *,
        window: Window,
        known: KnownEtags,
        batch_size: int,
    ) -> AsyncIterator[ChangePage]:
        """Pages of changes since `cursor`; see the module docstring for the cursor formats."""
        batch_size = max(1, batch_size)
        collection = await self._collection(calendar)
        kind, value = self._cursor(cursor)
        use_sync = (
            self.use_sync_collection
            and collection.supports_sync
            and calendar.supports_sync_collection
            and calendar.id not in self._no_sync
        )
        if use_sync:
            token = (value or "") if kind == "sync" else ""  # a ctag cursor: list afresh
            try:
                async for page in self._sync_pages(collection.url, token, batch_size):
                    yield page
                return
            except _SyncUnsupported:
                log.info("%s refuses sync-collection; using the ctag/etag ladder", calendar.id)
                self._no_sync.add(calendar.id)
        if kind == "sync":
            kind, value = "ctag", None  # compare with the store instead of listing afresh
        async for page in self._ladder_pages(collection.url, kind, value, known, batch_size):
            yield page

    @staticmethod
    def _cursor(cursor: str | None) -> tuple[str | None, str | None]:
        if cursor is None:
            return None, None
        if cursor.startswith(SYNC_PREFIX) and len(cursor) > len(SYNC_PREFIX):
            return "sync", cursor[len(SYNC_PREFIX) :]
        if cursor.startswith(CTAG_PREFIX):
            return "ctag", cursor[len(CTAG_PREFIX) :] or None
        raise CursorInvalid(f"not a CalDAV cursor: {cursor[:40]!r}")

    async def _sync_report(self, url: str, token: str, *, with_data: bool, first: bool) -> Reply:
        reply = await self._http.request(
            "REPORT", url, body=xml.sync_collection(token, with_data=with_data), depth="0"
        )
        status = reply.status
        if status == 207:
            return reply
        if status in (404, 410):
            self._http.raise_for(reply, calendar=True)
        if status in (401, 429) or (status >= 500 and status != 501):
            self._http.raise_for(reply)
        if status == 400 and with_data:
            # Radicale's answer to more than 10,000 VEVENTs in one REPORT; a token problem
            # shows again on the etag-only request.
            log.info("%s: sync-collection with data refused (400); fetching etags first", url)
            _remember_refusal(url)
            return await self._sync_report(url, token, with_data=False, first=first)
        if token and (
            status in (400, 403, 409, 412)
            or xml.VALID_SYNC_TOKEN in xml.error_preconditions(reply.body)
        ):
            raise CursorInvalid(f"REPORT {url}: {status}: the sync token is not accepted")
        if first and status in (400, 403, 405, 415, 501):
            raise _SyncUnsupported
        self._http.raise_for(reply, calendar=True)

    async def _sync_pages(self, url: str, token: str, batch_size: int) -> AsyncIterator[ChangePage]:
        full = not token
        first = True
        collection_path = _path_of(urlsplit(url).path)
        if (
            full
            and not self.icloud  # iCloud's calendar-query wants a VEVENT filter (see xml.py)
            and url not in _REFUSED_WITH_DATA
            and url not in _NO_QUERY_LISTING
        ):
            listed = await self._query_listing(url)
            if listed is not None:
                current, listing = listed
                members, _, _ = self._members(listing, url, collection_path)
                del listed, listing
                async for page in self._pages(url, members, [], batch_size, full=True):
                    if page.complete:
                        page.cursor = SYNC_PREFIX + current
                    yield page
                return
        while True:
            with_data = bool(token) or url not in _REFUSED_WITH_DATA
            reply = await self._sync_report(url, token, with_data=with_data, first=first)
            first = False
            try:
                listing = await self._listing(reply)
            except xml.HostileXML:
                if not with_data:
                    raise
                # One object can spoil the whole answer (lxml refuses text nodes over 10 MB):
                # take the etags alone and let the batched multigets isolate it.
                log.warning("%s: unreadable sync-collection answer; retrying without data", url)
                reply = await self._sync_report(url, token, with_data=False, first=False)
                listing = await self._listing(reply)
            del reply  # the body is no longer needed once read
            if not listing.sync_token:
                raise ProviderError(f"REPORT {url}: sync-collection answer without a sync-token")
            members, deletes, truncated = self._members(listing, url, collection_path)
            returned = listing.sync_token
            del listing
            cursor = SYNC_PREFIX + returned
            async for page in self._pages(url, members, deletes, batch_size, full=full):
                if page.complete:
                    page.cursor = cursor
                    page.complete = not truncated
                yield page
            if not truncated:
                return
            if returned == token:
                raise ProviderError(f"REPORT {url}: truncated answers make no progress")
            token = returned

    @staticmethod
    def _members(
        listing: xml.Listing, url: str, collection_path: str
    ) -> tuple[list[_Member], list[str], bool]:
        """(calendar objects listed, ids answered 404/410, whether the answer was truncated)."""
        truncated = False
        members: list[_Member] = []
        deletes: list[str] = []
        for listed in listing.members:
            provider_id = _path_of(listed.href, url)
            if _same_collection(provider_id, collection_path):
                truncated = truncated or listed.status == 507
                continue
            if listed.status in (404, 410):
                deletes.append(provider_id)
                continue
            if listed.status not in (None, 200) or listed.collection:
                continue
            # Without calendar-data (not asked for, or withheld) it is multigot later.
            members.append(_Member(listed.href, provider_id, _etag(listed.etag), listed.data))
        return members, deletes, truncated

    async def _query_listing(self, url: str) -> tuple[str, xml.Listing] | None:
        """A full listing as the collection's sync-token, then a calendar-query for every object
        with its data; None when the server offers no clean one (remembered for the collection
        when it is the server's way, not this answer's accident).

        The token is read first, so whatever changes while the query runs is listed and also
        reported again by the next incremental sync, never lost. Radicale answers this pair in
        about 70% of the server time of a sync-collection from the empty token, which
        re-reads every object and looks each name up in a list (measurements in the bench).
        """
        _, state = await self._propfind(url, xml.SYNC_TOKEN_ONLY, "0", calendar=True)
        here = next((r for r in state.responses if r.props), None)
        current = (here.text(xml.SYNC_TOKEN) or "").strip() if here is not None else ""
        if not current:
            _remember(_NO_QUERY_LISTING, url)
            return None
        reply = await self._http.request("REPORT", url, body=xml.EVERY_OBJECT, depth="1")
        code = reply.status
        if code in (404, 410):
            self._http.raise_for(reply, calendar=True)
        if code in (401, 429) or (code >= 500 and code != 501):
            self._http.raise_for(reply)
        if code != 207:
            # Refused (a 400 is also Radicale's VEVENT cap, which sync-collection then meets
            # and remembers): sync-collection from the empty token does the listing.
            log.info("%s: calendar-query listing refused (%d); using sync-collection", url, code)
            _remember(_NO_QUERY_LISTING, url)
            return None
        try:
            listing = await self._listing(reply)
        except xml.HostileXML:
            log.warning("%s: unreadable calendar-query answer; using sync-collection", url)
            return None
        collection_path = _path_of(urlsplit(url).path)
        objects = 0
        for listed in listing.members:
            if not _same_collection(_path_of(listed.href, url), collection_path):
                objects += 1
            elif listed.status == 507:
                # Truncated: only sync-collection can resume where a partial answer stopped.
                log.info("%s: calendar-query listing truncated; using sync-collection", url)
                _remember(_NO_QUERY_LISTING, url)
                return None
        if not objects:
            # An empty calendar, or a server that did not take the filter as "everything":
            # a full listing deletes what it lacks, so only sync-collection may say "nothing".
            return None
        return current, listing

    async def _ladder_pages(
        self,
        url: str,
        kind: str | None,
        value: str | None,
        known: KnownEtags,
        batch_size: int,
    ) -> AsyncIterator[ChangePage]:
        _, state = await self._propfind(url, xml.CTAG, "0", calendar=True)
        here = next((r for r in state.responses if r.props), None)
        ctag = _etag(here.text(xml.GETCTAG)) if here is not None else None
        cursor = CTAG_PREFIX + (ctag or "")
        if kind == "ctag" and ctag is not None and value == ctag:
            yield ChangePage(cursor=cursor, complete=True)
            return
        reply, listing = await self._propfind(url, xml.ETAGS, "1", calendar=True)
        collection_path = _path_of(urlsplit(reply.url).path)
        members: dict[str, _Member] = {}
        for response in listing.responses:
            provider_id = _path_of(response.href, reply.url)
            if _same_collection(provider_id, collection_path) or not response.props:
                continue
            if xml.COLLECTION in response.child_tags(xml.RESOURCETYPE):
                continue
            content_type = (response.text(xml.GETCONTENTTYPE) or "text/calendar").lower()
            if "calendar" not in content_type:
                continue
            members[provider_id] = _Member(
                response.href, provider_id, _etag(response.text(xml.GETETAG))
            )
        full = kind is None
        deletes: list[str] = []
        wanted = list(members.values())
        if not full:
            stored = await known()
            wanted = [
                m for m in wanted if m.etag is None or stored.get(m.provider_id, None) != m.etag
            ]
            deletes = [provider_id for provider_id in stored if provider_id not in members]
        async for page in self._pages(url, wanted, deletes, batch_size, full=full):
            if page.complete:
                page.cursor = cursor
            yield page

    async def _pages(
        self,
        url: str,
        members: list[_Member],
        deletes: list[str],
        batch_size: int,
        *,
        full: bool,
    ) -> AsyncIterator[ChangePage]:
        """ChangePages of about batch_size resources; the last one is marked complete.

        Members that came with their data are parsed page by page; the others are fetched by
        calendar-multiget, one batch ahead of the page being handed out.

        Pages go out in the order of the members' ids (a stable sort: an id listed twice keeps
        its last answer last). Servers list in their storage's order, which for Radicale is a
        hash order; the store keys a calendar's resources and events by id, and a page of ids
        that are neighbours there changes a few index pages instead of about one per row. On
        the CalDAV benchmark's initial sync (10,000 objects, pages of 100) that cut what SQLite
        wrote from 118 MB to 49 MB and the store's system time to about a third.
        """
        ordered = sorted(members, key=attrgetter("provider_id"))
        have = [m for m in ordered if m.data]
        need = [m for m in ordered if not m.data]
        pending: ChangePage | None = None
        first_deletes = list(deletes)

        def page(resources: list[Resource], gone: list[str]) -> ChangePage:
            nonlocal first_deletes
            made = ChangePage(upserts=resources, deletes=first_deletes + gone, full=full)
            first_deletes = []
            return made

        for chunk in _chunks(have, batch_size):
            parsed = [r for r in map(self._parse, chunk) if r is not None]
            if pending is not None:
                yield pending
            pending = page(parsed, [])
        async for resources, gone in self._fetch(url, need, batch_size):
            if pending is not None:
                yield pending
            pending = page(resources, gone)
        if pending is None:
            pending = page([], [])
        pending.complete = True
        yield pending

    async def _fetch(
        self, url: str, members: list[_Member], batch_size: int
    ) -> AsyncIterator[tuple[list[Resource], list[str]]]:
        """Multiget `members` in batches, one request ahead; yields (resources, vanished ids)."""
        batches = [members[i : i + MULTIGET_BATCH] for i in range(0, len(members), MULTIGET_BATCH)]
        if not batches:
            return
        pending: asyncio.Task[tuple[list[_Member], list[str]]] | None = asyncio.ensure_future(
            self._multiget(url, batches[0])
        )
        try:
            for index in range(len(batches)):
                assert pending is not None
                fetched, vanished = await pending
                pending = None
                if index + 1 < len(batches):
                    pending = asyncio.ensure_future(self._multiget(url, batches[index + 1]))
                chunks = list(_chunks(fetched, batch_size)) or [[]]
                for number, chunk in enumerate(chunks):
                    parsed = [r for r in map(self._parse, chunk) if r is not None]
                    yield parsed, (vanished if number == 0 else [])
        finally:
            if pending is not None:
                await let_go(pending)

    async def _multiget(self, url: str, members: list[_Member]) -> tuple[list[_Member], list[str]]:
        """calendar-multiget; a 400 (too big for the server) or an unreadable answer splits the
        batch in halves, down to the one object that is then skipped and reported."""
        reply = await self._http.request(
            "REPORT", url, body=xml.multiget([m.href for m in members]), depth="1"
        )
        problem: str | None = None
        if reply.status == 400:
            problem = "the server refuses to return it (400 to calendar-multiget)"
        elif reply.status != 207:
            self._http.raise_for(reply, calendar=True)
        else:
            try:
                status = await self._multistatus(reply)
            except xml.HostileXML as exc:
                problem = f"its answer cannot be read: {exc}"
        if problem is not None:
            if len(members) == 1:
                member = members[0]
                log.warning("skipping %s: %s", member.provider_id, problem)
                self.skipped.append((member.provider_id, problem))
                return [], []
            middle = len(members) // 2
            left = await self._multiget(url, members[:middle])
            right = await self._multiget(url, members[middle:])
            return left[0] + right[0], left[1] + right[1]
        by_id = {m.provider_id: m for m in members}
        fetched: list[_Member] = []
        vanished: list[str] = []
        for response in status.responses:
            provider_id = _path_of(response.href, url)
            requested = by_id.pop(provider_id, None)
            if requested is None:
                continue
            data = response.text(xml.CALENDAR_DATA)
            if response.status in (404, 410) or (data is None and not response.props):
                vanished.append(provider_id)
                continue
            if not data:
                continue
            etag = _etag(response.text(xml.GETETAG)) or requested.etag
            fetched.append(_Member(requested.href, provider_id, etag, data))
        return fetched, vanished

    # -- windowed listing ----------------------------------------------------------------------

    async def calendar_query(self, calendar: Calendar, window: Window) -> list[Resource]:
        """Every calendar object with a VEVENT overlapping `window` (the server's judgement)."""
        collection = await self._collection(calendar)
        start = window.start.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        end = window.end.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        reply = await self._http.request(
            "REPORT", collection.url, body=xml.calendar_query(start, end), depth="1"
        )
        if reply.status != 207:
            self._http.raise_for(reply, calendar=True)
        status = await self._multistatus(reply)
        resources: list[Resource] = []
        for response in status.responses:
            data = response.text(xml.CALENDAR_DATA)
            if not data:
                continue
            member = _Member(
                response.href,
                _path_of(response.href, collection.url),
                _etag(response.text(xml.GETETAG)),
                data,
            )
            resource = self._parse(member)
            if resource is not None:
                resources.append(resource)
        return resources

    def calendar_url(self, calendar: Calendar) -> str | None:
        """The absolute URL of a listed calendar (None before `list_calendars`)."""
        known = self._collections.get(calendar.id)
        return known.url if known is not None else None

    def object_url(self, calendar: Calendar, filename: str) -> str | None:
        base = self.calendar_url(calendar)
        return None if base is None else base + quote(filename)
