"""GoogleProvider against the Google simulator over a real socket (no store, no engine).

What the provider hands the engine is checked page by page: calendars from the calendar list,
full listings paged with the sync token only on the last page, incremental pages, cancelled
items turned into deletes or cancelled overrides, and the typed errors for 410, 404, rate
limits, quota, refused grants and bad requests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest

from calsync.model import Calendar, ChangePage, Resource, Window
from calsync.providers.base import (
    CalendarGone,
    CursorInvalid,
    InvalidGrant,
    ProviderError,
    RateLimited,
)
from calsync.providers.google import GoogleProvider
from calsync.providers.oauth import OAuthClient, RefreshingTokens, StaticTokens, TokenSet
from calsync.sync.budget import TokenBucket
from calsync.testing.google import GoogleSimulator, RunningSimulator, running

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"
BOB = "bob@example.com"
WINDOW = Window.around(dt.datetime.now(dt.UTC), 365, 730)
EVENTS_ROUTE = "GET /calendar/v3/calendars/{calendarId}/events"
GET_ROUTE = "GET /calendar/v3/calendars/{calendarId}/events/{eventId}"


@pytest.fixture
async def google() -> AsyncIterator[RunningSimulator]:
    async with running(sim=GoogleSimulator()) as served:
        served.sim.create_user(ALICE, time_zone="Europe/Berlin")
        served.sim.create_user(BOB)
        yield served


@pytest.fixture
async def provider(google: RunningSimulator) -> AsyncIterator[GoogleProvider]:
    token = google.sim.mint_access_token(ALICE)
    found = GoogleProvider(google.url, StaticTokens(token), timeout=30, max_results=50)
    yield found
    await found.aclose()


async def no_etags() -> Mapping[str, str | None]:
    return {}


def calendar(calendar_id: str = ALICE) -> Calendar:
    return Calendar(id=calendar_id, name=calendar_id)


async def pages(
    provider: GoogleProvider,
    cursor: str | None = None,
    calendar_id: str = ALICE,
    known: Any = no_etags,
) -> list[ChangePage]:
    found = []
    async for page in provider.changes(
        calendar(calendar_id), cursor, window=WINDOW, known=known, batch_size=100
    ):
        found.append(page)
    return found


def upserted(found: list[ChangePage]) -> dict[str, Resource]:
    return {r.provider_id: r for page in found for r in page.upserts}


def event(summary: str, day: int, hour: int = 9, **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "start": {"dateTime": f"2025-06-{day:02d}T{hour:02d}:00:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": f"2025-06-{day:02d}T{hour:02d}:45:00", "timeZone": "Europe/Berlin"},
        **extra,
    }


async def test_list_calendars_names_colours_roles_and_paging(
    google: RunningSimulator, provider: GoogleProvider
) -> None:
    sim = google.sim
    for n in range(260):  # more than one page of 250
        sim.create_calendar(ALICE, summary=f"Team {n:03d}")
    shared = sim.create_calendar(BOB, summary="Bob's")
    sim.share_calendar(shared["id"], ALICE, "reader")
    sim.set_calendar_entry(ALICE, shared["id"], summary_override="From Bob", hidden=True)
    found = {c.id: c for c in await provider.list_calendars()}
    assert len(found) == 262
    assert found[ALICE].name == ALICE and not found[ALICE].read_only
    assert found[ALICE].color is not None and found[ALICE].color.startswith("#")
    assert found[shared["id"]].name == "From Bob" and found[shared["id"]].read_only

    sim.unshare_calendar(shared["id"], ALICE)
    assert shared["id"] not in {c.id for c in await provider.list_calendars()}


async def test_full_listing_pages_with_the_token_only_on_the_last(
    google: RunningSimulator, provider: GoogleProvider
) -> None:
    for day in range(1, 28):
        for hour in (8, 12, 16, 18):
            google.sim.create_event(ALICE, event(f"e{day}-{hour}", day, hour))
    found = await pages(provider)
    assert [len(p.upserts) for p in found] == [50, 50, 8]
    assert all(p.full for p in found)
    assert [p.cursor is not None for p in found] == [False, False, True]
    assert [p.complete for p in found] == [False, False, True]
    resources = upserted(found)
    assert len(resources) == 108
    one = next(iter(resources.values()))
    assert one.raw_format == "json" and one.etag and one.etag.startswith('"')
    assert google.sim.stats()["requests"][EVENTS_ROUTE] == 3


async def test_incremental_after_create_update_delete(
    google: RunningSimulator, provider: GoogleProvider
) -> None:
    sim = google.sim
    kept = sim.create_event(ALICE, event("kept", 1))
    changed = sim.create_event(ALICE, event("changed", 2))
    doomed = sim.create_event(ALICE, event("doomed", 3))
    cursor = (await pages(provider))[-1].cursor
    assert cursor is not None
    unchanged = await pages(provider, cursor)
    assert len(unchanged) == 1 and unchanged[0].complete and not unchanged[0].full
    assert unchanged[0].upserts == [] and unchanged[0].deletes == []

    sim.update_event(ALICE, changed["id"], {"summary": "changed!"})
    sim.delete_event(ALICE, doomed["id"])
    added = sim.create_event(ALICE, event("added", 4))
    found = await pages(provider, cursor)
    resources = upserted(found)
    assert set(resources) == {changed["id"], added["id"]}
    assert resources[changed["id"]].events[0].summary == "changed!"
    assert [d for p in found for d in p.deletes] == [doomed["id"]]
    assert kept["id"] not in resources
    assert found[-1].cursor not in (None, cursor)


def weekly(sim: GoogleSimulator) -> tuple[dict[str, Any], str, str]:
    master = sim.create_event(ALICE, event("weekly", 2, recurrence=["RRULE:FREQ=WEEKLY;COUNT=6"]))
    moved = sim.update_event(
        ALICE,
        f"{master['id']}_20250609T070000Z",
        {
            "start": {"dateTime": "2025-06-09T15:00:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2025-06-09T15:45:00", "timeZone": "Europe/Berlin"},
        },
    )
    cancelled = sim.cancel_instance(
        ALICE, master["id"], {"dateTime": "2025-06-16T09:00:00", "timeZone": "Europe/Berlin"}
    )
    return master, moved["id"], cancelled["id"]


async def test_cancelled_exception_is_an_override_not_a_delete(
    google: RunningSimulator, provider: GoogleProvider
) -> None:
    master, moved, cancelled = weekly(google.sim)
    found = await pages(provider)
    resources = upserted(found)
    assert set(resources) == {master["id"], moved, cancelled}
    assert not any(p.deletes for p in found)
    (series,) = resources[master["id"]].events
    assert series.rrule == "FREQ=WEEKLY;COUNT=6" and series.uid == master["iCalUID"]
    (override,) = resources[cancelled].events
    assert (override.uid, override.status) == (master["iCalUID"], "cancelled")
    assert override.recurrence_id == "2025-06-16T07:00:00+00:00"
    (shifted,) = resources[moved].events
    assert shifted.recurrence_id == "2025-06-09T07:00:00+00:00"
    assert shifted.start == dt.datetime(2025, 6, 9, 13, tzinfo=dt.UTC)
    # The master was in the same listing: its UID came from there, no extra request.
    assert google.sim.stats()["requests"].get(GET_ROUTE, 0) == 0


async def test_cancelled_exception_of_an_unchanged_series_looks_the_master_up(
    google: RunningSimulator, google_token: str
) -> None:
    sim = google.sim
    master, _, _ = weekly(sim)
    first = GoogleProvider(google.url, StaticTokens(google_token))
    cursor = (await pages(first))[-1].cursor
    await first.aclose()
    sim.cancel_instance(
        ALICE, master["id"], {"dateTime": "2025-06-23T09:00:00", "timeZone": "Europe/Berlin"}
    )
    fresh = GoogleProvider(google.url, StaticTokens(google_token))  # knows no UIDs yet
    try:
        found = await pages(fresh, cursor)
    finally:
        await fresh.aclose()
    (override,) = [e for r in upserted(found).values() for e in r.events]
    assert override.uid == master["iCalUID"] and override.status == "cancelled"
    assert override.recurrence_id == "2025-06-23T07:00:00+00:00"
    assert not any(p.deletes for p in found)
    assert sim.stats()["requests"][GET_ROUTE] == 1


@pytest.fixture
def google_token(google: RunningSimulator) -> str:
    return google.sim.mint_access_token(ALICE)


async def test_deleted_series_takes_its_stored_exceptions_along(
    google: RunningSimulator, provider: GoogleProvider
) -> None:
    master, moved, cancelled = weekly(google.sim)
    first = await pages(provider)
    stored = {rid: r.etag for rid, r in upserted(first).items()}
    google.sim.delete_event(ALICE, master["id"])

    async def known() -> Mapping[str, str | None]:
        return stored

    found = await pages(provider, first[-1].cursor, known=known)
    deletes = {d for p in found for d in p.deletes}
    assert deletes == {master["id"], moved, cancelled}
    assert upserted(found) == {}


async def test_rejected_sync_token_is_cursor_invalid(
    google: RunningSimulator, provider: GoogleProvider
) -> None:
    google.sim.create_event(ALICE, event("one", 1))
    cursor = (await pages(provider))[-1].cursor
    google.sim.invalidate_sync_tokens(ALICE)
    with pytest.raises(CursorInvalid):
        await pages(provider, cursor)


async def test_deleted_calendar_is_calendar_gone(
    google: RunningSimulator, provider: GoogleProvider
) -> None:
    team = google.sim.create_calendar(ALICE, summary="Team")
    await pages(provider, calendar_id=team["id"])
    google.sim.delete_calendar(team["id"])
    with pytest.raises(CalendarGone):
        await pages(provider, calendar_id=team["id"])


def refreshing(google: RunningSimulator, refresh_token: str) -> RefreshingTokens:
    client = OAuthClient(
        client_id="cid",
        client_secret="secret",
        token_url=f"{google.url}/token",
        authorize_url=f"{google.url}/o/oauth2/v2/auth",
        scopes=("https://www.googleapis.com/auth/calendar.readonly",),
    )
    return RefreshingTokens(
        httpx.AsyncClient(timeout=30),
        client,
        TokenSet(access_token="", refresh_token=refresh_token, expires_at=0.0),
    )


async def test_expired_access_token_is_refreshed_transparently(
    google: RunningSimulator,
) -> None:
    sim = google.sim
    sim.register_client("cid", "secret", ["http://127.0.0.1:9/cb"])
    tokens = refreshing(google, sim.mint_refresh_token(ALICE, "cid"))
    found = GoogleProvider(google.url, tokens)
    try:
        sim.create_event(ALICE, event("one", 1))
        assert len(upserted(await pages(found))) == 1
        assert tokens.refreshes == 1
        sim.expire_access_tokens()  # dies early, as a revoked or skewed token would
        assert len(upserted(await pages(found))) == 1
        assert tokens.refreshes == 2
        assert sim.stats()["statuses"]["401"] == 1
    finally:
        await found.aclose()


async def test_revoked_refresh_token_is_invalid_grant(google: RunningSimulator) -> None:
    sim = google.sim
    sim.register_client("cid", "secret", ["http://127.0.0.1:9/cb"])
    tokens = refreshing(google, sim.mint_refresh_token(ALICE, "cid"))
    found = GoogleProvider(google.url, tokens)
    try:
        await found.list_calendars()
        sim.revoke_refresh_tokens(ALICE)
        with pytest.raises(InvalidGrant):
            await found.list_calendars()
    finally:
        await found.aclose()


async def test_rate_limits_are_retried_after_retry_after(
    google: RunningSimulator, provider: GoogleProvider
) -> None:
    sim = google.sim
    sim.create_event(ALICE, event("one", 1))
    sim.inject_fault(kind="rateLimitExceeded", path="*/events", retry_after=1)
    sim.inject_fault(kind="tooManyRequests", path="*/events", retry_after=1)
    assert len(upserted(await pages(provider))) == 1
    assert provider.api.rate_limited == 2 and provider.api.retries == 2
    stamps = [r["at"] for r in sim.stats()["api_requests"]]
    assert [r["status"] for r in sim.stats()["api_requests"]] == [403, 429, 200]
    # each retry waited at least the Retry-After the answer before it asked for
    assert stamps[1] - stamps[0] >= 1 and stamps[2] - stamps[1] >= 1


async def test_quota_exceeded_is_raised_at_once_for_a_later_retry(
    google: RunningSimulator, provider: GoogleProvider
) -> None:
    google.sim.inject_fault(kind="quotaExceeded")
    with pytest.raises(RateLimited) as caught:
        await pages(provider)
    assert (caught.value.retry_after or 0) >= 600
    assert google.sim.stats()["statuses"] == {"403": 1}


async def test_bad_request_is_not_retried_and_carries_googles_message(
    google: RunningSimulator, provider: GoogleProvider
) -> None:
    google.sim.inject_fault(status=400, reason="badRequest", message="Something is off here")
    with pytest.raises(ProviderError) as caught:
        await pages(provider)
    assert not caught.value.retryable and "Something is off here" in str(caught.value)
    assert google.sim.stats()["statuses"] == {"400": 1}


async def test_backend_errors_are_retried(
    google: RunningSimulator, provider: GoogleProvider
) -> None:
    google.sim.create_event(ALICE, event("one", 1))
    google.sim.inject_fault(kind="backendError", count=2)
    assert len(upserted(await pages(provider))) == 1
    assert provider.api.retries == 2


async def test_every_request_spends_the_budget(google: RunningSimulator) -> None:
    sim = google.sim
    for day in range(1, 21):
        sim.create_event(ALICE, event(f"e{day}", day))
    budget = TokenBucket(3600 * 100)
    found = GoogleProvider(
        google.url, StaticTokens(sim.mint_access_token(ALICE)), budget=budget, max_results=5
    )
    try:
        await found.list_calendars()
        await pages(found)
    finally:
        await found.aclose()
    assert budget.spent == sum(sim.stats()["requests"].values()) == 5


async def test_watch_and_stop_a_channel(google: RunningSimulator, provider: GoogleProvider) -> None:
    sim = google.sim
    channel = await provider.watch(
        ALICE, channel_id="calsync-1", address="http://127.0.0.1:9/hook", token="t", ttl=3600
    )
    assert channel.id == "calsync-1" and channel.resource_id
    assert channel.expiration is not None and abs(channel.expiration - sim.clock() - 3600) < 5
    (opened,) = sim.channels()
    assert (opened["token"], opened["calendarId"]) == ("t", ALICE)
    assert await provider.stop_channel("calsync-1", channel.resource_id) is True
    assert [c["stopped"] for c in sim.channels()] == [True]
    assert await provider.stop_channel("calsync-1", channel.resource_id) is False  # done already
    with pytest.raises(ProviderError, match="not unique"):
        await provider.watch(ALICE, channel_id="calsync-2", address="http://127.0.0.1:9/h")
        await provider.watch(ALICE, channel_id="calsync-2", address="http://127.0.0.1:9/h")
    with pytest.raises(CalendarGone):
        await provider.watch("nobody@example.com", channel_id="x", address="http://127.0.0.1:9/h")
