"""Google sync end to end without Kubernetes: the simulator, the engine, a real store.

Every test runs on SQLite and on PostgreSQL (`store_url`). After each sync the store must equal
the simulator: the same event ids with the same etags, and each stored event the same as the
simulator's (summary, times, status, and for exceptions the instance they replace).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from calsync.model import Window
from calsync.providers.base import InvalidGrant, ProviderError
from calsync.providers.google import GoogleProvider
from calsync.providers.oauth import OAuthClient, RefreshingTokens, StaticTokens, TokenSet
from calsync.store import EventStore
from calsync.sync.budget import TokenBucket
from calsync.sync.engine import SyncEngine, SyncResult
from calsync.testing.google import GoogleSimulator, RunningSimulator, running

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"
BOB = "bob@example.com"
CONN = "team-a/alice"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
WINDOW = Window.around(NOW, 365, 730)
UTC = dt.UTC


@pytest.fixture
async def google() -> AsyncIterator[RunningSimulator]:
    async with running(sim=GoogleSimulator()) as served:
        served.sim.create_user(ALICE, time_zone="Europe/Berlin")
        served.sim.create_user(BOB, time_zone="America/New_York")
        yield served


async def sync(
    store: EventStore, google: RunningSimulator, *, provider: GoogleProvider | None = None
) -> SyncResult:
    own = provider is None
    used = provider or GoogleProvider(
        google.url, StaticTokens(google.sim.mint_access_token(ALICE)), max_results=250
    )
    try:
        return await SyncEngine(store, batch_size=100).sync_connection(CONN, used, window=WINDOW)
    finally:
        if own:
            await used.aclose()


def _instant(value: dict[str, str]) -> dt.datetime:
    if "date" in value:
        day = dt.date.fromisoformat(value["date"])
        return dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
    return dt.datetime.fromisoformat(value["dateTime"]).astimezone(UTC)


async def assert_store_equals_simulator(
    store: EventStore, sim: GoogleSimulator, calendar_id: str = ALICE
) -> None:
    live = sim.live_events(calendar_id)
    stored = await store.known_etags(CONN, calendar_id)
    assert stored == {event_id: resource["etag"] for event_id, resource in live.items()}
    rows = await store.query(
        CONN, calendar_id=calendar_id, expand=False, include_cancelled=True, limit=100_000
    )
    by_id = {o.provider_id: o for o in rows.occurrences}
    assert set(by_id) == set(live)  # one row per resource: no duplicates
    assert len(rows.occurrences) == len(live)
    for event_id, resource in live.items():
        found = by_id[event_id]
        assert found.status == resource["status"]
        assert found.uid == resource["iCalUID"]
        if "recurringEventId" in resource:
            assert found.recurrence_id == _instant(resource["originalStartTime"]).isoformat()
        else:
            assert found.recurrence_id is None
        if resource["status"] != "cancelled":
            assert found.summary == resource.get("summary", "")
            assert found.start == _instant(resource["start"])
            assert found.end == _instant(resource["end"])
            assert found.all_day == ("date" in resource["start"])


def event(summary: str, day: int, hour: int = 9, **extra: Any) -> dict[str, Any]:
    start = (NOW + dt.timedelta(days=day)).strftime("%Y-%m-%d")
    return {
        "summary": summary,
        "start": {"dateTime": f"{start}T{hour:02d}:00:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": f"{start}T{hour:02d}:30:00", "timeZone": "Europe/Berlin"},
        **extra,
    }


async def test_full_then_incremental_sync(store: EventStore, google: RunningSimulator) -> None:
    sim = google.sim
    made = sim.generate_events(ALICE, 600, seed=7, start=NOW)
    assert made["exceptions"] and made["cancelled_instances"] and made["recurring"]
    first = await sync(store, google)
    (work,) = first.calendars
    assert work.full and work.pages == 3 and not first.skipped
    assert first.duplicates == []
    await assert_store_equals_simulator(store, sim)

    live = list(sim.live_events(ALICE).values())
    single = next(e for e in live if "recurrence" not in e and "recurringEventId" not in e)
    series = next(e for e in live if "recurrence" in e)
    sim.update_event(ALICE, single["id"], {"summary": "Changed in the simulator"})
    sim.delete_event(ALICE, series["id"])
    sim.create_event(ALICE, event("Added", 3))
    second = await sync(store, google)
    (work,) = second.calendars
    assert not work.full and work.upserted == 2 and work.deleted >= 1
    await assert_store_equals_simulator(store, sim)

    third = await sync(store, google)
    assert (third.fetched, third.upserted, third.deleted) == (0, 0, 0)


async def test_recurring_series_with_moved_and_cancelled_instances_in_range_queries(
    store: EventStore, google: RunningSimulator
) -> None:
    sim = google.sim
    first_day = (NOW + dt.timedelta(days=7)).date()
    second, third = first_day + dt.timedelta(days=7), first_day + dt.timedelta(days=14)
    master = sim.create_event(
        ALICE,
        {
            "summary": "Weekly",
            "start": {"dateTime": f"{first_day}T09:00:00", "timeZone": BERLIN},
            "end": {"dateTime": f"{first_day}T10:00:00", "timeZone": BERLIN},
            "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=5"],
        },
    )
    sim.create_event(
        ALICE,
        {
            "recurringEventId": master["id"],
            "originalStartTime": {"dateTime": f"{second}T09:00:00", "timeZone": BERLIN},
            "summary": "Weekly (moved)",
            "start": {"dateTime": f"{second}T14:00:00", "timeZone": BERLIN},
            "end": {"dateTime": f"{second}T15:00:00", "timeZone": BERLIN},
        },
    )
    await sync(store, google)
    sim.cancel_instance(ALICE, master["id"], {"dateTime": f"{third}T09:00:00", "timeZone": BERLIN})
    await sync(store, google)  # the cancellation arrives incrementally, the master unchanged
    await assert_store_equals_simulator(store, sim)

    found = await store.query(CONN, calendar_id=ALICE, start=NOW, end=NOW + dt.timedelta(days=60))
    got = [(o.summary, o.start) for o in found.occurrences]
    reference = [(i.get("summary"), _instant(i["start"])) for i in await _single_events(google)]
    assert got == reference  # the store expands the series as Google does
    assert [summary for summary, _ in got] == ["Weekly", "Weekly (moved)", "Weekly", "Weekly"]
    starts = {start for _, start in got}
    assert berlin(second, 14) in starts
    assert berlin(second, 9) not in starts and berlin(third, 9) not in starts


BERLIN = "Europe/Berlin"


def berlin(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=ZoneInfo(BERLIN)).astimezone(UTC)


async def _single_events(google: RunningSimulator) -> list[dict[str, Any]]:
    """Google's own expansion of the calendar (singleEvents), as the reference."""
    token = google.sim.mint_access_token(ALICE)
    async with httpx.AsyncClient(base_url=google.url, timeout=30) as client:
        answer = await client.get(
            f"/calendar/v3/calendars/{ALICE}/events",
            params={
                "singleEvents": "true",
                "orderBy": "startTime",
                "timeMin": NOW.isoformat(),
                "timeMax": (NOW + dt.timedelta(days=60)).isoformat(),
                "maxResults": 2500,
            },
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 200
    return list(answer.json()["items"])


async def test_rejected_token_resyncs_to_the_simulators_state(
    store: EventStore, google: RunningSimulator
) -> None:
    sim = google.sim
    sim.generate_events(ALICE, 80, seed=9, start=NOW)
    await sync(store, google)
    victim = next(iter(sim.live_events(ALICE)))
    sim.delete_event(ALICE, victim)
    sim.create_event(ALICE, event("after the reset", 2))
    sim.invalidate_sync_tokens(ALICE)
    result = await sync(store, google)
    assert result.calendars[0].cursor_reset
    await assert_store_equals_simulator(store, sim)
    assert victim not in await store.known_etags(CONN, ALICE)


async def test_access_token_expiry_is_refreshed_during_a_sync(
    store: EventStore, google: RunningSimulator
) -> None:
    sim = google.sim
    sim.register_client("cid", "secret", ["http://127.0.0.1:9/cb"])
    client = OAuthClient(
        "cid", "secret", f"{google.url}/token", f"{google.url}/o/oauth2/v2/auth", ("openid",)
    )
    async with httpx.AsyncClient(timeout=30) as http:
        tokens = RefreshingTokens(
            http, client, TokenSet("", sim.mint_refresh_token(ALICE, "cid"), 0.0)
        )
        provider = GoogleProvider(google.url, tokens, max_results=50)
        try:
            sim.generate_events(ALICE, 200, seed=1, start=NOW)
            sim.inject_fault(
                status=401, reason="authError", message="Invalid Credentials", query="*pageToken=*"
            )
            await sync(store, google, provider=provider)
            sim.expire_access_tokens()
            sim.create_event(ALICE, event("later", 1))
            await sync(store, google, provider=provider)
        finally:
            await provider.aclose()
    assert tokens.refreshes == 3  # the first token, the mid-listing 401, the expired one
    await assert_store_equals_simulator(store, sim)


async def test_invalid_grant_is_raised(store: EventStore, google: RunningSimulator) -> None:
    sim = google.sim
    sim.register_client("cid", "secret", ["http://127.0.0.1:9/cb"])
    client = OAuthClient("cid", "secret", f"{google.url}/token", f"{google.url}/auth", ())
    refresh = sim.mint_refresh_token(ALICE, "cid")
    sim.revoke_refresh_tokens(ALICE)
    async with httpx.AsyncClient(timeout=30) as http:
        provider = GoogleProvider(
            google.url, RefreshingTokens(http, client, TokenSet("", refresh, 0.0))
        )
        try:
            with pytest.raises(InvalidGrant):
                await sync(store, google, provider=provider)
        finally:
            await provider.aclose()
    assert await store.calendars(CONN) == []


async def test_rate_limit_storm_converges(store: EventStore, google: RunningSimulator) -> None:
    sim = google.sim
    sim.generate_events(ALICE, 300, seed=5, start=NOW)
    sim.inject_fault(kind="tooManyRequests", path="*/events", count=2, retry_after=0)
    sim.inject_fault(kind="rateLimitExceeded", path="*/events", count=2, retry_after=0)
    provider = GoogleProvider(
        google.url, StaticTokens(sim.mint_access_token(ALICE)), max_results=100
    )
    try:
        await sync(store, google, provider=provider)
    finally:
        await provider.aclose()
    assert provider.api.rate_limited == 4
    await assert_store_equals_simulator(store, sim)


def _most_in_a_second(stamps: list[float]) -> int:
    stamps = sorted(stamps)
    return max(
        (sum(1 for t in stamps[i:] if t < start + 1.0) for i, start in enumerate(stamps)), default=0
    )


async def test_budget_below_the_servers_limit_is_never_refused(
    store: EventStore, google: RunningSimulator
) -> None:
    sim = google.sim
    sim.generate_events(ALICE, 250, seed=6, start=NOW)
    sim.set_rate_limit(5)  # per user and second, as Google's per-user quota
    budget = TokenBucket(4 * 3600, burst=1, max_wait=30)
    provider = GoogleProvider(
        google.url, StaticTokens(sim.mint_access_token(ALICE)), budget=budget, max_results=25
    )
    try:
        await sync(store, google, provider=provider)
    finally:
        await provider.aclose()
    stats = sim.stats()
    assert stats["rate_limited"] == 0
    served = [r["at"] for r in stats["api_requests"] if r["status"] == 200]
    assert len(served) >= 12 and _most_in_a_second(served) <= 5
    await assert_store_equals_simulator(store, sim)


async def test_failure_between_pages_then_rerun_converges(
    store: EventStore, google: RunningSimulator
) -> None:
    sim = google.sim
    sim.generate_events(ALICE, 400, seed=8, start=NOW)
    # Every retry of the second page fails: the run dies after committing the first page.
    sim.inject_fault(kind="backendError", query="*pageToken=*", count=5)
    provider = GoogleProvider(
        google.url, StaticTokens(sim.mint_access_token(ALICE)), max_results=100
    )
    try:
        with pytest.raises(ProviderError):
            await SyncEngine(store, batch_size=100).sync_connection(CONN, provider, window=WINDOW)
        assert await store.get_cursor(CONN, ALICE) is None
        partial = await store.known_etags(CONN, ALICE)
        assert 0 < len(partial) < len(sim.live_events(ALICE))
        sim.update_event(ALICE, next(iter(partial)), {"summary": "changed between the runs"})
        result = await SyncEngine(store, batch_size=100).sync_connection(
            CONN, provider, window=WINDOW
        )
    finally:
        await provider.aclose()
    assert result.calendars[0].full
    await assert_store_equals_simulator(store, sim)
    rows = await store.query(
        CONN, calendar_id=ALICE, expand=False, include_cancelled=True, limit=100_000
    )
    keys = [(o.provider_id, o.recurrence_id) for o in rows.occurrences]
    assert len(keys) == len(set(keys))


async def test_shared_calendar_appears_and_unshared_one_goes(
    store: EventStore, google: RunningSimulator
) -> None:
    sim = google.sim
    bobs = sim.create_calendar(BOB, summary="Bob's team")
    sim.create_event(bobs["id"], event("Bob's event", 2))
    await sync(store, google)
    assert [c.id for c in await store.calendars(CONN)] == [ALICE]
    sim.share_calendar(bobs["id"], ALICE, "reader")
    await sync(store, google)
    assert {c.id for c in await store.calendars(CONN)} == {ALICE, bobs["id"]}
    await assert_store_equals_simulator(store, sim, bobs["id"])
    sim.unshare_calendar(bobs["id"], ALICE)
    result = await sync(store, google)
    assert result.removed_calendars == [bobs["id"]]
    assert [c.id for c in await store.calendars(CONN)] == [ALICE]


async def test_all_day_and_time_zones_round_trip(
    store: EventStore, google: RunningSimulator
) -> None:
    sim = google.sim
    day = (NOW + dt.timedelta(days=10)).date()
    sim.create_event(
        ALICE,
        {
            "summary": "Holiday",
            "start": {"date": str(day)},
            "end": {"date": str(day + dt.timedelta(days=2))},
        },
    )
    for zone, hour in zip(
        ("Asia/Tokyo", "America/New_York", "UTC"), itertools.count(8), strict=False
    ):
        sim.create_event(
            ALICE,
            {
                "summary": zone,
                "start": {"dateTime": f"{day}T{hour:02d}:00:00", "timeZone": zone},
                "end": {"dateTime": f"{day}T{hour:02d}:30:00", "timeZone": zone},
            },
        )
    await sync(store, google)
    await assert_store_equals_simulator(store, sim)
    rows = (await store.query(CONN, calendar_id=ALICE, expand=False)).occurrences
    holiday = next(o for o in rows if o.summary == "Holiday")
    assert holiday.all_day and holiday.end - holiday.start == dt.timedelta(days=2)
    assert {o.timezone for o in rows if not o.all_day} == {"Asia/Tokyo", "America/New_York", "UTC"}
