"""Google Calendar API v3 behind `calsync.providers.base.CalendarProvider`.

Calendars come from the user's calendar list (`users/me/calendarList`, every page, hidden ones
included so the connection's include/exclude lists decide); a calendar shared with the user
only becomes visible there. Name is the user's `summaryOverride`, else the calendar's
`summary`; readers and free/busy readers get `read_only`.

Changes come from `events.list` on one calendar:
- without a cursor, a full listing: `singleEvents=false`, `showDeleted=false`, the largest page
  Google allows (`maxResults` up to 2,500; requests, not events, are what the per-user quota
  counts). Each Google page is one `ChangePage(full=True)`; Google hands out its sync token only
  with the last page, so only that page carries a cursor (`nextSyncToken`) and `complete`.
- with a cursor, the same request plus `syncToken`: Google insists that every other parameter
  match the listing that issued the token. Deleted events arrive as `status: "cancelled"`.
  410 (`fullSyncRequired`) raises CursorInvalid and the engine lists the calendar afresh.

Why masters and exceptions (`singleEvents=false`) rather than expanded instances: it is compact
(one resource per series, not one per occurrence, for open-ended series an unbounded number),
sync tokens cover it the same way, and the store expands series itself in range queries.

Why no `timeMin` / `timeMax`: they are refused together with `syncToken`, and since all other
parameters must match the initial listing, a window would have to be fixed for the life of the
token. The engine drops resources that fall wholly outside the connection's window instead;
`window` is not used here.

Cancelled items:
- a cancelled single event or master is a delete of its resource; a master's deletion also
  deletes its exceptions (Google reports them cancelled too; those stored earlier are found
  among the stored ids by Google's instance id form `<master id>_<original start>`).
- a cancelled exception of a live series is not a delete: it is an override with status
  cancelled (the master's UID, recurrence id = its original start), so the store leaves that
  instance out of the series. Google sends such items with only `id`, `recurringEventId` and
  `originalStartTime`; the master's UID comes from a master seen in this run (or an earlier
  one of this provider), else from one `events.get` of the master. They are resolved on the
  last page of the run, when every master of the run has been seen; a master that is gone or
  cancelled makes the exception a delete.

Items that cannot be read are left out and recorded in `skipped` (provider id, reason), which
the engine reports after the run.

Throughput (bench/google_sync.py): a page is read in one pass that also yields each item's JSON
text as received (`calsync.providers.jsonpage`), kept as the raw payload without serialising it
again, and the next page is requested as soon as a page's token is known, so Google prepares it
while this one is converted and committed.

Push channels (for the subscription controller, outside the engine's protocol): `watch` opens
an `events.watch` channel on a calendar and returns what Google answered (its `expiration` is
the one to plan the renewal by); `stop_channel` stops one, and a channel Google no longer knows
counts as stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import httpx

from calsync.model import Calendar, ChangePage, Resource, Window
from calsync.providers.base import (
    MAX_RESPONSE_BYTES,
    AuthenticationFailed,
    CalendarGone,
    CursorInvalid,
    KnownEtags,
    ProviderError,
    RateLimited,
    too_large,
)
from calsync.providers.budget import RequestBudget
from calsync.providers.google.convert import GoogleEvent, MalformedEvent, resource_from_json
from calsync.providers.ical import MAX_OBJECT_SIZE
from calsync.providers.jsonpage import PageReader
from calsync.providers.oauth import AccessTokens
from calsync.providers.rest import (
    JsonApi,
    abandon_prefetch,
    error_message,
    parse_retry_after,
    prefetch,
)

log = logging.getLogger(__name__)

GOOGLE_API_URL: Final = "https://www.googleapis.com"
API_PATH: Final = "/calendar/v3"
MAX_PAGE_SIZE: Final = 2500
CALENDAR_LIST_PAGE_SIZE: Final = 250
MAX_PAGES: Final = 10_000  # a listing that pages forever is a server bug, not data
QUOTA_RETRY_AFTER: Final = 900.0  # daily quota exhausted: come back much later
RATE_REASONS: Final = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
QUOTA_REASONS: Final = frozenset({"quotaExceeded", "dailyLimitExceeded"})
# The account or the OAuth app lacks something: no retry helps (one calendar's `forbidden` is
# left to the defaults, since it says nothing about the connection).
AUTH_REASONS: Final = frozenset({"insufficientPermissions", "accessNotConfigured", "authError"})
READ_ONLY_ROLES: Final = frozenset({"reader", "freeBusyReader"})
_LISTING: Final = PageReader(
    "items", ("nextPageToken", "nextSyncToken", "timeZone"), item_type=GoogleEvent
)


@dataclass(frozen=True)
class WatchChannel:
    """An open push channel, as events.watch answered."""

    id: str
    resource_id: str
    resource_uri: str
    expiration: float | None  # epoch seconds


class ChannelGone(ProviderError):
    """channels.stop answered 404: the channel is already gone."""

    retryable = False
    reason = "ChannelGone"


class EventGone(ProviderError):
    """One event (a master looked up for its UID) is gone: 404 / 410 on events.get."""

    retryable = False
    reason = "EventGone"


def google_reason(response: httpx.Response) -> str | None:
    """`error.errors[0].reason` of Google's envelope, if there is one."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    errors = error.get("errors") if isinstance(error, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        reason = errors[0].get("reason")
        return reason if isinstance(reason, str) else None
    return None


