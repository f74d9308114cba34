"""Microsoft Graph sync end to end without Kubernetes: the simulator, the engine, a real store.

Every test runs on SQLite and on PostgreSQL (`store_url`). After each sync the store must equal
the simulator's calendar view over the connection's window: the same instance ids with the
same etags.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from calsync.model import Window
from calsync.providers.microsoft import MicrosoftProvider
from calsync.providers.oauth import StaticTokens
from calsync.store import EventStore
from calsync.sync.engine import SyncEngine, SyncResult
from calsync.testing.microsoft import GraphSimulator, RunningSimulator, running
from calsync.testing.microsoft.throttle import Fault
from tests.integration.failing_store import FailingStore

pytestmark = pytest.mark.integration

CONN = "team-a/alice-outlook"


@dataclass
class World:
    running: RunningSimulator
    user: str
    token: str
    window: Window

    @property
    def sim(self) -> GraphSimulator:
        return self.running.sim

    @property
    def calendar(self) -> str:
        return self.sim.users[self.user].default_calendar

    def when(self, days: float, hour: int = 9, minutes: int = 60) -> dict[str, Any]:
        day = self.sim.clock.now() + dt.timedelta(days=days)
        start = day.replace(hour=hour, minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(minutes=minutes)
        return {
            "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
        }

    def add(self, subject: str, days: float, **extra: Any) -> str:
        return self.sim.create_event(
            self.user, None, {"subject": subject, **self.when(days), **extra}
        ).id

    def expected(self) -> dict[str, str]:
        view = self.sim.view(self.user, None, self.window.start, self.window.end)
        return {i.id: f'W/"{i.etag}"' for i in view}


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with running() as served:
        sim = served.sim
        alice = sim.add_user("alice@example.com", "Alice")
        sim.identity.add_client("calsync", "s3cret", ["http://127.0.0.1:9/cb"])
        token = sim.identity.issue(alice.id, "calsync", "offline_access Calendars.Read")
        yield World(
            served, alice.id, token["access_token"], Window.around(sim.clock.now(), 365, 730)
        )


async def sync(
    store: EventStore,
    world: World,
    *,
    batch_size: int = 7,
    window: Window | None = None,
    page_size: int | None = None,
) -> SyncResult:
    """One sync; Graph's pages as small as the store's batches unless said otherwise, so a few
    dozen events make several delta pages (the product asks for pages of 1,000)."""
    provider = MicrosoftProvider(
        world.running.url,
        StaticTokens(world.token),
        timeout=10,
        page_size=page_size or batch_size,
    )
    try:
        return await SyncEngine(store, batch_size=batch_size).sync_connection(
            CONN, provider, window=window or world.window
        )
    finally:
        await provider.aclose()


async def assert_store_equals_simulator(store: EventStore, world: World) -> None:
    stored = await store.known_etags(CONN, world.calendar)
    assert stored == world.expected()
    rows = await store.query(CONN, calendar_id=world.calendar, expand=False, include_cancelled=True)
    keys = [(o.provider_id, o.recurrence_id) for o in rows.occurrences]
    assert len(keys) == len(set(keys))


async def test_full_then_incremental_sync(store: EventStore, world: World) -> None:
    ids = [world.add(f"Event {n}", n - 10) for n in range(30)]
    day = (world.sim.clock.now() + dt.timedelta(days=3)).date()
    world.sim.create_event(
        world.user,
        None,
        {
            "subject": "all day",
            "isAllDay": True,
            "start": {"dateTime": f"{day}T00:00:00", "timeZone": "Europe/Berlin"},
            "end": {
                "dateTime": f"{day + dt.timedelta(days=2)}T00:00:00",
                "timeZone": "Europe/Berlin",
            },
        },
    )
    world.sim.generate_events(world.user, None, 40, seed=9, past_days=200, future_days=500)
    first = await sync(store, world)
    work = first.calendars[0]
    assert work.full and work.pages > 5 and not first.skipped
    await assert_store_equals_simulator(store, world)
    assert first.duplicates == []  # series share a UID across instances, not a component
    rows = await store.query(CONN, calendar_id=world.calendar, expand=False)
    (holiday,) = [o for o in rows.occurrences if o.summary == "all day"]
    midnight = dt.datetime.combine(day, dt.time(), dt.UTC)
    assert holiday.all_day and (holiday.start, holiday.end) == (
        midnight,
        midnight + dt.timedelta(days=2),
    )

    world.sim.update_event(world.user, ids[0], {"subject": "Renamed"})
    world.sim.delete_event(world.user, ids[1])
    added = world.add("Added", 40)
    world.sim.update_event(world.user, ids[2], world.when(3000))  # moves out of the window
    second = await sync(store, world)
    work = second.calendars[0]
    assert not work.full
    assert work.fetched == 2 and work.deleted == 2
    await assert_store_equals_simulator(store, world)
    summaries = {
        o.summary for o in await store.query(CONN, calendar_id=world.calendar, expand=False)
    }
    assert "Renamed" in summaries and "Event 1" not in summaries
    assert added in await store.known_etags(CONN, world.calendar)

    quiet = await sync(store, world)
    assert (quiet.fetched, quiet.upserted, quiet.deleted) == (0, 0, 0)


async def test_recurring_series_with_moved_and_cancelled_occurrences(
    store: EventStore, world: World
) -> None:
    sim = world.sim
    start = (sim.clock.now() + dt.timedelta(days=7)).replace(
        hour=8, minute=0, second=0, microsecond=0
    )
    master = sim.create_event(
        world.user,
        None,
        {
            "subject": "Standup",
            "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "Europe/Berlin"},
            "end": {
                "dateTime": (start + dt.timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "Europe/Berlin",
            },
            "recurrence": {
                "pattern": {"type": "daily", "interval": 1},
                "range": {
                    "type": "numbered",
                    "startDate": start.date().isoformat(),
                    "numberOfOccurrences": 6,
                },
            },
        },
    )
    await sync(store, world)
    span = (
        (start - dt.timedelta(days=1)).astimezone(dt.UTC),
        (start + dt.timedelta(days=10)).astimezone(dt.UTC),
    )
    before = await store.query(CONN, start=span[0], end=span[1])
    assert [o.summary for o in before] == ["Standup"] * 6
    assert len({o.uid for o in before}) == 1  # one series
    assert len({o.recurrence_id for o in before}) == 6
    assert all(o.timezone == "Europe/Berlin" for o in before)

    instances = sim.view(world.user, None, span[0], span[1])
    moved, deleted, cancelled = instances[1], instances[2], instances[3]
    new_start = moved.start + dt.timedelta(hours=5)
    sim.update_event(
        world.user,
        moved.id,
        {
            "subject": "Standup (late)",
            "start": {"dateTime": new_start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {
                "dateTime": (new_start + dt.timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "UTC",
            },
        },
    )
    sim.delete_event(world.user, deleted.id)  # the organizer cancels one occurrence
    sim.delete_event(world.user, cancelled.id, mark_cancelled=True)  # an attendee's view of it
    result = await sync(store, world)
    assert result.duplicates == []
    await assert_store_equals_simulator(store, world)
    after = await store.query(CONN, start=span[0], end=span[1])
    assert len(after) == 4
    late = next(o for o in after if o.summary == "Standup (late)")
    assert late.start == new_start and late.recurrence_id == moved.start.isoformat()
    assert deleted.start not in {o.start for o in after}
    assert cancelled.start not in {o.start for o in after}
    with_cancelled = await store.query(CONN, start=span[0], end=span[1], include_cancelled=True)
    assert [o.status for o in with_cancelled if o.start == cancelled.start] == ["cancelled"]
    assert master.id not in await store.known_etags(CONN, world.calendar)


@pytest.mark.parametrize(
    ("status", "code"), [(410, "syncStateNotFound"), (400, "syncStateNotFound")]
)
async def test_invalid_delta_token_resyncs_to_the_simulator(
    store: EventStore, world: World, status: int, code: str
) -> None:
    ids = [world.add(f"E{n}", n) for n in range(12)]
    await sync(store, world)
    world.sim.invalidate_delta_tokens(status=status, code=code)
    world.sim.delete_event(world.user, ids[0])
    world.add("new", 5)
    result = await sync(store, world)
    assert result.calendars[0].cursor_reset
    await assert_store_equals_simulator(store, world)


async def test_replayed_changes_are_harmless(store: EventStore, world: World) -> None:
    ids = [world.add(f"E{n}", n) for n in range(10)]
    await sync(store, world)
    world.sim.update_event(world.user, ids[0], {"subject": "changed"})
    world.sim.delete_event(world.user, ids[1])
    await sync(store, world)
    world.sim.replay_next()
    replayed = await sync(store, world)
    assert replayed.calendars[0].fetched == 1 and not replayed.calendars[0].full
    await assert_store_equals_simulator(store, world)


async def test_window_moving_on_rebaselines(store: EventStore, world: World) -> None:
    early = world.add("soon gone", -360)
    world.add("stays", 10)
    await sync(store, world)
    assert early in await store.known_etags(CONN, world.calendar)
    later = Window(
        world.window.start + dt.timedelta(days=10), world.window.end + dt.timedelta(days=10)
    )
    result = await sync(store, world, window=later)
    assert result.calendars[0].cursor_reset
    world.window = later
    await assert_store_equals_simulator(store, world)
    assert early not in await store.known_etags(CONN, world.calendar)


async def test_rate_limit_storm_converges(store: EventStore, world: World) -> None:
    for n in range(20):
        world.add(f"E{n}", n)
    world.sim.control.faults.append(
        Fault(status=429, path="*/calendarView/delta", count=4, retry_after=0.05)
    )
    await sync(store, world, batch_size=5)
    await assert_store_equals_simulator(store, world)
    assert world.sim.control.faults_served == 4
    assert max(world.sim.control.peak_concurrency.values()) <= 4


async def test_large_graph_pages_are_stored_in_batches(store: EventStore, world: World) -> None:
    for n in range(40):
        world.add(f"E{n}", n % 20, hour=n % 12)
    result = await sync(store, world, batch_size=10, page_size=1000)  # the product's pages
    assert [c.pages for c in result.calendars if c.calendar_id == world.calendar] == [4]
    await assert_store_equals_simulator(store, world)
    world.add("late", 3)
    await sync(store, world, batch_size=10, page_size=1000)
    await assert_store_equals_simulator(store, world)


async def test_failure_between_pages_then_rerun_converges(store_url: str, world: World) -> None:
    for n in range(40):
        world.add(f"E{n}", n % 20, hour=n % 12)
    store = await FailingStore.open(store_url)
    try:
        store.fail_on = 3
        with pytest.raises(ConnectionResetError):
            await sync(store, world, batch_size=10)
        assert await store.get_cursor(CONN, world.calendar) is None
        assert 0 < len(await store.known_etags(CONN, world.calendar)) < 40
        # A provider error mid-round (after two pages) leaves a partial store too.
        world.sim.control.faults.append(Fault(status=400, path="*/calendarView/delta", skip=2))
        with pytest.raises(Exception, match="HTTP 400"):
            await sync(store, world, batch_size=10)
        await sync(store, world, batch_size=10)
        await assert_store_equals_simulator(store, world)
    finally:
        await store.close()
