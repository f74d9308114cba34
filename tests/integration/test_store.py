"""The event store against real databases: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any

import icalendar
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from calsync.model import ChangePage, Event, Resource
from calsync.store import EventStore, Occurrence, SchemaTooNew
from calsync.store import schema as store_schema
from calsync.store.migrations import MIGRATIONS
from tests.integration.ical_helpers import (
    BERLIN_TZ,
    resource,
    single,
    vcalendar,
    vevent,
)

pytestmark = pytest.mark.integration

UTC = dt.UTC
CONN = "team-a/alice"
CAL = "/dav/alice/work/"


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def starts(found: Any) -> list[dt.datetime | None]:
    return [o.start for o in found]


WEEKLY = vcalendar(
    BERLIN_TZ,
    vevent(
        "weekly@example.com",
        "DTSTART;TZID=Europe/Berlin:20240108T100000",
        "DTEND;TZID=Europe/Berlin:20240108T110000",
        "RRULE:FREQ=WEEKLY;COUNT=14",
        "EXDATE;TZID=Europe/Berlin:20240115T100000",
        "SUMMARY:Weekly",
        "ORGANIZER;CN=Alice:mailto:alice@example.com",
        "ATTENDEE;CN=Bob:mailto:bob@example.com",
    ),
    vevent(
        "weekly@example.com",
        "RECURRENCE-ID;TZID=Europe/Berlin:20240122T100000",
        "DTSTART;TZID=Europe/Berlin:20240123T140000",
        "DTEND;TZID=Europe/Berlin:20240123T150000",
        "SUMMARY:Moved",
    ),
    vevent(
        "weekly@example.com",
        "RECURRENCE-ID;TZID=Europe/Berlin:20240129T100000",
        "DTSTART;TZID=Europe/Berlin:20240129T100000",
        "DTEND;TZID=Europe/Berlin:20240129T110000",
        "STATUS:CANCELLED",
        "SUMMARY:Weekly",
    ),
)


def page(*upserts: Resource, **kwargs: Any) -> ChangePage:
    return ChangePage(upserts=list(upserts), **kwargs)


# -- writing ----------------------------------------------------------------------------------


async def test_replaying_a_page_changes_nothing(store: EventStore) -> None:
    first = page(
        resource("weekly.ics", WEEKLY),
        single("a.ics", "a", at(2024, 1, 2, 9), at(2024, 1, 2, 10)),
        single("b.ics", "b", at(2024, 1, 3, 9), at(2024, 1, 3, 10)),
        cursor="token-1",
        complete=True,
    )
    for _ in range(2):
        applied = await store.apply_page(CONN, CAL, first)
        assert (applied.upserted, applied.deleted) == (3, 0)
        assert await store.count_events(CONN, CAL) == 5  # master + 2 overrides + 2 singles
        assert await store.get_cursor(CONN, CAL) == "token-1"
    assert await store.known_etags(CONN, CAL) == {
        "weekly.ics": "etag-1",
        "a.ics": "etag-1",
        "b.ics": "etag-1",
    }


async def test_an_upsert_replaces_the_whole_resource(store: EventStore) -> None:
    await store.apply_page(CONN, CAL, page(resource("weekly.ics", WEEKLY)))
    without_overrides = vcalendar(
        BERLIN_TZ,
        vevent(
            "weekly@example.com",
            "DTSTART;TZID=Europe/Berlin:20240108T100000",
            "DTEND;TZID=Europe/Berlin:20240108T110000",
            "RRULE:FREQ=WEEKLY;COUNT=2",
            "SUMMARY:Weekly, shorter",
        ),
    )
    await store.apply_page(
        CONN, CAL, page(resource("weekly.ics", without_overrides, "etag-2"), complete=True)
    )
    assert await store.count_events(CONN, CAL) == 1
    assert await store.known_etags(CONN, CAL) == {"weekly.ics": "etag-2"}
    found = await store.query(CONN, start=at(2024, 1, 1), end=at(2024, 3, 1))
    assert [o.summary for o in found] == ["Weekly, shorter"] * 2


async def test_a_page_repeating_a_resource_keeps_the_last(store: EventStore) -> None:
    old = single("a.ics", "a", at(2024, 1, 2, 9), at(2024, 1, 2, 10), "old", etag="1")
    new = single("a.ics", "a", at(2024, 1, 5, 9), at(2024, 1, 5, 10), "new", etag="2")
    applied = await store.apply_page(CONN, CAL, page(old, new))
    assert applied.upserted == 1
    assert await store.known_etags(CONN, CAL) == {"a.ics": "2"}
    assert [o.summary for o in await store.query(CONN)] == ["new"]


async def test_a_page_larger_than_one_bulk_statement_is_stored_whole(
    store: EventStore,
) -> None:
    # SQLite writes a page's rows in multi-row statements of 500: 1,203 resources, every
    # seventh with an override besides its master, cross several of them.
    def one(n: int, summary: str) -> Resource:
        start = at(2024, 1, 1) + dt.timedelta(hours=n)
        events = [
            Event(
                uid=f"u{n}",
                start=start,
                end=start + dt.timedelta(minutes=30),
                timezone="UTC",
                summary=f"{summary} {n}",
                attendees=[f"p{n}@example.com"],
                sequence=n,
            )
        ]
        if n % 7 == 0:
            events.append(
                Event(uid=f"u{n}", recurrence_id=start.isoformat(), start=start, end=start)
            )
        raw = f'{{"id":"e{n}","summary":"{summary} {n}"}}'
        return Resource(f"e{n}", f"etag-{summary}-{n}", raw, "json", events)

    count = 1203
    overrides = len(range(0, count, 7))
    first = page(*(one(n, "first") for n in range(count)), cursor="c1")
    for _ in range(2):  # a replay changes nothing
        applied = await store.apply_page(CONN, CAL, first)
        assert applied.upserted == count
        assert await store.count_events(CONN, CAL) == count + overrides
    etags = await store.known_etags(CONN, CAL)
    assert len(etags) == count
    assert etags["e1202"] == "etag-first-1202"
    rows = await store.query(CONN, expand=False, limit=5000)
    masters = [o for o in rows.occurrences if o.recurrence_id is None]
    assert [o.summary for o in masters] == [f"first {n}" for n in range(count)]
    assert masters[1100].attendees == ("p1100@example.com",)
    second = page(*(one(n, "second") for n in range(0, count, 2)), cursor="c2")
    await store.apply_page(CONN, CAL, second)
    assert await store.count_events(CONN, CAL) == count + overrides
    summaries = {o.summary for o in (await store.query(CONN, expand=False, limit=5000))}
    assert {"second 1200", "first 1201", "second 0", "first 1"} <= summaries
    async with store.engine.connect() as conn:
        raw = await conn.scalar(
            sa.select(store_schema.resources.c.raw).where(
                store_schema.resources.c.provider_id == "e1200"
            )
        )
    assert raw == '{"id":"e1200","summary":"second 1200"}'


async def test_deletes_remove_resources_and_their_events(store: EventStore) -> None:
    await store.apply_page(
        CONN,
        CAL,
        page(
            resource("weekly.ics", WEEKLY),
            single("a.ics", "a", at(2024, 1, 2, 9), at(2024, 1, 2, 10)),
        ),
    )
    applied = await store.apply_page(
        CONN, CAL, ChangePage(deletes=["weekly.ics", "never-stored.ics"], cursor="token-2")
    )
    assert (applied.upserted, applied.deleted) == (0, 1)
    assert await store.known_etags(CONN, CAL) == {"a.ics": "etag-1"}
    assert await store.count_events(CONN, CAL) == 1
    assert await store.get_cursor(CONN, CAL) == "token-2"


async def test_a_failing_page_changes_neither_events_nor_cursor(store: EventStore) -> None:
    await store.apply_page(
        CONN,
        CAL,
        page(single("a.ics", "a", at(2024, 1, 2, 9), at(2024, 1, 2, 10)), cursor="token-1"),
    )
    bad = Resource(
        "bad.ics",
        "etag-bad",
        "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
        "ical",
        [Event("bad", status="postponed", start=at(2024, 1, 4, 9))],  # type: ignore[arg-type]
    )
    failing = ChangePage(
        upserts=[single("c.ics", "c", at(2024, 1, 3, 9), at(2024, 1, 3, 10)), bad],
        deletes=["a.ics"],
        cursor="token-2",
        complete=True,
    )
    with pytest.raises(IntegrityError):
        await store.apply_page(CONN, CAL, failing)
    assert await store.get_cursor(CONN, CAL) == "token-1"
    assert await store.known_etags(CONN, CAL) == {"a.ics": "etag-1"}
    assert await store.count_events(CONN, CAL) == 1


@pytest.mark.parametrize("where", ["start", "last_modified", "series_end"])
async def test_a_naive_time_is_refused_and_nothing_of_its_page_is_written(
    store: EventStore, where: str
) -> None:
    await store.apply_page(
        CONN,
        CAL,
        page(single("a.ics", "a", at(2024, 1, 2, 9), at(2024, 1, 2, 10)), cursor="token-1"),
    )
    naive = single("b.ics", "b", at(2024, 1, 3, 9), at(2024, 1, 3, 10))
    setattr(naive.events[0], where, dt.datetime(2024, 1, 3, 9))  # no zone: meaningless
    if where == "series_end":
        naive.events[0].rrule = "FREQ=DAILY;COUNT=2"
    with pytest.raises(ValueError, match="naive"):
        await store.apply_page(
            CONN,
            CAL,
            page(single("c.ics", "c", at(2024, 1, 4, 9), at(2024, 1, 4, 10)), naive, cursor="t2"),
        )
    assert await store.known_etags(CONN, CAL) == {"a.ics": "etag-1"}
    assert await store.count_events(CONN, CAL) == 1
    assert await store.get_cursor(CONN, CAL) == "token-1"


async def test_a_failure_after_the_cursor_is_written_rolls_it_back(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.apply_page(
        CONN,
        CAL,
        page(single("a.ics", "a", at(2024, 1, 2, 9), at(2024, 1, 2, 10)), cursor="token-1"),
    )
    finish = EventStore._finish_page

    def finish_then_fail(self: EventStore, *args: Any) -> None:
        finish(self, *args)
        raise RuntimeError("injected after the cursor was written")

    monkeypatch.setattr(EventStore, "_finish_page", finish_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        await store.apply_page(
            CONN,
            CAL,
            ChangePage(
                upserts=[single("b.ics", "b", at(2024, 1, 3, 9), at(2024, 1, 3, 10))],
                deletes=["a.ics"],
                cursor="token-2",
                complete=True,
            ),
        )
    monkeypatch.undo()
    assert await store.get_cursor(CONN, CAL) == "token-1"
    assert await store.known_etags(CONN, CAL) == {"a.ics": "etag-1"}
    [calendar] = await store.calendars(CONN)
    assert calendar.cursor == "token-1"
    assert calendar.last_sync_at is None


async def test_a_full_run_deletes_what_it_did_not_see(store: EventStore) -> None:
    for pid in ("a.ics", "b.ics", "c.ics"):
        await store.apply_page(
            CONN, CAL, page(single(pid, pid, at(2024, 1, 2, 9), at(2024, 1, 2, 10)))
        )
    seen: set[str] = set()
    first = page(
        single("a.ics", "a.ics", at(2024, 1, 2, 9), at(2024, 1, 2, 10), etag="2"), full=True
    )
    seen.add("a.ics")
    applied = await store.apply_page(CONN, CAL, first, run_seen=seen)
    assert applied.deleted == 0
    assert set(await store.known_etags(CONN, CAL)) == {"a.ics", "b.ics", "c.ics"}

    last = page(
        single("b.ics", "b.ics", at(2024, 1, 2, 9), at(2024, 1, 2, 10), etag="2"),
        full=True,
        complete=True,
        cursor="token-full",
    )
    seen.add("b.ics")
    applied = await store.apply_page(CONN, CAL, last, run_seen=seen)
    assert (applied.upserted, applied.deleted) == (1, 1)
    assert await store.known_etags(CONN, CAL) == {"a.ics": "2", "b.ics": "2"}
    assert await store.count_events(CONN, CAL) == 2
    assert await store.get_cursor(CONN, CAL) == "token-full"


async def test_an_empty_full_listing_empties_the_calendar(store: EventStore) -> None:
    await store.apply_page(
        CONN, CAL, page(single("a.ics", "a", at(2024, 1, 2, 9), at(2024, 1, 2, 10)))
    )
    applied = await store.apply_page(
        CONN, CAL, ChangePage(full=True, complete=True, cursor="t"), run_seen=set()
    )
    assert applied.deleted == 1
    assert await store.count_events(CONN, CAL) == 0
    [calendar] = await store.calendars(CONN)
    assert calendar.event_count == 0


async def test_calendars_cursors_and_counts(store: EventStore) -> None:
    await store.upsert_calendar(CONN, CAL, "Work", "#ff0000")
    await store.upsert_calendar(CONN, "/dav/alice/home/", "Home", None)
    await store.apply_page(
        CONN,
        CAL,
        page(resource("weekly.ics", WEEKLY), cursor="token-1"),
    )
    [home, work] = await store.calendars(CONN)
    assert (work.id, work.name, work.color, work.cursor) == (CAL, "Work", "#ff0000", "token-1")
    assert (work.event_count, work.last_sync_at) == (0, None)  # counted on the complete page

    before = dt.datetime.now(UTC)
    await store.apply_page(CONN, CAL, ChangePage(complete=True))
    [home, work] = await store.calendars(CONN)
    assert work.event_count == 3
    assert work.last_sync_at is not None and work.last_sync_at >= before
    assert work.cursor == "token-1"  # a page without a cursor keeps the stored one
    assert (home.name, home.event_count, home.cursor) == ("Home", 0, None)

    await store.upsert_calendar(CONN, CAL, "Work (renamed)", "#00ff00")
    await store.apply_page(
        CONN,
        "/dav/alice/home/",
        page(single("h.ics", "h", at(2024, 1, 2, 9), at(2024, 1, 2, 10))),
    )
    assert await store.count_events(CONN) == 4
    assert await store.count_events(CONN, CAL) == 3
    [_, work] = await store.calendars(CONN)
    assert (work.name, work.color, work.cursor) == ("Work (renamed)", "#00ff00", "token-1")

    await store.reset_calendar(CONN, CAL)
    assert await store.get_cursor(CONN, CAL) is None
    assert await store.count_events(CONN, CAL) == 3
    await store.set_cursor(CONN, CAL, "token-9")
    assert await store.get_cursor(CONN, CAL) == "token-9"

    assert await store.remove_calendar(CONN, CAL) == 3
    assert [c.id for c in await store.calendars(CONN)] == ["/dav/alice/home/"]
    assert await store.count_events(CONN) == 1
    assert await store.get_cursor(CONN, CAL) is None


async def test_purge_removes_one_connection_only(store: EventStore) -> None:
    other = "team-b/bob"
    for connection in (CONN, other):
        await store.upsert_calendar(connection, CAL, "Work")
        await store.apply_page(
            connection,
            CAL,
            page(
                resource("weekly.ics", WEEKLY),
                single("a.ics", "a", at(2024, 1, 2, 9), at(2024, 1, 2, 10)),
                cursor="t",
                complete=True,
            ),
        )
    assert await store.purge_connection(CONN) == 4
    assert await store.calendars(CONN) == []
    assert await store.count_events(CONN) == 0
    assert await store.known_etags(CONN, CAL) == {}
    assert await store.count_events(other) == 4
    assert await store.get_cursor(other, CAL) == "t"
    assert await store.purge_connection(CONN) == 0


async def test_duplicate_uids_are_reported(store: EventStore) -> None:
    await store.apply_page(
        CONN,
        CAL,
        page(
            single("one.ics", "shared-uid", at(2024, 1, 2, 9), at(2024, 1, 2, 10)),
            single("two.ics", "shared-uid", at(2024, 1, 3, 9), at(2024, 1, 3, 10)),
            single("three.ics", "own-uid", at(2024, 1, 4, 9), at(2024, 1, 4, 10)),
            resource("weekly.ics", WEEKLY),  # one UID in three components: not a duplicate
        ),
    )
    await store.apply_page(
        CONN,
        "/other/",
        page(single("x.ics", "shared-uid", at(2024, 1, 2, 9), at(2024, 1, 2, 10))),
    )
    assert await store.duplicate_uids(CONN, CAL) == [("shared-uid", ["one.ics", "two.ics"])]
    assert await store.duplicate_uids(CONN, "/other/") == []


async def test_timestamps_round_trip_exactly(store: EventStore) -> None:
    times = [
        (at(1905, 3, 1, 12, 0, 0), at(1905, 3, 1, 13, 0, 0)),
        (dt.datetime(2024, 1, 2, 9, 30, 15, 123456, tzinfo=UTC), at(2024, 1, 2, 10)),
        (at(2300, 12, 31, 23, 59, 59), at(2301, 1, 1, 0, 30)),
    ]
    for i, (start, end) in enumerate(times):
        await store.apply_page(CONN, CAL, page(single(f"{i}.ics", f"u{i}", start, end)))
    found = await store.query(CONN)
    stored = [(o.start, o.end) for o in found]
    expected = [(s.replace(microsecond=0), e) for s, e in times]  # iCalendar has no fractions
    assert stored == expected
    assert all(o.start is not None and o.start.tzinfo is not None for o in found)
    berlin = dt.timezone(dt.timedelta(hours=1))
    in_berlin = await store.query(
        CONN, start=dt.datetime(2024, 1, 2, 10, 30, tzinfo=berlin), end=at(2024, 1, 3)
    )
    assert len(in_berlin) == 1  # 10:30+01:00 is 09:30Z, inside the event


# -- reading ----------------------------------------------------------------------------------


async def test_weekly_series_with_exdate_moved_and_cancelled_instances(store: EventStore) -> None:
    await store.apply_page(CONN, CAL, page(resource("weekly.ics", WEEKLY)))
    found = await store.query(CONN, calendar_id=CAL, start=at(2024, 1, 1), end=at(2024, 5, 1))
    assert not found.truncated
    assert starts(found) == [
        at(2024, 1, 8, 9),  # CET is UTC+1
        # 15 Jan: EXDATE; 22 Jan moved to the 23rd 14:00; 29 Jan cancelled
        at(2024, 1, 23, 13),
        at(2024, 2, 5, 9),
        at(2024, 2, 12, 9),
        at(2024, 2, 19, 9),
        at(2024, 2, 26, 9),
        at(2024, 3, 4, 9),
        at(2024, 3, 11, 9),
        at(2024, 3, 18, 9),
        at(2024, 3, 25, 9),
        at(2024, 4, 1, 8),  # CEST from 31 March: still 10:00 in Berlin
        at(2024, 4, 8, 8),
    ]
    first, moved = found.occurrences[0], found.occurrences[1]
    assert first == Occurrence(
        uid="weekly@example.com",
        recurrence_id="2024-01-08T09:00:00+00:00",
        calendar_id=CAL,
        provider_id="weekly.ics",
        start=at(2024, 1, 8, 9),
        end=at(2024, 1, 8, 10),
        all_day=False,
        timezone="Europe/Berlin",
        summary="Weekly",
        location="",
        status="confirmed",
        transparency="opaque",
        organizer="alice@example.com",
        attendees=("bob@example.com",),
    )
    assert (moved.summary, moved.recurrence_id) == ("Moved", "2024-01-22T09:00:00+00:00")
    assert (moved.start, moved.end) == (at(2024, 1, 23, 13), at(2024, 1, 23, 14))

    slot = await store.query(CONN, start=at(2024, 1, 22), end=at(2024, 1, 23))
    assert len(slot) == 0  # the moved instance left its original day

    with_cancelled = await store.query(
        CONN, start=at(2024, 1, 29), end=at(2024, 1, 30), include_cancelled=True
    )
    assert [(o.start, o.status) for o in with_cancelled] == [(at(2024, 1, 29, 9), "cancelled")]
    assert len(await store.query(CONN, start=at(2024, 1, 29), end=at(2024, 1, 30))) == 0
    assert len(await store.query(CONN, start=at(2024, 4, 9), end=at(2025, 1, 1))) == 0

    stored = await store.query(CONN, start=at(2024, 1, 1), end=at(2024, 5, 1), expand=False)
    assert [(o.recurrence_id, o.start, o.status) for o in stored] == [
        (None, at(2024, 1, 8, 9), "confirmed"),
        ("2024-01-22T09:00:00+00:00", at(2024, 1, 23, 13), "confirmed"),
        ("2024-01-29T09:00:00+00:00", at(2024, 1, 29, 9), "cancelled"),
    ]
    stored = await store.query(
        CONN, start=at(2024, 1, 1), end=at(2024, 5, 1), expand=False, include_cancelled=False
    )
    assert len(stored) == 2


async def test_ranges_are_half_open(store: EventStore) -> None:
    await store.apply_page(
        CONN,
        CAL,
        page(
            single("a.ics", "a", at(2024, 1, 2, 9), at(2024, 1, 2, 10)),
            resource(
                "instant.ics",
                vcalendar(vevent("instant", "DTSTART:20240102T120000Z", "SUMMARY:Instant")),
            ),
        ),
    )
    assert len(await store.query(CONN, start=at(2024, 1, 2, 10), end=at(2024, 1, 3))) == 1
    assert len(await store.query(CONN, start=at(2024, 1, 2), end=at(2024, 1, 2, 9))) == 0
    assert len(await store.query(CONN, start=at(2024, 1, 2, 9, 59), end=at(2024, 1, 2, 11))) == 1
    instant = await store.query(CONN, start=at(2024, 1, 2, 12), end=at(2024, 1, 2, 13))
    assert [(o.uid, o.start, o.end) for o in instant] == [
        ("instant", at(2024, 1, 2, 12), at(2024, 1, 2, 12))
    ]
    assert len(await store.query(CONN, start=at(2024, 1, 2, 11), end=at(2024, 1, 2, 12))) == 0


async def test_all_day_events(store: EventStore) -> None:
    await store.apply_page(
        CONN,
        CAL,
        page(
            resource(
                "day.ics",
                vcalendar(
                    vevent(
                        "day",
                        "DTSTART;VALUE=DATE:20240310",
                        "DTEND;VALUE=DATE:20240311",
                        "SUMMARY:Day",
                    )
                ),
            ),
            resource(
                "trip.ics",
                vcalendar(
                    vevent(
                        "trip",
                        "DTSTART;VALUE=DATE:20240312",
                        "DTEND;VALUE=DATE:20240315",
                        "SUMMARY:Trip",
                        "TRANSP:TRANSPARENT",
                    )
                ),
            ),
            resource(
                "birthday.ics",
                vcalendar(
                    vevent(
                        "birthday",
                        "DTSTART;VALUE=DATE:20000704",
                        "DTEND;VALUE=DATE:20000705",
                        "RRULE:FREQ=YEARLY",
                        "SUMMARY:Birthday",
                    )
                ),
            ),
        ),
    )
    found = await store.query(CONN, start=at(2024, 1, 1), end=at(2026, 1, 1))
    assert [(o.summary, o.start, o.end, o.all_day) for o in found] == [
        ("Day", at(2024, 3, 10), at(2024, 3, 11), True),
        ("Trip", at(2024, 3, 12), at(2024, 3, 15), True),
        ("Birthday", at(2024, 7, 4), at(2024, 7, 5), True),
        ("Birthday", at(2025, 7, 4), at(2025, 7, 5), True),
    ]
    assert found.occurrences[1].transparency == "transparent"
    midday = await store.query(CONN, start=at(2024, 3, 13, 12), end=at(2024, 3, 13, 13))
    assert [o.summary for o in midday] == ["Trip"]
    assert len(await store.query(CONN, start=at(2024, 3, 11), end=at(2024, 3, 12))) == 0


async def test_new_york_evening_crosses_midnight_utc(store: EventStore) -> None:
    await store.apply_page(
        CONN,
        CAL,
        page(
            resource(
                "evening.ics",
                vcalendar(
                    vevent(
                        "evening",
                        "DTSTART;TZID=America/New_York:20240115T183000",
                        "DTEND;TZID=America/New_York:20240115T203000",
                        "SUMMARY:Dinner",
                    )
                ),
            ),
            resource(
                "standup.ics",
                vcalendar(
                    vevent(
                        "standup",
                        "DTSTART;TZID=America/New_York:20240308T193000",
                        "DTEND;TZID=America/New_York:20240308T200000",
                        "RRULE:FREQ=DAILY;COUNT=4",
                        "SUMMARY:Standup",
                    )
                ),
            ),
        ),
    )
    [dinner] = await store.query(CONN, start=at(2024, 1, 16), end=at(2024, 1, 16, 1))
    assert (dinner.start, dinner.end, dinner.timezone) == (
        at(2024, 1, 15, 23, 30),
        at(2024, 1, 16, 1, 30),
        "America/New_York",
    )
    assert len(await store.query(CONN, start=at(2024, 1, 15), end=at(2024, 1, 15, 23, 31))) == 1
    assert len(await store.query(CONN, start=at(2024, 1, 15), end=at(2024, 1, 15, 23, 30))) == 0
    assert len(await store.query(CONN, start=at(2024, 1, 16, 1, 30), end=at(2024, 1, 17))) == 0
    assert len(await store.query(CONN, start=at(2024, 1, 15), end=at(2024, 1, 15, 23))) == 0
    standups = await store.query(CONN, start=at(2024, 3, 1), end=at(2024, 4, 1))
    assert starts(standups) == [
        at(2024, 3, 9, 0, 30),  # EST, UTC-5: the next day in UTC
        at(2024, 3, 10, 0, 30),
        at(2024, 3, 10, 23, 30),  # EDT from 10 March, UTC-4
        at(2024, 3, 11, 23, 30),
    ]


async def test_caps_truncate_and_say_so(store: EventStore) -> None:
    daily = resource(
        "daily.ics",
        vcalendar(
            vevent(
                "daily",
                "DTSTART:20240101T090000Z",
                "DTEND:20240101T093000Z",
                "RRULE:FREQ=DAILY;COUNT=100",
                "SUMMARY:Daily",
            )
        ),
    )
    singles = [
        single(f"s{i}.ics", f"s{i}", at(2024, 1, 2 + i, 12), at(2024, 1, 2 + i, 13))
        for i in range(3)
    ]
    open_ended = resource(
        "hourly.ics",
        vcalendar(
            vevent(
                "hourly",
                "DTSTART:20240101T000000Z",
                "DTEND:20240101T000500Z",
                "RRULE:FREQ=HOURLY",
            )
        ),
    )
    await store.apply_page(CONN, CAL, page(daily, *singles))
    start, end = at(2024, 1, 1), at(2025, 1, 1)

    everything = await store.query(CONN, start=start, end=end)
    assert (len(everything), everything.truncated) == (103, False)
    exact = await store.query(CONN, limit=103, start=start, end=end)
    assert (len(exact), exact.truncated) == (103, False)

    first_ten = await store.query(CONN, limit=10, start=start, end=end)
    assert (len(first_ten), first_ten.truncated) == (10, True)
    assert starts(first_ten) == sorted(starts(everything))[:10]  # type: ignore[type-var]
    assert [o.uid for o in first_ten][:4] == ["daily", "daily", "s0", "daily"]

    per_series = await store.query(CONN, series_limit=5, start=start, end=end)
    assert per_series.truncated
    assert [o.uid for o in per_series].count("daily") == 5
    assert len(per_series) == 8

    await store.apply_page(CONN, CAL, page(open_ended))
    unbounded = await store.query(CONN, calendar_id=CAL, series_limit=50)
    assert unbounded.truncated
    assert [o.uid for o in unbounded].count("hourly") == 50
    assert starts(unbounded) == sorted(starts(unbounded))  # type: ignore[type-var]


async def test_json_series_expand_from_their_stored_rule(store: EventStore) -> None:
    master = Resource(
        "g1",
        '"etag-g1"',
        '{"id": "g1", "recurrence": ["RRULE:FREQ=WEEKLY;UNTIL=20240415T000000Z"]}',
        "json",
        [
            Event(
                "g1@google.com",
                start=at(2024, 2, 5, 9),
                end=at(2024, 2, 5, 10),
                timezone="Europe/Berlin",
                summary="Sync",
                rrule="FREQ=WEEKLY;UNTIL=20240415T000000Z",
                exdates=["2024-02-12T09:00:00+00:00"],
                series_end=at(2024, 4, 8, 9),
            )
        ],
    )
    moved = Resource(
        "g1_20240219T090000Z",
        '"etag-m"',
        '{"id": "g1_20240219T090000Z"}',
        "json",
        [
            Event(
                "g1@google.com",
                recurrence_id="2024-02-19T09:00:00+00:00",
                start=at(2024, 2, 20, 15),
                end=at(2024, 2, 20, 16),
                summary="Sync (moved)",
            )
        ],
    )
    cancelled = Resource(
        "g1_20240226T090000Z",
        '"etag-c"',
        '{"id": "g1_20240226T090000Z", "status": "cancelled"}',
        "json",
        [
            Event(
                "g1@google.com",
                recurrence_id="2024-02-26T09:00:00+00:00",
                status="cancelled",
                start=at(2024, 2, 26, 9),
                end=at(2024, 2, 26, 10),
            )
        ],
    )
    await store.apply_page(CONN, CAL, page(master, moved, cancelled))
    found = await store.query(CONN, start=at(2024, 2, 1), end=at(2024, 5, 1))
    assert [(o.start, o.summary) for o in found] == [
        (at(2024, 2, 5, 9), "Sync"),
        (at(2024, 2, 20, 15), "Sync (moved)"),
        (at(2024, 3, 4, 9), "Sync"),
        (at(2024, 3, 11, 9), "Sync"),
        (at(2024, 3, 18, 9), "Sync"),
        (at(2024, 3, 25, 9), "Sync"),
        (at(2024, 4, 1, 8), "Sync"),
        (at(2024, 4, 8, 8), "Sync"),
    ]
    assert found.occurrences[0].recurrence_id == "2024-02-05T09:00:00+00:00"
    assert found.occurrences[1].recurrence_id == "2024-02-19T09:00:00+00:00"


async def test_unreadable_ical_falls_back_to_the_stored_rule(store: EventStore) -> None:
    broken = Resource(
        "broken.ics",
        "etag",
        "this is not iCalendar",
        "ical",
        [
            Event(
                "broken",
                start=at(2024, 1, 1, 9),
                end=at(2024, 1, 1, 10),
                timezone="UTC",
                rrule="FREQ=DAILY;COUNT=3",
                series_end=at(2024, 1, 3, 10),
            ),
            Event(
                "broken",
                recurrence_id="2024-01-02T09:00:00+00:00",
                start=at(2024, 1, 2, 15),
                end=at(2024, 1, 2, 16),
                summary="moved",
            ),
        ],
    )
    await store.apply_page(CONN, CAL, page(broken))
    found = await store.query(CONN, start=at(2024, 1, 1), end=at(2024, 2, 1))
    assert starts(found) == [at(2024, 1, 1, 9), at(2024, 1, 2, 15), at(2024, 1, 3, 9)]


async def test_queries_span_calendars_and_connections_stay_apart(store: EventStore) -> None:
    await store.apply_page(
        CONN, "/a/", page(single("x.ics", "x", at(2024, 1, 3, 9), at(2024, 1, 3, 10)))
    )
    await store.apply_page(
        CONN, "/b/", page(single("x.ics", "y", at(2024, 1, 2, 9), at(2024, 1, 2, 10)))
    )
    await store.apply_page(
        "other/conn", "/a/", page(single("x.ics", "z", at(2024, 1, 2, 9), at(2024, 1, 2, 10)))
    )
    found = await store.query(CONN)
    assert [(o.calendar_id, o.uid) for o in found] == [("/b/", "y"), ("/a/", "x")]
    assert [o.uid for o in await store.query(CONN, calendar_id="/a/")] == ["x"]


async def test_export_keeps_ical_originals_verbatim(store: EventStore) -> None:
    folded = "DESCRIPTION:" + "a" * 63 + "\r\n " + "b" * 20
    meeting = vcalendar(
        BERLIN_TZ,
        vevent(
            "meeting",
            "DTSTART;TZID=Europe/Berlin:20240110T100000",
            "DTEND;TZID=Europe/Berlin:20240110T110000",
            "SUMMARY:Meeting\\, with comma",
            "X-VENDOR-THING;X-PARAM=1:kept as is",
            folded,
        ),
    )
    google = Resource(
        "g1",
        None,
        "{}",
        "json",
        [
            Event(
                "g1@google.com",
                start=at(2024, 1, 11, 9),
                end=at(2024, 1, 11, 10),
                summary="From Google",
                organizer="carol@example.com",
                rrule="FREQ=DAILY;COUNT=2",
            )
        ],
    )
    await store.upsert_calendar(CONN, CAL, "Work")
    await store.apply_page(
        CONN, CAL, page(resource("meeting.ics", meeting), resource("weekly.ics", WEEKLY), google)
    )
    text = await store.export_ics(CONN, CAL)

    assert text.startswith("BEGIN:VCALENDAR\r\n") and text.endswith("END:VCALENDAR\r\n")
    assert text.count("BEGIN:VTIMEZONE") == 1
    assert text.count("BEGIN:VCALENDAR") == 1
    meeting_block = meeting[meeting.index("BEGIN:VEVENT") : meeting.index("END:VEVENT")]
    assert meeting_block in text
    weekly_events = WEEKLY[WEEKLY.index("BEGIN:VEVENT") : WEEKLY.rindex("END:VEVENT")]
    assert weekly_events in text

    parsed = icalendar.Calendar.from_ical(text)
    assert str(parsed["X-WR-CALNAME"]) == "Work"
    uids = [str(c["UID"]) for c in parsed.walk("VEVENT")]
    assert sorted(uids) == ["g1@google.com", "meeting"] + ["weekly@example.com"] * 3
    [from_google] = [c for c in parsed.walk("VEVENT") if str(c["UID"]) == "g1@google.com"]
    assert from_google["DTSTART"].dt == at(2024, 1, 11, 9)
    assert str(from_google["ORGANIZER"]) == "mailto:carol@example.com"
    assert from_google["RRULE"].to_ical() == b"FREQ=DAILY;COUNT=2"

    assert await store.export_ics(CONN, "/empty/") == (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calsync//event store export//EN\r\n"
        "END:VCALENDAR\r\n"
    )


# -- schema and concurrency -------------------------------------------------------------------


async def _versions(store: EventStore) -> list[int]:
    async with store.engine.connect() as conn:
        result = await conn.execute(
            sa.select(store_schema.schema_version.c.version).order_by("version")
        )
        return list(result.scalars())


async def test_migrations_run_once(store_url: str) -> None:
    first = await EventStore.open(store_url)
    await first.apply_page(
        CONN, CAL, page(single("a.ics", "a", at(2024, 1, 2, 9), at(2024, 1, 2, 10)))
    )
    await first.close()
    again = await EventStore.open(store_url)
    try:
        assert await _versions(again) == [m.version for m in MIGRATIONS]
        assert await again.count_events(CONN) == 1
    finally:
        await again.close()


async def test_two_stores_opening_at_once_migrate_once(store_url: str) -> None:
    stores = await asyncio.gather(*(EventStore.open(store_url) for _ in range(3)))
    try:
        assert await _versions(stores[0]) == [m.version for m in MIGRATIONS]
        pages = [
            stores[i].apply_page(
                CONN,
                CAL,
                page(single(f"{i}.ics", f"u{i}", at(2024, 1, 2, 9), at(2024, 1, 2, 10))),
            )
            for i in range(3)
        ]
        await asyncio.gather(*pages)
        assert await stores[1].count_events(CONN, CAL) == 3
    finally:
        for opened in stores:
            await opened.close()


async def test_a_newer_schema_is_refused(store: EventStore, store_url: str) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.insert(store_schema.schema_version).values(
                version=99, description="from the future", applied_at=dt.datetime.now(UTC)
            )
        )
    with pytest.raises(SchemaTooNew, match="99"):
        await EventStore.open(store_url)


async def test_migrated_schema_matches_the_tables_queries_use(store: EventStore) -> None:
    def describe(sync_conn: sa.Connection) -> dict[str, Any]:
        inspector = sa.inspect(sync_conn)
        return {
            table: {
                "columns": [(c["name"], c["nullable"]) for c in inspector.get_columns(table)],
                "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
                "indexes": sorted(
                    (i["name"] or "", tuple(i["column_names"]))
                    for i in inspector.get_indexes(table)
                ),
                "foreign keys": sorted(
                    (tuple(fk["constrained_columns"]), fk["referred_table"])
                    for fk in inspector.get_foreign_keys(table)
                ),
            }
            for table in sorted(inspector.get_table_names())
        }

    async with store.engine.connect() as conn:
        migrated = await conn.run_sync(describe)
    expected = {
        table.name: {
            "columns": [(c.name, c.nullable) for c in table.columns],
            "primary key": [c.name for c in table.primary_key.columns],
            "indexes": sorted(
                (str(i.name), tuple(str(c.name) for c in i.columns)) for i in table.indexes
            ),
            "foreign keys": sorted(
                (tuple(c.name for c in fk.columns), fk.referred_table.name)
                for fk in table.foreign_key_constraints
            ),
        }
        for table in store_schema.metadata.sorted_tables
    }
    assert migrated == dict(sorted(expected.items()))


async def test_pages_are_written_on_a_thread_only_for_a_sqlite_file(
    store: EventStore, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite file's page transactions run on a worker thread, so the event loop stays free
    for the next page; PostgreSQL's run on the loop, and so does a private in-memory SQLite."""
    threads: list[int] = []
    apply = EventStore._apply

    def recording(self: EventStore, *args: Any) -> Any:
        threads.append(threading.get_ident())
        return apply(self, *args)

    monkeypatch.setattr(EventStore, "_apply", recording)
    loop_thread = threading.get_ident()
    one = page(single("a.ics", "a", at(2024, 1, 2, 9), at(2024, 1, 2, 10)))
    await store.apply_page(CONN, CAL, one)
    on_sqlite_file = store_url.startswith("sqlite")
    assert (threads[-1] != loop_thread) is on_sqlite_file
    assert await store.count_events(CONN, CAL) == 1
    async with await EventStore.open("sqlite+aiosqlite://") as memory:
        await memory.apply_page(CONN, CAL, one)
        assert threads[-1] == loop_thread
        assert await memory.count_events(CONN, CAL) == 1