def _is_event_path(path: str) -> bool:
    _, sep, tail = path.partition("/events/")
    return bool(sep) and bool(tail) and tail != "watch"


def classify(response: httpx.Response) -> ProviderError | None:
    """Google's failures as the errors the engine acts on (None: JsonApi's defaults)."""
    status = response.status_code
    reason = google_reason(response)
    message = error_message(response)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status == 429 or (status == 403 and reason in RATE_REASONS):
        return RateLimited(message, retry_after)
    if status == 403 and reason in QUOTA_REASONS:
        return RateLimited(message, max(retry_after or 0.0, QUOTA_RETRY_AFTER))
    if status == 403 and reason in AUTH_REASONS:
        return AuthenticationFailed(message)
    path = response.request.url.path
    if status == 404 and path.endswith("/channels/stop"):
        return ChannelGone(message)
    if status in (404, 410) and _is_event_path(path):
        return EventGone(message)
    if status == 410:
        return CursorInvalid(message)
    if status == 404 and "/calendars/" in path:
        return CalendarGone(message)
    return None


@dataclass
class _Run:
    """What one `changes` run has seen, to settle cancelled items on its last page."""

    full: bool
    cancelled_masters: set[str] = field(default_factory=set)
    exceptions: dict[str, set[str]] = field(default_factory=dict)  # master -> exception ids
    deferred: list[tuple[GoogleEvent, str, str | None]] = field(default_factory=list)


