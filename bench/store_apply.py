"""Store write throughput: 10,000 resources applied page by page, beside a bare bulk insert.

What is measured is `EventStore.apply_page`, the sync engine's hot path: one transaction per
page that upserts the resources, replaces their event rows and moves the cursor. The reference,
in the same database and run, is SQLAlchemy's own executemany INSERT of the very same event rows
(already converted) into a plain table without keys or indexes, one transaction per page: the
floor any store built on SQLAlchemy could reach. The ratio is the store's cost over that floor.

Two passes per page size: "initial" into an empty calendar (a first full sync) and "replay" of
the same pages (every resource replaced, as after a crash or a full resync).

SQLite always; PostgreSQL too when CALSYNC_BENCH_POSTGRES_URL names a database (the run uses a
connection name of its own and a scratch table, and removes both).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Column, MetaData, Table, insert

from bench._results import Row
from calsync.model import ChangePage, Event, Resource
from calsync.store import EventStore, schema
from calsync.store.rows import event_rows, resource_row

RESOURCES = 10_000
PAGE_SIZES = (100, 500)
RECURRING_SHARE = 0.1  # each recurring resource carries a master and one override
ENV_POSTGRES = "CALSYNC_BENCH_POSTGRES_URL"

UTC = dt.UTC


def generate(count: int, seed: int = 7) -> list[Resource]:
    rng = random.Random(seed)
    base = dt.datetime(2024, 1, 1, tzinfo=UTC)
    made: list[Resource] = []
    for i in range(count):
        uid = f"{uuid.UUID(int=rng.getrandbits(128))}@bench.example.com"
        start = base + dt.timedelta(minutes=15 * rng.randrange(0, 4 * 24 * 365))
        end = start + dt.timedelta(minutes=rng.choice((30, 45, 60, 90)))
        stamp = "%Y%m%dT%H%M%SZ"
        lines = [
            "BEGIN:VCALENDAR",
            "VERSION:2.0",
            "PRODID:-//calsync bench//EN",
            "BEGIN:VEVENT",
            f"UID:{uid}",
            "DTSTAMP:20240101T000000Z",
            f"DTSTART:{start.strftime(stamp)}",
            f"DTEND:{end.strftime(stamp)}",
            f"SUMMARY:Event {i}",
            "LOCATION:Room 4",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE:mailto:bob@example.com",
        ]
        master = Event(
            uid,
            start=start,
            end=end,
            timezone="UTC",
            summary=f"Event {i}",
            location="Room 4",
            organizer="alice@example.com",
            attendees=["bob@example.com"],
        )
        components = [master]
        if rng.random() < RECURRING_SHARE:
            lines.append("RRULE:FREQ=WEEKLY;COUNT=10")
            master.rrule = "FREQ=WEEKLY;COUNT=10"
            master.series_end = end + dt.timedelta(weeks=9)
            moved = start + dt.timedelta(weeks=2)
            components.append(
                Event(
                    uid,
                    recurrence_id=moved.isoformat(),
                    start=moved + dt.timedelta(hours=1),
                    end=moved + dt.timedelta(hours=2),
                    timezone="UTC",
                    summary=f"Event {i} (moved)",
                )
            )
        lines += ["END:VEVENT", "END:VCALENDAR"]
        made.append(
            Resource(
                f"/dav/bench/{i}.ics", f'"{i}-1"', "\r\n".join(lines) + "\r\n", "ical", components
            )
        )
    return made


def _pages(resources: Sequence[Resource], size: int) -> list[list[Resource]]:
    return [list(resources[i : i + size]) for i in range(0, len(resources), size)]


async def _apply(store: EventStore, connection: str, pages: list[list[Resource]]) -> float:
    seen: set[str] = set()
    started = time.perf_counter()
    for n, chunk in enumerate(pages):
        last = n == len(pages) - 1
        seen.update(r.provider_id for r in chunk)
        await store.apply_page(
            connection,
            "bench",
            ChangePage(upserts=chunk, cursor=f"cursor-{n}", complete=last, full=True),
            run_seen=seen,
        )
    return time.perf_counter() - started


def _plain(table: Table) -> Table:
    """The table's columns (and column types) without keys, constraints or indexes."""
    return Table(
        f"bench_{table.name}_{uuid.uuid4().hex[:8]}",
        MetaData(),
        *(Column(c.name, c.type) for c in table.columns),
    )


