"""Microsoft Graph (Outlook calendars) behind `calsync.providers.base.CalendarProvider`.

Calendars: every page of `GET /v1.0/me/calendars` (own calendars and those shared with the
user); `hexColor` is the color, `canEdit` false makes the calendar read-only.

Changes: a calendar-view delta round per calendar. Without a cursor the round starts at
`/v1.0/me/calendars/{id}/calendarView/delta?startDateTime&endDateTime` (the connection's
window) with `Prefer: odata.maxpagesize=1000, outlook.timezone="UTC"` (Graph's largest pages:
fewer requests against the mailbox's throttling budget and less work per item); its pages are a
full listing (`full=True`), so whatever the store holds that the round does not mention is
deleted when the last page is committed. With a cursor, the stored deltaLink is followed and the
pages carry only changes. Each Graph page is handed to the store as `ChangePage`s of at most
`batch_size` items (`SYNC_BATCH_SIZE`, a store transaction each), in order and without a cursor
(a crash mid-round replays the round from the previous deltaLink, which is harmless because
upserts replace whole resources and deletes of unknown ids do nothing); the last one of the page
with the `@odata.deltaLink` is complete and carries the new cursor. An item that is both removed
and present in one `ChangePage` counts as its last mention; across them, the later one is
applied later.

The window is baked into the delta token by Graph, but a connection's window rolls forward
every day. The cursor therefore records the window it was made for: it is the deltaLink URL with
a fragment `#window=<start>/<end>` (ISO 8601, UTC; the fragment is never sent). When the
connection's window start or end has moved by more than `WINDOW_TOLERANCE` (one day) from the
recorded one, `changes` raises `CursorInvalid`, and the engine re-baselines with a full listing
over the new window, which also drops what fell out of it. Within the tolerance the old window
is kept: at most a day's worth of far-future events (two years out by default) is missing, and
at most a day's worth of events that slid out of the past end is still stored, until the next
re-baseline, which so happens about once a day per calendar. A cursor without a recorded window
is also re-baselined.

Links come from the server, so they are checked before the bearer token goes with them: a
stored deltaLink that points at another host than `graph_url` (or outside its /v1.0 API) is
`CursorInvalid` (resync from our own host), and such a nextLink is a non-retryable error.

Errors (`classify`): 410, and any 4xx whose Graph error code is `syncStateNotFound` or
`resyncRequired` (any capitalisation), are `CursorInvalid`; 404 is `CalendarGone`; 429 and 503
are `RateLimited` with Retry-After (retried by `JsonApi` when short); 401 is answered by a token
refresh in `JsonApi`; the rest carry Graph's own message. Concurrency is capped at four requests
(Outlook's limit per mailbox) by `JsonApi`'s semaphore.

Change notifications (for the subscription controller, outside the engine's protocol):
`subscribe` creates a subscription (`POST /v1.0/subscriptions`, created/updated/deleted) on a
resource such as `calendar_resource(calendar.id)`; Graph first proves both URLs with its
validation handshake, and a refusal (a failed handshake included) is a non-retryable
`ProviderError` that carries Graph's message. The returned `GraphSubscription.expiration` is
the one Graph granted (it caps lifetimes at 10,080 minutes), so renewals are planned by it.
`renew_subscription` PATCHes a new expiration, `reauthorize_subscription` answers a
`reauthorizationRequired` lifecycle event (`POST .../reauthorize`), and `delete_subscription`
deletes one, where a subscription Graph no longer knows counts as deleted. A 404 or 410 on a
subscription is `SubscriptionGone` (non-retryable): the caller creates a new one and resyncs.

Items that cannot be converted are left out of their page and recorded in `skipped`
(provider id, reason), which the engine collects after each run.

Throughput (bench/microsoft_sync.py): a page is read in one pass that also yields each item's
JSON text as received (`calsync.providers.jsonpage`), which is stored as the raw payload without
serialising it again, and the next page is requested as soon as a page's links are known, so the
server prepares it while this one is converted and committed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import httpx

from calsync.model import Calendar, ChangePage, Resource, Window
from calsync.providers.base import (
    MAX_RESPONSE_BYTES,
    CalendarGone,
    CursorInvalid,
    InvalidConfiguration,
    KnownEtags,
    ProviderError,
    too_large,
)
from calsync.providers.budget import RequestBudget
from calsync.providers.ical import MAX_OBJECT_SIZE
from calsync.providers.jsonpage import PageReader
from calsync.providers.microsoft.convert import MalformedEvent, to_resource
from calsync.providers.oauth import AccessTokens
from calsync.providers.rest import JsonApi, abandon_prefetch, prefetch

log = logging.getLogger(__name__)

GRAPH_URL: Final = "https://graph.microsoft.com"
API_PREFIX: Final = "/v1.0/"
WINDOW_MARK: Final = "#window="
WINDOW_TOLERANCE: Final = dt.timedelta(days=1)
MAX_PAGE_SIZE: Final = 1000
RESET_CODES: Final = frozenset({"syncstatenotfound", "resyncrequired"})
_DELTA_PAGE: Final = PageReader("value", ("@odata.nextLink", "@odata.deltaLink"), required=True)
SUBSCRIPTIONS_PATH: Final = "/v1.0/subscriptions"
CHANGE_TYPES: Final = "created,updated,deleted"
MAX_CLIENT_STATE: Final = 128


@dataclass(frozen=True)
class GraphSubscription:
    """A change-notification subscription, as Graph answered its creation or renewal."""

    id: str
    resource: str
    expiration: dt.datetime  # aware, UTC: what Graph granted, not what was asked for
    client_state: str | None
    notification_url: str
    lifecycle_notification_url: str | None


class SubscriptionGone(ProviderError):
    """Graph no longer knows the subscription (404 / 410): expired, removed or never made."""

    retryable = False
    reason = "SubscriptionGone"


def calendar_resource(calendar_id: str) -> str:
    """The subscription resource for the events of one calendar (an id from list_calendars)."""
    return f"/me/calendars/{quote(calendar_id, safe='=')}/events"


def _error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else ""


def _message(response: httpx.Response, code: str) -> str:
    try:
        body = response.json()
        text = str(body["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        text = response.reason_phrase or "error"
    return f"HTTP {response.status_code} {code or ''}: {text}".replace("  ", " ")


def classify(response: httpx.Response) -> ProviderError | None:
    """Graph's answers that mean something to the engine; None leaves the default mapping."""
    status = response.status_code
    code = _error_code(response)
    _, marker, tail = response.request.url.path.partition(SUBSCRIPTIONS_PATH)
    if marker and tail.startswith("/") and status in (404, 410):
        return SubscriptionGone(_message(response, code))
    if marker and not tail and 400 <= status < 500 and status not in (404, 429):
        error = ProviderError(f"Graph refused the subscription: {_message(response, code)}")
        error.retryable = False
        return error
    if status == 410 or (400 <= status < 500 and code.lower() in RESET_CODES):
        return CursorInvalid(_message(response, code))
    if status == 404:
        return CalendarGone(_message(response, code))
    return None


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _expiration_text(value: dt.datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a subscription expiration must be an aware datetime")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _instant(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def _subscription(
    response: httpx.Response, what: str, sent: Mapping[str, Any] | None = None
) -> GraphSubscription:
    """Graph's answer about a subscription; fields it leaves out fall back to what was sent."""
    try:
        body = response.json()
    except ValueError:
        raise ProviderError(f"{what}: the answer is not JSON") from None
    if not isinstance(body, dict):
        raise ProviderError(f"{what}: the answer is not a JSON object")
    fields = {**(sent or {}), **{k: v for k, v in body.items() if v is not None}}
    sub_id = fields.get("id")
    if not isinstance(sub_id, str) or not sub_id:
        raise ProviderError(f"{what}: the answer has no subscription id")
    expiration = _instant(body.get("expirationDateTime"))
    if expiration is None:
        raise ProviderError(f"{what}: the answer has no valid expirationDateTime")

    def text(name: str) -> str | None:
        value = fields.get(name)
        return value if isinstance(value, str) and value else None

    return GraphSubscription(
        id=sub_id,
        resource=text("resource") or "",
        expiration=expiration,
        client_state=text("clientState"),
        notification_url=text("notificationUrl") or "",
        lifecycle_notification_url=text("lifecycleNotificationUrl"),
    )