class GoogleProvider:
    """One Google account's calendars, through the Calendar API v3."""

    def __init__(
        self,
        api_url: str,
        tokens: AccessTokens,
        *,
        budget: RequestBudget | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_results: int = MAX_PAGE_SIZE,
        max_object_size: int = MAX_OBJECT_SIZE,
        max_response_size: int = MAX_RESPONSE_BYTES,
    ) -> None:
        """`max_object_size`: an event whose JSON is longer is skipped and reported;
        `max_response_size`: a larger response fails the run (the settings of those names)."""
        base = (api_url or GOOGLE_API_URL).rstrip("/")
        if base.endswith(API_PATH):
            base = base[: -len(API_PATH)]
        self._api = JsonApi(
            base,
            tokens,
            classify=classify,
            budget=budget,
            timeout=timeout,
            transport=transport,
            provider="google",
            max_response_bytes=max_response_size,
        )
        self.max_object_size = max_object_size
        self.max_results = max(1, min(MAX_PAGE_SIZE, max_results))
        self.skipped: list[tuple[str, str]] = []
        self._zones: dict[str, str] = {}  # calendar id -> its time zone
        self._uids: dict[tuple[str, str], str] = {}  # (calendar, master event id) -> iCalUID

    @property
    def api(self) -> JsonApi:
        return self._api

    async def __aenter__(self) -> GoogleProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._api.aclose()

    # -- calendars -----------------------------------------------------------------------------

    async def list_calendars(self) -> list[Calendar]:
        found: list[Calendar] = []
        page_token: str | None = None
        for _ in range(MAX_PAGES):
            params: dict[str, str | int] = {
                "maxResults": CALENDAR_LIST_PAGE_SIZE,
                "showHidden": "true",
                "prettyPrint": "false",
            }
            if page_token:
                params["pageToken"] = page_token
            body = await self._api.get_json(f"{API_PATH}/users/me/calendarList", params=params)
            for item in _items(body):
                calendar = self._calendar(item)
                if calendar is not None:
                    found.append(calendar)
            next_token = body.get("nextPageToken")
            if not isinstance(next_token, str) or not next_token:
                return found
            if next_token == page_token:
                raise ProviderError("the calendar list repeats its page token")
            page_token = next_token
        raise ProviderError(f"the calendar list has more than {MAX_PAGES} pages")

    def _calendar(self, item: Mapping[str, Any]) -> Calendar | None:
        calendar_id = item.get("id")
        if not isinstance(calendar_id, str) or not calendar_id or item.get("deleted"):
            return None
        zone = item.get("timeZone")
        if isinstance(zone, str) and zone:
            self._zones[calendar_id] = zone
        name = item.get("summaryOverride") or item.get("summary") or calendar_id
        color = item.get("backgroundColor")
        return Calendar(
            id=calendar_id,
            name=str(name),
            color=color if isinstance(color, str) else None,
            read_only=item.get("accessRole") in READ_ONLY_ROLES,
        )

    # -- changes -------------------------------------------------------------------------------

    def _events_path(self, calendar_id: str) -> str:
        return f"{API_PATH}/calendars/{quote(calendar_id, safe='')}/events"

    async def changes(
        self,
        calendar: Calendar,
        cursor: str | None,
        *,
        window: Window,
        known: KnownEtags,
        batch_size: int,
    ) -> AsyncIterator[ChangePage]:
        """Pages of changes; see the module docstring. `batch_size` does not shrink Google's
        pages: each is committed as one page, and fewer requests spend less quota."""
        path = self._events_path(calendar.id)
        base: dict[str, str | int] = {
            "singleEvents": "false",
            "showDeleted": "false",
            "maxResults": self.max_results,
            "prettyPrint": "false",  # compact JSON: less to transfer, and to keep as `raw`
        }
        if cursor:
            base["syncToken"] = cursor
        run = _Run(full=cursor is None)
        page_token: str | None = None
        fetch: asyncio.Future[tuple[dict[str, Any], list[tuple[Any, str]]]]
        fetch = asyncio.ensure_future(self._page(path, base))
        try:
            for _ in range(MAX_PAGES):
                body, items = await fetch
                next_token = body.get("nextPageToken")
                more = isinstance(next_token, str) and bool(next_token)
                if more:
                    if next_token == page_token:
                        raise ProviderError(f"the listing of {calendar.id} repeats its page token")
                    page_token = next_token
                    # Asked for now, so the server prepares it while this one is converted.
                    fetch = await prefetch(self._page(path, {**base, "pageToken": str(next_token)}))
                zone = body.get("timeZone")
                if isinstance(zone, str) and zone:
                    self._zones[calendar.id] = zone
                upserts, deletes = self._convert(
                    items, calendar.id, self._zones.get(calendar.id), run
                )
                if more:
                    yield ChangePage(upserts=upserts, deletes=deletes, full=run.full)
                    continue
                sync_token = body.get("nextSyncToken")
                if not isinstance(sync_token, str) or not sync_token:
                    raise ProviderError(
                        f"the last page of the listing of {calendar.id} has no nextSyncToken"
                    )
                more_upserts, more_deletes = await self._settle(path, calendar.id, run, known)
                doomed = set(more_deletes)
                final = [r for r in [*upserts, *more_upserts] if r.provider_id not in doomed]
                yield ChangePage(
                    upserts=final,
                    deletes=[*deletes, *more_deletes],
                    cursor=sync_token,
                    complete=True,
                    full=run.full,
                )
                return
            raise ProviderError(f"the listing of {calendar.id} has more than {MAX_PAGES} pages")
        finally:
            await abandon_prefetch(fetch)

    async def _page(
        self, path: str, params: dict[str, str | int]
    ) -> tuple[dict[str, Any], list[tuple[Any, str]]]:
        """One page: its fields, and its items each with its own JSON text."""
        response = await self._api.request("GET", path, params=params)
        try:
            return _LISTING.read(response.content)
        except ValueError as exc:
            raise ProviderError(f"GET {path}: the answer is not an event listing ({exc})") from None

    def _skip(self, event_id: str, why: str) -> None:
        log.warning("skipping an unreadable Google event (%s): %s", event_id, why)
        self.skipped.append((event_id, why))

    def _convert(
        self, items: list[tuple[Any, str]], calendar_id: str, zone: str | None, run: _Run
    ) -> tuple[list[Resource], list[str]]:
        uids = self._uids
        upserts: list[Resource] = []
        deletes: list[str] = []
        for item, raw in items:
            event_id = item.id if type(item) is GoogleEvent else None
            if not isinstance(event_id, str) or not event_id:
                self._skip("?", "an item without an id")
                continue
            if len(raw) > self.max_object_size:
                self._skip(event_id, too_large(len(raw), self.max_object_size))
                continue
            parent = item.recurring_event_id
            if parent is not None and not isinstance(parent, str):
                self._skip(event_id, "recurringEventId is not a string")
                continue
            if item.status == "cancelled":
                if parent:
                    run.deferred.append((item, raw, zone))
                else:
                    deletes.append(event_id)
                    run.cancelled_masters.add(event_id)
                continue
            uid = item.ical_uid
            if not isinstance(uid, str) or not uid:
                if parent and (calendar_id, parent) not in uids:
                    run.deferred.append((item, raw, zone))  # its master's UID is found later
                    continue
                uid = uids[(calendar_id, parent)] if parent else event_id
            try:
                resource = resource_from_json(item, uid=uid, default_zone=zone, raw=raw)
            except MalformedEvent as exc:
                self._skip(event_id, str(exc))
                continue
            if parent:
                uids.setdefault((calendar_id, parent), resource.events[0].uid)
                run.exceptions.setdefault(parent, set()).add(event_id)
            elif item.recurrence:
                uids[(calendar_id, event_id)] = resource.events[0].uid
            upserts.append(resource)
        return upserts, deletes

    async def _settle(
        self, path: str, calendar_id: str, run: _Run, known: KnownEtags
    ) -> tuple[list[Resource], list[str]]:
        """The deferred exceptions, and what the run's cancelled masters take along."""
        upserts: list[Resource] = []
        deletes: list[str] = []
        for item, raw, zone in run.deferred:
            event_id, parent = str(item.id), str(item.recurring_event_id)
            uid: str | None = item.ical_uid if isinstance(item.ical_uid, str) else None
            if parent in run.cancelled_masters:
                deletes.append(event_id)
                continue
            uid = (
                uid
                or self._uids.get((calendar_id, parent))
                or await self._master_uid(path, calendar_id, parent, run)
            )
            if uid is None:  # the series is gone: nothing to override
                deletes.append(event_id)
                continue
            try:
                upserts.append(resource_from_json(item, uid=uid, default_zone=zone, raw=raw))
            except MalformedEvent as exc:
                self._skip(event_id, str(exc))
                deletes.append(event_id)
                continue
            run.exceptions.setdefault(parent, set()).add(event_id)
        for master in run.cancelled_masters:
            deletes += sorted(run.exceptions.get(master, ()))
        if not run.full and run.cancelled_masters:
            stored = await known()
            deletes += [
                pid
                for pid in stored
                if "_" in pid and pid.rpartition("_")[0] in run.cancelled_masters
            ]
        return upserts, list(dict.fromkeys(deletes))

    async def _master_uid(
        self, path: str, calendar_id: str, master_id: str, run: _Run
    ) -> str | None:
        """The iCalUID of a live master, by events.get; None when it is gone or cancelled."""
        try:
            body = await self._api.get_json(
                f"{path}/{quote(master_id, safe='')}", params={"prettyPrint": "false"}
            )
        except EventGone:
            run.cancelled_masters.add(master_id)
            return None
        uid = body.get("iCalUID")
        if body.get("status") == "cancelled" or not isinstance(uid, str) or not uid:
            run.cancelled_masters.add(master_id)
            return None
        self._uids[(calendar_id, master_id)] = uid
        return uid

    # -- push channels -------------------------------------------------------------------------

    async def watch(
        self,
        calendar_id: str,
        *,
        channel_id: str,
        address: str,
        token: str | None = None,
        ttl: float | None = None,
    ) -> WatchChannel:
        """Open a channel that notifies `address` of changes to the calendar's events."""
        body: dict[str, Any] = {"id": channel_id, "type": "web_hook", "address": address}
        if token is not None:
            body["token"] = token
        if ttl is not None:
            body["params"] = {"ttl": str(int(ttl))}
        response = await self._api.request(
            "POST", f"{self._events_path(calendar_id)}/watch", json=body
        )
        try:
            answer = response.json()
        except ValueError:
            raise ProviderError("events.watch answered without JSON") from None
        resource_id = answer.get("resourceId") if isinstance(answer, dict) else None
        if not isinstance(resource_id, str) or not resource_id:
            raise ProviderError("events.watch answered without a resourceId")
        expiration: float | None = None
        try:
            expiration = int(str(answer.get("expiration"))) / 1000
        except ValueError:
            expiration = None
        return WatchChannel(
            id=str(answer.get("id") or channel_id),
            resource_id=resource_id,
            resource_uri=str(answer.get("resourceUri") or ""),
            expiration=expiration,
        )

    async def stop_channel(self, channel_id: str, resource_id: str) -> bool:
        """Stop a channel; False when Google no longer knew it (stopped or expired)."""
        try:
            await self._api.request(
                "POST",
                f"{API_PATH}/channels/stop",
                json={"id": channel_id, "resourceId": resource_id},
            )
        except ChannelGone:
            return False
        return True


def _items(body: Mapping[str, Any]) -> list[Any]:
    items = body.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        raise ProviderError("the answer's items is not a list")
    return items