async def _bare_inserts(store: EventStore, pages: list[list[tuple[Table, list[Any]]]]) -> float:
    """Executemany INSERTs into plain copies of the tables, one transaction per page."""
    copies = {table: _plain(table) for page in pages for table, _ in page}
    async with store.engine.begin() as conn:
        for copy in copies.values():
            await conn.run_sync(copy.create)
    try:
        started = time.perf_counter()
        for page in pages:
            async with store.engine.begin() as conn:
                for table, rows in page:
                    await conn.execute(insert(copies[table]), rows)
        return time.perf_counter() - started
    finally:
        async with store.engine.begin() as conn:
            for copy in copies.values():
                await conn.run_sync(copy.drop)


async def _measure(url: str, label: str, resources: list[Resource]) -> list[Row]:
    now = dt.datetime.now(UTC)
    found: list[Row] = []
    for size in PAGE_SIZES:
        connection = f"bench/{uuid.uuid4().hex[:8]}"
        pages = _pages(resources, size)
        event_pages = [
            [row for r in chunk for row in event_rows(connection, "bench", r)] for chunk in pages
        ]
        resource_pages = [
            [resource_row(connection, "bench", r, now) for r in chunk] for chunk in pages
        ]
        count = sum(len(rows) for rows in event_pages)
        store = await EventStore.open(url)
        try:
            initial = await _apply(store, connection, pages)
            replay = await _apply(store, connection, pages)
            assert await store.count_events(connection, "bench") == count
            reference = await _bare_inserts(
                store, [[(schema.events, rows)] for rows in event_pages]
            )
            both = await _bare_inserts(
                store,
                [
                    [(schema.resources, r_rows), (schema.events, e_rows)]
                    for r_rows, e_rows in zip(resource_pages, event_pages, strict=True)
                ],
            )
            await store.purge_connection(connection)
        finally:
            await store.close()
        print(
            f"{label} pages of {size}: {count} events in {len(resources)} resources\n"
            f"  initial   {count / initial:>9,.0f} events/s  {initial:5.2f} s\n"
            f"  replay    {count / replay:>9,.0f} events/s  {replay:5.2f} s\n"
            f"  reference {count / reference:>9,.0f} events/s  {reference:5.2f} s  "
            "bare executemany INSERT of the same event rows into a plain table\n"
            f"  ratio     {initial / reference:.2f}x initial, {replay / reference:.2f}x replay\n"
            f"  (for scale: the resource rows too, into a second plain table: "
            f"{count / both:,.0f} events/s, {both:.2f} s)",
            flush=True,
        )
        for case, seconds in (("initial", initial), ("replay", replay)):
            found.append(
                Row(
                    benchmark="store_apply",
                    case=f"{label}, pages of {size}, {case}: EventStore.apply_page",
                    ours=seconds,
                    reference_name="bare executemany INSERT of the event rows",
                    reference=reference,
                    ratio=seconds / reference,
                    extra={
                        "events": count,
                        "resources": len(resources),
                        "events_per_s": count / seconds,
                        "with_resource_rows_s": both,
                    },
                )
            )
    return found


async def _main() -> list[Row]:
    resources = generate(RESOURCES)
    with tempfile.TemporaryDirectory() as folder:
        found = await _measure(
            f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}", "SQLite", resources
        )
    postgres = os.environ.get(ENV_POSTGRES, "").strip()
    if postgres:
        found += await _measure(postgres, "PostgreSQL", resources)
    else:
        print(f"PostgreSQL: skipped, set {ENV_POSTGRES} to a database URL to include it")
    return found


def run() -> list[Row]:
    return asyncio.run(_main())


if __name__ == "__main__":
    run()
