"""The sync engine on a real store (SQLite and PostgreSQL), driven by a scripted provider.

The scripted provider stands in for a server so that the engine's own guarantees can be
exercised precisely: a failure between two pages, a rejected cursor, a change that moves an
event out of the window, duplicate UIDs, malformed resources. The same guarantees are checked
against a real Radicale server in test_caldav_sync.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from calsync.model import Calendar, ChangePage, Resource, Window
from calsync.providers.base import CursorInvalid, KnownEtags, ProviderError
from calsync.providers.ical import parse_resource
from calsync.store import EventStore
from calsync.sync import engine as engine_module
from calsync.sync.engine import (
    SYNC_GC_THRESHOLD,
    SYNC_SWITCH_INTERVAL,
    SyncEngine,
    select_calendars,
)
from calsync.testing.icalgen import generate_events

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
WINDOW = Window.around(NOW, 365, 730)
CONN = "ns/alice"


def resources(count: int, seed: int = 1) -> dict[str, Resource]:
    out = {}
    for name, text in generate_events(count, seed=seed, start=NOW).items():
        href = f"/alice/work/{name}"
        out[href] = parse_resource(href, f'"{name}-1"', text)
    return out


@dataclass
class ScriptedProvider:
    """A provider whose server state is a dict; cursors are version numbers."""

    items: dict[str, Resource]
    page_size: int = 10
    fail_after_pages: int | None = None  # raise after yielding this many pages
    reject_cursor: bool = False
    version: int = 1
    history: list[tuple[int, str, bool]] = field(default_factory=list)  # (version, id, deleted)
    calls: int = 0

    async def list_calendars(self) -> list[Calendar]:
        return [Calendar(id="/alice/work/", name="Work"), Calendar(id="/alice/home/", name="Home")]

    def change(self, resource: Resource | None, provider_id: str) -> None:
        self.version += 1
        if resource is None:
            self.items.pop(provider_id, None)
        else:
            self.items[provider_id] = resource
        self.history.append((self.version, provider_id, resource is None))

    async def changes(
        self,
        calendar: Calendar,
        cursor: str | None,
        *,
        window: Window,
        known: KnownEtags,
        batch_size: int,
    ) -> AsyncIterator[ChangePage]:
        self.calls += 1
        if calendar.id != "/alice/work/":
            yield ChangePage(cursor=f"v{self.version}", complete=True, full=cursor is None)
            return
        if cursor is not None and self.reject_cursor:
            raise CursorInvalid("token expired")
        if cursor is None:
            ids = sorted(self.items)
            upserts = [self.items[i] for i in ids]
            deletes: list[str] = []
        else:
            since = int(cursor.removeprefix("v"))
            touched = {pid: deleted for v, pid, deleted in self.history if v > since}
            upserts = [self.items[p] for p, gone in sorted(touched.items()) if not gone]
            deletes = [p for p, gone in sorted(touched.items()) if gone]
        chunks = [upserts[i : i + self.page_size] for i in range(0, len(upserts), self.page_size)]
        chunks = chunks or [[]]
        for number, chunk in enumerate(chunks, start=1):
            if self.fail_after_pages is not None and number > self.fail_after_pages:
                raise ProviderError("connection reset between pages")
            last = number == len(chunks)
            yield ChangePage(
                upserts=chunk,
                deletes=deletes if last else [],
                cursor=f"v{self.version}" if last else None,
                complete=last,
                full=cursor is None,
            )

    async def aclose(self) -> None:
        return None


async def stored_uids(store: EventStore) -> list[str]:
    result = await store.query(CONN, calendar_id="/alice/work/", expand=False)
    return sorted(o.uid for o in result.occurrences if o.recurrence_id is None)


async def test_initial_then_incremental(store: EventStore) -> None:
    items = resources(35)
    provider = ScriptedProvider(items)
    engine = SyncEngine(store)
    result = await engine.sync_connection(CONN, provider, window=WINDOW)
    work = next(c for c in result.calendars if c.calendar_id == "/alice/work/")
    assert work.full and work.pages == 4 and work.fetched == 35
    assert await stored_uids(store) == sorted(r.events[0].uid for r in items.values())
    assert await store.get_cursor(CONN, "/alice/work/") == "v1"

    gone = sorted(items)[0]
    provider.change(None, gone)
    result = await engine.sync_connection(CONN, provider, window=WINDOW)
    work = next(c for c in result.calendars if c.calendar_id == "/alice/work/")
    assert not work.full and work.deleted >= 1 and work.fetched == 0
    assert len(await stored_uids(store)) == 34


async def test_failure_between_pages_then_rerun_converges(store: EventStore) -> None:
    items = resources(30)
    provider = ScriptedProvider(items, fail_after_pages=2)
    engine = SyncEngine(store)
    with pytest.raises(ProviderError):
        await engine.sync_connection(CONN, provider, window=WINDOW)
    # Two pages were committed, but no cursor: the run did not reach a resumable point.
    assert await store.get_cursor(CONN, "/alice/work/") is None
    assert len(await stored_uids(store)) == 20

    provider.fail_after_pages = None
    await engine.sync_connection(CONN, provider, window=WINDOW)
    uids = await stored_uids(store)
    assert uids == sorted(r.events[0].uid for r in items.values())
    assert len(uids) == len(set(uids))  # nothing twice
    assert await store.count_events(CONN, "/alice/work/") == sum(
        len(r.events) for r in items.values()
    )


async def test_rejected_cursor_runs_a_full_resync(store: EventStore) -> None:
    items = resources(12)
    provider = ScriptedProvider(items)
    engine = SyncEngine(store)
    await engine.sync_connection(CONN, provider, window=WINDOW)
    # While the token is dead, the server loses an event and gains one silently.
    dropped = sorted(items)[0]
    del provider.items[dropped]
    extra = resources(1, seed=42)
    provider.items.update(extra)
    provider.reject_cursor = True
    result = await engine.sync_connection(CONN, provider, window=WINDOW)
    work = next(c for c in result.calendars if c.calendar_id == "/alice/work/")
    assert work.cursor_reset and work.full
    assert await stored_uids(store) == sorted(r.events[0].uid for r in provider.items.values())


async def test_events_moved_out_of_the_window_are_removed(store: EventStore) -> None:
    items = resources(5)
    provider = ScriptedProvider(items)
    engine = SyncEngine(store)
    narrow = Window.around(NOW, 3650, 3650)
    await engine.sync_connection(CONN, provider, window=narrow)
    target = sorted(items)[0]
    moved = items[target]
    for event in moved.events:
        event.start = NOW + dt.timedelta(days=5000)
        event.end = event.start + dt.timedelta(hours=1)
        event.rrule = None
        event.rdates = []
    provider.change(moved, target)
    result = await engine.sync_connection(CONN, provider, window=narrow)
    work = next(c for c in result.calendars if c.calendar_id == "/alice/work/")
    assert work.dropped == 1
    assert moved.events[0].uid not in await stored_uids(store)


async def test_duplicate_uids_are_reported_not_fatal(store: EventStore) -> None:
    items = resources(3)
    original = sorted(items)[0]
    first = items[original]
    copy = Resource("/alice/work/copy.ics", '"c"', first.raw, first.raw_format, first.events)
    items[copy.provider_id] = copy
    result = await SyncEngine(store).sync_connection(CONN, ScriptedProvider(items), window=WINDOW)
    assert [(uid, sorted(ids)) for _, uid, ids in result.duplicates] == [
        (first.events[0].uid, sorted([copy.provider_id, original]))
    ]
    assert len(await stored_uids(store)) == 4


async def test_calendars_no_longer_listed_are_removed(store: EventStore) -> None:
    provider = ScriptedProvider(resources(3))
    engine = SyncEngine(store)
    await engine.sync_connection(CONN, provider, window=WINDOW)
    assert {c.id for c in await store.calendars(CONN)} == {"/alice/work/", "/alice/home/"}
    result = await engine.sync_connection(CONN, provider, window=WINDOW, exclude=["Work"])
    assert result.removed_calendars == ["/alice/work/"]
    assert await store.count_events(CONN, "/alice/work/") == 0


def test_select_calendars_by_id_or_name() -> None:
    cals = [Calendar(id="/a/", name="Work"), Calendar(id="/b/", name="Home")]
    assert [c.id for c in select_calendars(cals, ["Work"], [])] == ["/a/"]
    assert [c.id for c in select_calendars(cals, [], ["/a/"])] == ["/b/"]
    assert [c.id for c in select_calendars(cals, [], [])] == ["/a/", "/b/"]


async def test_duplicates_are_not_rechecked_when_nothing_changed(store: EventStore) -> None:
    provider = ScriptedProvider(resources(3))
    engine = SyncEngine(store)
    first = await engine.sync_connection(CONN, provider, window=WINDOW)
    assert first.duplicates_checked
    again = await engine.sync_connection(CONN, provider, window=WINDOW)
    assert not again.duplicates_checked and again.upserted == again.deleted == 0


@dataclass
class Renaming(ScriptedProvider):
    work_name: str = "Work"

    async def list_calendars(self) -> list[Calendar]:
        return [Calendar(id="/alice/work/", name=self.work_name, color="#112233")]


async def test_a_no_change_run_writes_no_calendar_row_but_a_rename_is_stored(
    store: EventStore,
) -> None:
    provider = Renaming(resources(3))
    engine = SyncEngine(store)
    first = await engine.sync_connection(CONN, provider, window=WINDOW)
    assert not first.calendars_unchanged  # the calendar was new
    written: list[str] = []
    upsert = store.upsert_calendar

    async def counting(*args: object, **kwargs: object) -> None:
        written.append(str(args[2]))
        await upsert(*args, **kwargs)  # type: ignore[arg-type]

    store.upsert_calendar = counting  # type: ignore[method-assign]
    again = await engine.sync_connection(CONN, provider, window=WINDOW)
    assert again.calendars_unchanged and written == []
    assert [(c.id, c.event_count) for c in again.stored] == [("/alice/work/", 3)]

    provider.work_name = "Work (renamed)"
    renamed = await engine.sync_connection(CONN, provider, window=WINDOW)
    assert written == ["Work (renamed)"] and not renamed.calendars_unchanged
    (row,) = await store.calendars(CONN)
    assert (row.name, row.color, row.cursor) == ("Work (renamed)", "#112233", "v1")


def _series(name: str, rule: str) -> Resource:
    start = (NOW - dt.timedelta(days=30)).strftime("%Y%m%dT%H%M%SZ")
    text = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:t\r\nBEGIN:VEVENT\r\n"
        f"UID:{name}\r\nDTSTART:{start}\r\nDURATION:PT15M\r\nRRULE:{rule}\r\n"
        "SUMMARY:s\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    return parse_resource(f"/alice/work/{name}.ics", f'"{name}"', text)


async def test_series_over_the_expansion_cap_are_reported(store: EventStore) -> None:
    items = {
        r.provider_id: r
        for r in (
            _series("daily", "FREQ=DAILY"),
            _series("minutely", "FREQ=MINUTELY"),
            _series("never", "FREQ=SECONDLY;COUNT=9;BYMONTH=2;BYMONTHDAY=30"),
        )
    }
    engine = SyncEngine(store, series_limit=3000)
    result = await engine.sync_connection(CONN, ScriptedProvider(items), window=WINDOW)
    capped = dict(result.capped)
    assert sorted(capped) == ["/alice/work/minutely.ics", "/alice/work/never.ics"]
    assert "more than 3000 occurrences" in capped["/alice/work/minutely.ics"]
    assert "not expanded" in capped["/alice/work/never.ics"]
    assert len(await stored_uids(store)) == 3  # stored all the same
    # The setting lowered: the daily series is over it too.
    items["/alice/work/daily.ics"] = _series("daily", "FREQ=DAILY;INTERVAL=1")
    lowered = SyncEngine(store, series_limit=10)
    result = await lowered.sync_connection(
        CONN, ScriptedProvider(items), window=WINDOW, mode="full"
    )
    assert "/alice/work/daily.ics" in dict(result.capped)


@dataclass
class Repeating(ScriptedProvider):
    """A full listing that sends one resource again, changed, on a later page."""

    again: Resource | None = None

    async def changes(
        self,
        calendar: Calendar,
        cursor: str | None,
        *,
        window: Window,
        known: KnownEtags,
        batch_size: int,
    ) -> AsyncIterator[ChangePage]:
        if calendar.id != "/alice/work/":
            yield ChangePage(cursor="v1", complete=True, full=True)
            return
        ids = sorted(self.items)
        assert self.again is not None
        yield ChangePage(upserts=[self.items[i] for i in ids[:2]], full=True)
        yield ChangePage(
            upserts=[self.again, self.items[ids[2]]], cursor="v1", complete=True, full=True
        )


async def test_an_initial_listing_that_repeats_a_resource_keeps_its_last_version(
    store: EventStore,
) -> None:
    # On an empty calendar the store skips replacing event rows, except for ids the run has
    # already written: a resource sent again must replace its rows, not collide with them.
    items = resources(3)
    first = sorted(items)[0]
    (other,) = resources(1, seed=9).values()
    again = Resource(first, '"again"', other.raw, other.raw_format, other.events)
    provider = Repeating(items, again=again)
    await SyncEngine(store).sync_connection(CONN, provider, window=WINDOW)
    rows = await store.query(CONN, calendar_id="/alice/work/", expand=False)
    by_resource = {o.provider_id: o.uid for o in rows.occurrences if o.recurrence_id is None}
    assert len(by_resource) == 3
    assert by_resource[first] == other.events[0].uid
    assert (await store.known_etags(CONN, "/alice/work/"))[first] == '"again"'


@dataclass
class ObservingProvider(ScriptedProvider):
    """Records the interpreter's switch interval and frozen-object count while it lists."""

    observed: list[tuple[float, int, int]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def changes(
        self,
        calendar: Calendar,
        cursor: str | None,
        *,
        window: Window,
        known: KnownEtags,
        batch_size: int,
    ) -> AsyncIterator[ChangePage]:
        observed = (sys.getswitchinterval(), gc.get_freeze_count(), gc.get_threshold()[0])
        self.observed.append(observed)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        async for page in super().changes(
            calendar, cursor, window=window, known=known, batch_size=batch_size
        ):
            yield page


async def test_process_settings_hold_while_any_sync_runs_and_are_restored(
    store: EventStore,
) -> None:
    """The shorter switch interval, the collector's higher threshold and the frozen older
    objects (`engine._syncing`) apply while at least one sync runs, and are put back only when
    the last of overlapping syncs ends."""
    before = sys.getswitchinterval()
    threshold = gc.get_threshold()
    assert before > SYNC_SWITCH_INTERVAL
    assert threshold[0] < SYNC_GC_THRESHOLD
    assert gc.get_freeze_count() == 0
    gate = asyncio.Event()
    slow = ObservingProvider(resources(3), gate=gate)
    quick = ObservingProvider(resources(3, seed=2))
    engine = SyncEngine(store)
    first = asyncio.ensure_future(engine.sync_connection(CONN, slow, window=WINDOW))
    await slow.entered.wait()
    await engine.sync_connection("ns/bob", quick, window=WINDOW)
    # The quick sync ended while the slow one still ran: nothing was restored yet.
    assert sys.getswitchinterval() == SYNC_SWITCH_INTERVAL
    assert gc.get_threshold()[0] == SYNC_GC_THRESHOLD
    assert gc.get_freeze_count() > 0
    gate.set()
    await first
    assert sys.getswitchinterval() == before
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == 0
    during = slow.observed + quick.observed
    assert len(during) == 4  # two calendars each
    assert all(interval == SYNC_SWITCH_INTERVAL for interval, _, _ in during)
    assert all(frozen > 0 for _, frozen, _ in during)
    assert all(young == SYNC_GC_THRESHOLD for _, _, young in during)


async def test_a_finishing_sync_runs_a_full_collection_when_one_is_due(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Garbage cycles left by the work around syncs do not wait for the collector's own, rare,
    full collections: a sync that ends `SYNC_COLLECT_EVERY` seconds or more after the last one
    runs one (and one ending sooner does not)."""
    full: list[int] = []

    def observe(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(info["collected"])

    gc.callbacks.append(observe)
    try:
        monkeypatch.setattr(engine_module, "_last_collection", -1e9)
        await SyncEngine(store).sync_connection(CONN, ScriptedProvider(resources(2)), window=WINDOW)
        assert len(full) == 1
        await SyncEngine(store).sync_connection(CONN, ScriptedProvider(resources(2)), window=WINDOW)
        assert len(full) == 1  # the next is not due for SYNC_COLLECT_EVERY seconds
    finally:
        gc.callbacks.remove(observe)