def make_cursor(delta_link: str, window: tuple[dt.datetime, dt.datetime]) -> str:
    """The stored cursor: the deltaLink plus the window it was made for, as a fragment."""
    return f"{delta_link}{WINDOW_MARK}{_iso(window[0])}/{_iso(window[1])}"


def parse_cursor(cursor: str) -> tuple[str, tuple[dt.datetime, dt.datetime] | None]:
    link, mark, span = cursor.partition(WINDOW_MARK)
    if not mark:
        return cursor, None
    start, slash, end = span.partition("/")
    try:
        window = (dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end))
    except ValueError:
        return link, None
    if not slash:
        return link, None
    return link, window


class MicrosoftProvider:
    """One Microsoft 365 / Outlook.com account through Microsoft Graph."""

    def __init__(
        self,
        graph_url: str,
        tokens: AccessTokens,
        *,
        budget: RequestBudget | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_concurrency: int = 4,
        max_object_size: int = MAX_OBJECT_SIZE,
        max_response_size: int = MAX_RESPONSE_BYTES,
        page_size: int = MAX_PAGE_SIZE,
    ) -> None:
        """`max_object_size`: an event whose JSON is longer is skipped and reported;
        `max_response_size`: a larger response fails the run (the settings of those names);
        `page_size`: the delta pages asked of Graph (`odata.maxpagesize`, 1 to 1,000)."""
        root = (graph_url or GRAPH_URL).rstrip("/")
        if root.endswith("/v1.0"):
            root = root[: -len("/v1.0")]
        self.graph_url = root
        self._api = JsonApi(
            root,
            tokens,
            classify=classify,
            budget=budget,
            timeout=timeout,
            max_concurrency=max_concurrency,
            transport=transport,
            provider="microsoft",
            max_response_bytes=max_response_size,
        )
        self.max_object_size = max_object_size
        self.page_size = max(1, min(MAX_PAGE_SIZE, page_size))
        self.skipped: list[tuple[str, str]] = []

    @property
    def api(self) -> JsonApi:
        """The HTTP client (its counters: requests, retries, rate_limited)."""
        return self._api

    async def aclose(self) -> None:
        await self._api.aclose()

    def _ours(self, link: str) -> bool:
        if not self._api.same_origin(link):
            return False
        root_path = httpx.URL(self.graph_url).path.rstrip("/")
        return httpx.URL(link).path.startswith(root_path + API_PREFIX)

    async def list_calendars(self) -> list[Calendar]:
        found: list[Calendar] = []
        url: str = "/v1.0/me/calendars"
        params: dict[str, str | int] | None = {"$top": 100}
        while True:
            body = await self._api.get_json(url, params=params)
            for item in body.get("value") or []:
                if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                    continue
                color = item.get("hexColor")
                found.append(
                    Calendar(
                        id=item["id"],
                        name=str(item.get("name") or item["id"]),
                        color=color if isinstance(color, str) and color else None,
                        read_only=item.get("canEdit") is False,
                    )
                )
            link = body.get("@odata.nextLink")
            if not isinstance(link, str) or not link:
                return found
            if not self._ours(link):
                raise _foreign(link)
            url, params = link, None

    async def changes(
        self,
        calendar: Calendar,
        cursor: str | None,
        *,
        window: Window,
        known: KnownEtags,
        batch_size: int,
    ) -> AsyncIterator[ChangePage]:
        size = max(1, batch_size)  # items per ChangePage, that is per store transaction
        headers = {"Prefer": f'odata.maxpagesize={self.page_size}, outlook.timezone="UTC"'}
        full = cursor is None
        made_for = (window.start, window.end)
        params: dict[str, str | int] | None = None
        if cursor is None:
            url = f"/v1.0/me/calendars/{quote(calendar.id, safe='')}/calendarView/delta"
            params = {"startDateTime": _iso(window.start), "endDateTime": _iso(window.end)}
        else:
            url, recorded = parse_cursor(cursor)
            if recorded is None:
                raise CursorInvalid("the stored delta link does not record its window")
            if (
                abs(recorded[0] - window.start) > WINDOW_TOLERANCE
                or abs(recorded[1] - window.end) > WINDOW_TOLERANCE
            ):
                raise CursorInvalid(
                    "the connection's window moved since the delta link was made; re-baselining"
                )
            if not self._ours(url):
                raise CursorInvalid(
                    f"the stored delta link points at another host ({httpx.URL(url).host})"
                )
            made_for = recorded
        fetch: asyncio.Future[httpx.Response] = asyncio.ensure_future(
            self._api.request("GET", url, params=params, headers=headers)
        )
        try:
            while True:
                response = await fetch
                try:
                    body, items = _DELTA_PAGE.read(response.content)
                except ValueError as exc:
                    raise ProviderError(
                        f"a delta page that is not a JSON object with a value array ({exc})"
                    ) from None
                next_link = body.get("@odata.nextLink")
                if isinstance(next_link, str) and next_link:
                    if not self._ours(next_link):
                        raise _foreign(next_link)
                    # The next page is requested now, so the server renders it while this
                    # one is converted and stored.
                    fetch = await prefetch(self._api.request("GET", next_link, headers=headers))
                    for start in range(0, len(items), size):
                        yield self._page(items[start : start + size], full)
                    continue
                delta_link = body.get("@odata.deltaLink")
                if not isinstance(delta_link, str) or not delta_link:
                    raise ProviderError("a delta page with neither nextLink nor deltaLink")
                last = max(0, len(items) - 1) // size * size  # where the last chunk starts
                for start in range(0, last, size):
                    yield self._page(items[start : start + size], full)
                page = self._page(items[last:], full)
                page.cursor = make_cursor(delta_link, made_for)
                page.complete = True
                yield page
                return
        finally:
            await abandon_prefetch(fetch)

    def _page(self, items: list[tuple[Any, str]], full: bool) -> ChangePage:
        upserts: dict[str, Resource] = {}
        deletes: dict[str, None] = {}
        for item, raw in items:
            item_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(item_id, str) or not item_id:
                self.skipped.append(("", "a delta item without id"))
                continue
            if "@removed" in item:
                upserts.pop(item_id, None)
                deletes[item_id] = None
                continue
            if len(raw) > self.max_object_size:
                self.skipped.append((item_id, too_large(len(raw), self.max_object_size)))
                continue
            try:
                resource = to_resource(item, raw)
            except MalformedEvent as exc:
                self.skipped.append((item_id, str(exc)))
                continue
            deletes.pop(item_id, None)
            upserts[item_id] = resource
        return ChangePage(upserts=list(upserts.values()), deletes=list(deletes), full=full)

    # -- change notifications ------------------------------------------------------------------

    async def subscribe(
        self,
        *,
        resource: str,
        notification_url: str,
        lifecycle_notification_url: str,
        client_state: str,
        expiration: dt.datetime,
    ) -> GraphSubscription:
        """Subscribe to created/updated/deleted changes of `resource` (see `calendar_resource`).

        Graph validates both URLs before it answers; a refusal is a non-retryable
        ProviderError with Graph's reason. The result's expiration is the one Graph granted.
        """
        if len(client_state) > MAX_CLIENT_STATE:
            raise InvalidConfiguration(
                f"clientState is {len(client_state)} characters; Graph allows at most "
                f"{MAX_CLIENT_STATE}"
            )
        body: dict[str, Any] = {
            "changeType": CHANGE_TYPES,
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_notification_url,
            "resource": resource,
            "expirationDateTime": _expiration_text(expiration),
        }
        if client_state:
            body["clientState"] = client_state
        response = await self._api.request("POST", SUBSCRIPTIONS_PATH, json=body)
        return _subscription(response, "creating a subscription", body)

    def _subscription_path(self, subscription_id: str) -> str:
        if not subscription_id:
            raise ValueError("a subscription id is required")
        return f"{SUBSCRIPTIONS_PATH}/{quote(subscription_id, safe='')}"

    async def renew_subscription(
        self, subscription_id: str, expiration: dt.datetime
    ) -> GraphSubscription:
        """Move a subscription's expiration; SubscriptionGone when Graph no longer knows it."""
        response = await self._api.request(
            "PATCH",
            self._subscription_path(subscription_id),
            json={"expirationDateTime": _expiration_text(expiration)},
        )
        return _subscription(response, "renewing a subscription", {"id": subscription_id})

    async def reauthorize_subscription(self, subscription_id: str) -> None:
        """Answer a reauthorizationRequired lifecycle event (`POST .../reauthorize`)."""
        await self._api.request("POST", f"{self._subscription_path(subscription_id)}/reauthorize")

    async def delete_subscription(self, subscription_id: str) -> bool:
        """Delete a subscription; False when Graph no longer knew it (which counts as done)."""
        try:
            await self._api.request("DELETE", self._subscription_path(subscription_id))
        except SubscriptionGone:
            return False
        return True


def _foreign(link: str) -> ProviderError:
    error = ProviderError(f"refusing to follow a link to another host: {httpx.URL(link).host}")
    error.retryable = False
    return error
