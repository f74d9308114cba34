"""The event store: every connection's calendars, resources and events, on SQLite or PostgreSQL.

The sync engine's one promise, "no event lost or duplicated across any crash", rests on
`apply_page`: a page's upserts, deletes, new cursor and (on the last page of a full listing) the
removal of everything the listing did not mention are committed in one transaction, so a crash
leaves either the old state with the old cursor or the new state with the new cursor. Replaying
a page is harmless because an upsert replaces a whole resource (its row and all its event rows).

Writers on SQLite start with BEGIN IMMEDIATE; on PostgreSQL a page first takes a transaction
advisory lock for its calendar, so two workers writing the same calendar queue up instead of
failing on each other's rows. Bulk statements (executemany, and one array parameter for id lists
on PostgreSQL) keep a page of a few hundred resources to a handful of round trips. The rows of
the two big INSERTs are built as tuples in `rows.py` and handed to the driver as they are, with
the timestamps converted here the way `schema.UtcDateTime` does (naive ones refused).

The page write is one blocking function. On PostgreSQL it runs on the async connection (asyncpg,
through SQLAlchemy's `run_sync`); on a SQLite file it runs on a worker thread with a blocking
connection of its own to the same file (`connect.thread_writer`), so that building the rows and
SQLite's work go on while the event loop reads and converts the next page. Through aiosqlite
every statement needed the loop to hand over the next one, and the loop was busy converting.

A page's statements also run with PostgreSQL's generic plans. While a new calendar fills up, the
table statistics still say it holds next to nothing, and a plan made for its literal values then
finds "its" rows through any index starting with (connection, calendar_id), scanning the whole
calendar for every page (measured on 10,000 events: the deletes took nine times longer). The
generic plan reasons from average selectivity and probes the primary key.

Every write a sync run makes can carry the `Fence` of its claim on the connection (see
`claims.py`): the write checks it first, in its own transaction, and raises `Fenced` without
writing anything when another claim has taken the connection over since. Writes to a purged
connection raise `ConnectionPurged`, fenced or not. The check is one primary-key lookup; on
PostgreSQL the connection's shared claim lock rides in the statement that already takes the
calendar's page lock.

Reads never expand recurrences in SQL: non-recurring events come from an indexed range query,
recurring resources whose envelope meets the range are expanded in Python (see `expand.py`),
and everything is merged lazily by start up to the caps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence, Set
from typing import Any, NamedTuple, Self

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    any_,
    bindparam,
    delete,
    distinct,
    func,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import ARRAY, Text

from calsync.model import ChangePage
from calsync.store.claims import Fence, Leases, check_claim, connection_lock
from calsync.store.connect import create_store_engine, one_statement, thread_writer, writer
from calsync.store.expand import (
    HIGHEST,
    LOWEST,
    Truncation,
    ical_occurrences,
    master_occurrences,
    overlaps,
    parse_utc,
    start_key,
)
from calsync.store.export import Exported, calendar_text
from calsync.store.migrations import migrate
from calsync.store.results import ApplyResult, CalendarRow, Occurrence, QueryResult
from calsync.store.rows import (
    EVENT_COLUMNS,
    RESOURCE_COLUMNS,
    Stamp,
    event_values,
    json_list,
    occurrence_from_row,
    resource_values,
)
from calsync.store.schema import RECURRING, calendars, events, resources, to_epoch_us
from calsync.store.urls import default_store_url

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 10_000
DEFAULT_SERIES_LIMIT = 3_000  # a daily series across the default window (365 + 730 days) fits
# pg_advisory_xact_lock(int, int) key space for per-calendar page locks: the bytes of "cals".
CALENDAR_LOCK_SPACE = int.from_bytes(b"cals", "big")
_SQLITE_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-variable limit
# Values bound to one multi-row INSERT on SQLite (500 events): under the 32,766 SQLite allows
# by default since 3.32. Larger statements measured no faster and kept more memory in the
# driver's statement cache.
_SQLITE_VALUES = 10_500
# What an upsert of an existing resource replaces: every column but the key.
_RESOURCE_UPDATES = tuple(
    name for name in RESOURCE_COLUMNS if name not in ("connection", "calendar_id", "provider_id")
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class EventStore:
    """Async access to the store; one instance per process, shared by all tasks."""

    def __init__(self, engine: AsyncEngine, *, store_id: str) -> None:
        self._engine = engine
        self._store_id = store_id
        self._leases = Leases(engine)
        self._writer = writer(engine)
        self._reader = one_statement(engine, write=False)
        self._thread_writer = thread_writer(engine)
        self._postgres = engine.dialect.name == "postgresql"
        # A page's rows go to the driver as plain tuples, converted here: SQLAlchemy's per-row
        # parameter processing was about a quarter of the page writes of a large listing.
        self._stamp: Stamp = _aware if self._postgres else _epoch_us
        self._upsert_resources = _BulkInsert(
            "resources",
            RESOURCE_COLUMNS,
            self._postgres,
            "ON CONFLICT (connection, calendar_id, provider_id) DO UPDATE SET "
            + ", ".join(f"{name} = excluded.{name}" for name in _RESOURCE_UPDATES),
        )
        self._insert_events = _BulkInsert("events", EVENT_COLUMNS, self._postgres)

    @classmethod
    async def open(cls, url: str | URL | None = None, **engine_options: Any) -> Self:
        """Connect (default: `default_store_url()`) and bring the schema up to date."""
        engine = create_store_engine(
            url if url is not None else default_store_url(), **engine_options
        )
        try:
            await migrate(engine)
            async with engine.connect() as conn:
                store_id = await Leases.read_store_id(conn)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, store_id=store_id)

    async def close(self) -> None:
        if self._thread_writer is not None:
            await asyncio.to_thread(self._thread_writer.dispose)
        await self._engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    @property
    def store_id(self) -> str:
        """This database's identity: random, made once by a migration, kept for its life."""
        return self._store_id

    # -- writing ---------------------------------------------------------------------------

    async def apply_page(
        self,
        connection: str,
        calendar_id: str,
        page: ChangePage,
        *,
        run_seen: set[str] | None = None,
        written: Set[str] | None = None,
        prepared: PreparedPage | None = None,
        fence: Fence | None = None,
    ) -> ApplyResult:
        """Apply one page of changes and its cursor atomically.

        Upserts replace whole resources (a provider id repeated in the page: the last wins);
        deletes are applied after the upserts, so an id in both ends up deleted. On the complete
        page of a full listing, every resource of the calendar whose provider id is neither in
        `run_seen` (the ids seen by all pages of the run) nor upserted here is deleted too;
        without `run_seen` this page is taken to be the whole listing. The complete page also
        records the event count and the time of the sync.

        `written` is a promise from a full run that began on a calendar holding nothing (see
        `is_empty`) and holds the connection's claim: the calendar holds only what the run's
        earlier pages wrote, and these are their provider ids. The page then replaces the event
        rows of those ids only and looks for no leftovers on its complete page, which saves a
        lookup per upserted resource and a read of the whole calendar on an initial sync.

        `prepared` are the page's rows from `prepare_page`, when the caller built them ahead;
        else they are built here. On a SQLite file the transaction then runs on a worker
        thread with a blocking connection of its own, so SQLite's work proceeds while the event
        loop reads and converts the next page instead of waiting for the loop between
        statements. Elsewhere the same code runs on the async connection. A caller cancelled
        while its page is on the thread returns at once, and the transaction still ends on its
        own (committed or rolled back); a page is all or nothing either way.

        With a `fence`, the page is written only while that claim still holds the connection
        (`Fenced` otherwise); any page for a purged connection raises `ConnectionPurged`.
        """
        seen = frozenset(run_seen) if run_seen is not None else None
        rows = (
            prepared if prepared is not None else self.prepare_page(connection, calendar_id, page)
        )
        replaced = rows.upserts if written is None else [i for i in rows.upserts if i in written]
        full_check = written is None
        args = (connection, calendar_id, page, rows, replaced, full_check, seen, fence)
        if self._thread_writer is not None:
            return await asyncio.to_thread(self._apply_on_thread, *args)
        async with self._writer.begin() as conn:
            return await conn.run_sync(self._apply, *args)

    def prepare_page(self, connection: str, calendar_id: str, page: ChangePage) -> PreparedPage:
        """The rows of a page's upserts, as `apply_page` hands them to the database.

        A caller with a pipeline builds them for the next page while the store still writes the
        previous one, and passes them to `apply_page` with that page."""
        upserts = list({r.provider_id: r for r in page.upserts}.values())
        stamp = self._stamp
        updated_at = stamp(_now())
        return PreparedPage(
            upserts=[r.provider_id for r in upserts],
            resources=[
                resource_values(connection, calendar_id, r, updated_at, stamp) for r in upserts
            ],
            events=[
                row for r in upserts for row in event_values(connection, calendar_id, r, stamp)
            ],
        )

    def _apply_on_thread(
        self,
        connection: str,
        calendar_id: str,
        page: ChangePage,
        rows: PreparedPage,
        replaced: list[str],
        full_check: bool,
        seen: frozenset[str] | None,
        fence: Fence | None,
    ) -> ApplyResult:
        assert self._thread_writer is not None
        with self._thread_writer.begin() as conn:
            return self._apply(
                conn, connection, calendar_id, page, rows, replaced, full_check, seen, fence
            )

    def _apply(
        self,
        conn: Connection,
        connection: str,
        calendar_id: str,
        page: ChangePage,
        rows: PreparedPage,
        replaced: list[str],
        full_check: bool,
        run_seen: frozenset[str] | None,
        fence: Fence | None,
    ) -> ApplyResult:
        doomed = list(dict.fromkeys(page.deletes))
        now = _now()
        self._guard(conn, connection, fence, calendar_id)
        listing = page.full and page.complete and full_check
        if not (rows.upserts or doomed or listing):
            # A page that changes nothing (a no-change sync's) only moves the calendar's cursor
            # and sync time: one statement when the calendar's row exists, as it does after
            # the first sync.
            recorded = self._finish_page(conn, connection, calendar_id, page, now)
            if recorded is None:  # nothing to record: the row must exist all the same
                self._ensure_calendar(conn, connection, calendar_id)
            elif not recorded:  # no row yet
                self._ensure_calendar(conn, connection, calendar_id)
                self._finish_page(conn, connection, calendar_id, page, now)
            return ApplyResult(upserted=0, deleted=0)
        self._ensure_calendar(conn, connection, calendar_id)
        if rows.upserts:
            self._upsert_resources.run(conn, rows.resources)
            self._delete_events(conn, connection, calendar_id, replaced)
            self._insert_events.run(conn, rows.events)
        if listing:
            keep = set(run_seen or ()).union(rows.upserts)
            named = set(doomed)
            stored = conn.scalars(
                select(resources.c.provider_id).where(
                    *self._calendar_filter(resources, connection, calendar_id)
                )
            )
            doomed += [pid for pid in stored if pid not in keep and pid not in named]
        deleted = self._delete_resources(conn, connection, calendar_id, doomed)
        self._finish_page(conn, connection, calendar_id, page, now)
        return ApplyResult(upserted=len(rows.upserts), deleted=deleted)

    def _guard(
        self,
        conn: Connection,
        connection: str,
        fence: Fence | None,
        calendar_id: str | None = None,
    ) -> None:
        """The start of every write: PostgreSQL's locks, then the claim check.

        On PostgreSQL one statement takes the connection's shared claim lock and, for a write
        to one calendar, that calendar's page lock, always in this order, so no two writers
        wait on each other crosswise."""
        if self._postgres:
            locks = [connection_lock(connection, shared=True)]
            if calendar_id is not None:
                key = func.hashtext(f"{connection}\x1f{calendar_id}")
                locks += [
                    func.pg_advisory_xact_lock(CALENDAR_LOCK_SPACE, key),
                    func.set_config("plan_cache_mode", "force_generic_plan", True),
                ]
            conn.execute(select(*locks))
        check_claim(conn, connection, fence)

    def _ensure_calendar(self, conn: Connection, connection: str, calendar_id: str) -> None:
        stmt = self._insert(calendars).values(
            connection=connection, calendar_id=calendar_id, name="", event_count=0
        )
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["connection", "calendar_id"]))

    def _delete_events(
        self, conn: Connection, connection: str, calendar_id: str, ids: Sequence[str]
    ) -> int:
        deleted = 0
        for matches in self._id_filters(events.c.provider_id, ids):
            result = conn.execute(
                delete(events).where(
                    *self._calendar_filter(events, connection, calendar_id), matches
                )
            )
            deleted += result.rowcount
        return deleted

    def _delete_resources(
        self, conn: Connection, connection: str, calendar_id: str, ids: Sequence[str]
    ) -> int:
        self._delete_events(conn, connection, calendar_id, ids)
        deleted = 0
        for matches in self._id_filters(resources.c.provider_id, ids):
            result = conn.execute(
                delete(resources).where(
                    *self._calendar_filter(resources, connection, calendar_id), matches
                )
            )
            deleted += result.rowcount
        return deleted

    def _finish_page(
        self,
        conn: Connection,
        connection: str,
        calendar_id: str,
        page: ChangePage,
        now: dt.datetime,
    ) -> bool | None:
        """Record the page's cursor, and on a complete page the sync time and event count;
        False when the calendar has no row to record them in (nothing was written), None when
        the page has nothing to record."""
        values: dict[str, Any] = {}
        if page.cursor is not None:
            values["cursor"] = page.cursor
        if page.complete:
            values["last_sync_at"] = now
            values["event_count"] = (
                select(func.count())
                .select_from(events)
                .where(*self._calendar_filter(events, connection, calendar_id))
                .scalar_subquery()
            )
        if not values:
            return None
        result = conn.execute(
            update(calendars)
            .where(*self._calendar_filter(calendars, connection, calendar_id))
            .values(**values)
        )
        return bool(result.rowcount)

    async def set_cursor(
        self,
        connection: str,
        calendar_id: str,
        cursor: str | None,
        *,
        fence: Fence | None = None,
    ) -> None:
        async with self._writer.begin() as conn:
            await conn.run_sync(self._guard, connection, fence, calendar_id)
            await conn.run_sync(self._ensure_calendar, connection, calendar_id)
            await conn.execute(
                update(calendars)
                .where(*self._calendar_filter(calendars, connection, calendar_id))
                .values(cursor=cursor)
            )

    async def reset_calendar(
        self, connection: str, calendar_id: str, *, fence: Fence | None = None
    ) -> None:
        """Forget the cursor: the next run is a full listing, which replaces the stored data."""
        async with self._writer.begin() as conn:
            await conn.run_sync(self._guard, connection, fence, calendar_id)
            await conn.execute(
                update(calendars)
                .where(*self._calendar_filter(calendars, connection, calendar_id))
                .values(cursor=None)
            )

    async def upsert_calendar(
        self,
        connection: str,
        calendar_id: str,
        name: str,
        color: str | None = None,
        *,
        fence: Fence | None = None,
    ) -> None:
        stmt = self._insert(calendars).values(
            connection=connection, calendar_id=calendar_id, name=name, color=color, event_count=0
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["connection", "calendar_id"],
            set_={"name": stmt.excluded.name, "color": stmt.excluded.color},
        )
        async with self._writer.begin() as conn:
            await conn.run_sync(self._guard, connection, fence, calendar_id)
            await conn.execute(stmt)

    async def remove_calendar(
        self, connection: str, calendar_id: str, *, fence: Fence | None = None
    ) -> int:
        """Drop a calendar that is no longer listed, with all its events; returns events deleted."""
        async with self._writer.begin() as conn:
            await conn.run_sync(self._guard, connection, fence, calendar_id)
            deleted = await self._delete_where(conn, connection, calendar_id)
        return deleted

    async def purge_connection(self, connection: str) -> int:
        """Delete everything stored for a connection and leave a tombstone, in one transaction;
        returns events deleted.

        From then on the connection cannot be claimed (`ConnectionPurged`) and every write to
        it, fenced or not, raises `ConnectionPurged`: a run that started before the purge cannot
        bring its data back. Purging again is harmless. `prune_tombstones` drops old tombstones.
        """
        async with self._writer.begin() as conn:
            await self._leases.bury(conn, connection)
            deleted = await self._delete_where(conn, connection, None)
        return deleted

    async def _delete_where(
        self, conn: AsyncConnection, connection: str, calendar_id: str | None
    ) -> int:
        result = await conn.execute(
            delete(events).where(*self._calendar_filter(events, connection, calendar_id))
        )
        for table in (resources, calendars):
            await conn.execute(
                delete(table).where(*self._calendar_filter(table, connection, calendar_id))
            )
        return result.rowcount

    # -- claims and members ----------------------------------------------------------------

    async def claim(
        self, connection: str, holder: str, ttl: float, *, job: str | None = None
    ) -> Fence | None:
        """Take the connection for `holder` for `ttl` seconds, atomically; None if taken.

        The claim succeeds when nobody holds the connection, when its holder's lease has run
        out, or when `holder` already holds it; each success adds one to the connection's token
        (the first gives 1), so every fence handed out before is stale from then on. While
        another holder's lease is live the answer is None. A purged connection raises
        `ConnectionPurged`. A claim naming `job`, the job last released as done on this
        connection (see `release`), raises `JobDone`: that job must not run twice."""
        return await self._leases.claim(connection, holder, ttl, job)

    async def renew(self, fence: Fence, ttl: float) -> bool:
        """Extend the lease to `ttl` seconds from now; False when the fence has lost the claim
        (taken over, released or purged), in which case nothing changes."""
        return await self._leases.renew(fence, ttl)

    async def release(self, fence: Fence, *, done_job: str | None = None) -> None:
        """End the lease now, if the fence still holds it; another holder can claim at once.

        The token stays, so the fence (and any older one) stays stale: renewing it returns
        False and writes with it raise `Fenced`. `done_job` records the job the run finished
        for good, so a later claim naming it is refused (`JobDone`)."""
        await self._leases.release(fence, done_job)

    async def request_poll(self, connection: str, key: str) -> bool:
        """Ask for a poll of the connection, named `key` (decision 0018); idempotent.

        The poll waits in the store until a worker claims the connection naming `key` as the
        job (see `due_polls`) and releases it as done, or until any other run of the
        connection is released as done, which covers it. Asking for another key replaces the
        one waiting. False (and nothing written) when the connection was purged or `key` has
        already run."""
        return await self._leases.request_poll(connection, key)

    async def due_polls(
        self, limit: int, after: tuple[dt.datetime, str] | None = None
    ) -> list[tuple[str, str, dt.datetime]]:
        """Up to `limit` waiting polls, oldest first, whose connections nobody holds now:
        (connection, key, asked at). A worker claims the connection with `job=key`. `after`
        (the asked-at time and connection of the last row of a page) reads the next page."""
        return await self._leases.due_polls(limit, after)

    async def waiting_polls(self) -> list[str]:
        """The connections whose poll waits for a worker (the rows `due_polls` reads)."""
        return await self._leases.waiting_polls()

    async def claims(self) -> dict[str, tuple[str, dt.datetime]]:
        """The live claims: connection -> (holder, lease expiry)."""
        return await self._leases.live_claims()

    async def prune_tombstones(self, older_than: float) -> int:
        """Drop the tombstones of connections purged more than `older_than` seconds ago;
        returns how many. A pruned connection key could be claimed and written again, so keep
        tombstones far longer than any sync run could last."""
        return await self._leases.prune_tombstones(older_than)

    async def heartbeat(self, identity: str, ttl: float, *, kind: str = "worker") -> list[str]:
        """Record `identity` (a process of `kind`) as alive for `ttl` seconds; returns the
        identities of that kind alive now, this one included, sorted."""
        return await self._leases.heartbeat(identity, ttl, kind)

    async def leave(self, identity: str) -> None:
        """Forget a member at once (a clean shutdown), instead of waiting for it to expire."""
        await self._leases.leave(identity)

    # -- reading ---------------------------------------------------------------------------

    async def get_cursor(self, connection: str, calendar_id: str) -> str | None:
        async with self._reader.connect() as conn:
            cursor: str | None = await conn.scalar(
                select(calendars.c.cursor).where(
                    *self._calendar_filter(calendars, connection, calendar_id)
                )
            )
        return cursor

    async def is_empty(self, connection: str, calendar_id: str) -> bool:
        """Whether the calendar holds no resource (or is not stored at all)."""
        async with self._reader.connect() as conn:
            found = await conn.scalar(
                select(resources.c.provider_id)
                .where(*self._calendar_filter(resources, connection, calendar_id))
                .limit(1)
            )
        return found is None

    async def known_etags(self, connection: str, calendar_id: str) -> dict[str, str | None]:
        """provider id -> etag of every stored resource of the calendar."""
        async with self._reader.connect() as conn:
            result = await conn.execute(
                select(resources.c.provider_id, resources.c.etag).where(
                    *self._calendar_filter(resources, connection, calendar_id)
                )
            )
            return {pid: etag for pid, etag in result}

    async def calendars(self, connection: str) -> list[CalendarRow]:
        async with self._reader.connect() as conn:
            result = await conn.execute(
                select(calendars)
                .where(calendars.c.connection == connection)
                .order_by(calendars.c.calendar_id)
            )
            return [
                CalendarRow(
                    id=row.calendar_id,
                    name=row.name,
                    color=row.color,
                    event_count=row.event_count,
                    last_sync_at=row.last_sync_at,
                    cursor=row.cursor,
                )
                for row in result
            ]

    async def count_events(self, connection: str, calendar_id: str | None = None) -> int:
        """Stored event rows (single events, recurring masters and overrides, cancelled too)."""
        async with self._reader.connect() as conn:
            count = await conn.scalar(
                select(func.count())
                .select_from(events)
                .where(*self._calendar_filter(events, connection, calendar_id))
            )
        return int(count or 0)

    async def duplicate_uids(
        self, connection: str, calendar_id: str
    ) -> list[tuple[str, list[str]]]:
        """UIDs whose same component (master, or one recurrence id) several resources carry.

        A series kept as a master plus exceptions in separate resources (Google, Graph) shares
        one UID across resources legitimately; only the same (uid, recurrence id) twice is a
        duplicate.
        """
        where = self._calendar_filter(events, connection, calendar_id)
        shared = (
            select(events.c.uid, events.c.recurrence_id)
            .where(*where)
            .group_by(events.c.uid, events.c.recurrence_id)
            .having(func.count(distinct(events.c.provider_id)) > 1)
            .subquery()
        )
        async with self._reader.connect() as conn:
            result = await conn.execute(
                select(events.c.uid, events.c.provider_id)
                .distinct()
                .join(
                    shared,
                    (shared.c.uid == events.c.uid)
                    & (shared.c.recurrence_id == events.c.recurrence_id),
                )
                .where(*where)
                .order_by(events.c.uid, events.c.provider_id)
            )
            grouped: dict[str, list[str]] = defaultdict(list)
            for uid, provider_id in result:
                grouped[uid].append(provider_id)
        return sorted(grouped.items())

    async def query(
        self,
        connection: str,
        *,
        calendar_id: str | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        expand: bool = True,
        limit: int = DEFAULT_LIMIT,
        series_limit: int = DEFAULT_SERIES_LIMIT,
        include_cancelled: bool | None = None,
    ) -> QueryResult:
        """What happens in [start, end) (either side open when None), sorted by start.

        With `expand` recurring series become their occurrences in the range (each series
        capped at `series_limit`); without it the stored rows themselves (masters with their
        first occurrence's times, overrides, single events) that overlap the range. At most
        `limit` occurrences are returned; `truncated` says a cap cut some off. Cancelled events
        and instances are left out of expanded results and kept in stored rows, unless
        `include_cancelled` says otherwise.
        """
        for value in (start, end):
            if value is not None and value.tzinfo is None:
                raise ValueError("query times must be timezone-aware")
        if include_cancelled is None:
            include_cancelled = not expand
        async with self._engine.connect() as conn:
            if not expand:
                rows = await self._rows_in_range(
                    conn, connection, calendar_id, start, end, limit, include_cancelled, False
                )
                found = [occurrence_from_row(row) for row in rows]
                return QueryResult(found[:limit], len(found) > limit)
            truncation = Truncation(series_cap=series_limit)
            singles = await self._rows_in_range(
                conn, connection, calendar_id, start, end, limit, include_cancelled, True
            )
            streams = [iter([occurrence_from_row(row) for row in singles])]
            streams += await self._series_streams(
                conn,
                connection,
                calendar_id,
                start,
                end,
                min(series_limit, limit + 1),
                include_cancelled,
                truncation,
            )
            merged = list(itertools.islice(heapq.merge(*streams, key=start_key), limit + 1))
        merged.sort(key=_order)
        return QueryResult(
            merged[:limit],
            truncation.cut or len(merged) > limit,
            tuple(sorted(truncation.series)),
        )

    async def _rows_in_range(
        self,
        conn: AsyncConnection,
        connection: str,
        calendar_id: str | None,
        start: dt.datetime | None,
        end: dt.datetime | None,
        limit: int,
        include_cancelled: bool,
        single_only: bool,
    ) -> list[RowMapping]:
        stmt: Select[Any] = select(*events.c).where(
            *self._calendar_filter(events, connection, calendar_id),
            *_overlap(events.c.start_utc, events.c.end_utc, start, end),
        )
        if not include_cancelled:
            stmt = stmt.where(events.c.status != "cancelled")
        if single_only:
            stmt = stmt.join(
                resources,
                and_(
                    resources.c.connection == events.c.connection,
                    resources.c.calendar_id == events.c.calendar_id,
                    resources.c.provider_id == events.c.provider_id,
                ),
            ).where(not_(RECURRING))
        stmt = stmt.order_by(
            events.c.start_utc.asc().nulls_last(),
            events.c.uid,
            events.c.recurrence_id,
            events.c.calendar_id,
            events.c.provider_id,
        ).limit(limit + 1)
        result = await conn.execute(stmt)
        return list(result.mappings())

    async def _series_streams(
        self,
        conn: AsyncConnection,
        connection: str,
        calendar_id: str | None,
        start: dt.datetime | None,
        end: dt.datetime | None,
        cap: int,
        include_cancelled: bool,
        truncation: Truncation,
    ) -> list[Iterator[Occurrence]]:
        stmt = select(
            resources.c.calendar_id,
            resources.c.provider_id,
            resources.c.raw,
            resources.c.raw_format,
            resources.c.first_start,
            resources.c.series_end,
        ).where(
            *self._calendar_filter(resources, connection, calendar_id),
            RECURRING,
            resources.c.first_start.is_not(None),
        )
        if end is not None:
            stmt = stmt.where(resources.c.first_start < end)
        if start is not None:
            stmt = stmt.where(
                or_(resources.c.series_end.is_(None), resources.c.series_end >= start)
            )
        candidates = (await conn.execute(stmt)).mappings().all()
        streams: list[Iterator[Occurrence]] = []
        fallback: list[RowMapping] = []
        for resource in candidates:
            if resource["raw_format"] != "ical":
                fallback.append(resource)
                continue
            lower = start if start is not None else resource["first_start"]
            upper = end if end is not None else _horizon(resource["series_end"])
            try:
                streams.append(
                    ical_occurrences(
                        resource["raw"],
                        calendar_id=resource["calendar_id"],
                        provider_id=resource["provider_id"],
                        lower=max(lower, LOWEST),
                        upper=min(upper, HIGHEST),
                        start=start,
                        end=end,
                        cap=cap,
                        include_cancelled=include_cancelled,
                        truncation=truncation,
                    )
                )
            except Exception as exc:
                log.warning(
                    "cannot expand resource %s of calendar %s (%s) from its iCalendar text, "
                    "expanding its stored rule instead: %s",
                    resource["provider_id"],
                    resource["calendar_id"],
                    connection,
                    exc,
                )
                fallback.append(resource)
        if fallback:
            streams += await self._row_streams(
                conn, connection, fallback, start, end, cap, include_cancelled, truncation
            )
        return streams

    async def _row_streams(
        self,
        conn: AsyncConnection,
        connection: str,
        fallback: Sequence[RowMapping],
        start: dt.datetime | None,
        end: dt.datetime | None,
        cap: int,
        include_cancelled: bool,
        truncation: Truncation,
    ) -> list[Iterator[Occurrence]]:
        by_calendar: dict[str, list[str]] = defaultdict(list)
        for resource in fallback:
            by_calendar[resource["calendar_id"]].append(resource["provider_id"])
        rows: list[RowMapping] = []
        overridden: dict[tuple[str, str], set[dt.datetime]] = defaultdict(set)
        for cal, ids in by_calendar.items():
            for matches in self._id_filters(events.c.provider_id, ids):
                result = await conn.execute(
                    select(*events.c).where(
                        *self._calendar_filter(events, connection, cal), matches
                    )
                )
                rows += result.mappings().all()
            uids = sorted({row["uid"] for row in rows if row["calendar_id"] == cal})
            for matches in self._id_filters(events.c.uid, uids):
                result = await conn.execute(
                    select(events.c.uid, events.c.recurrence_id).where(
                        *self._calendar_filter(events, connection, cal),
                        events.c.recurrence_id != "",
                        matches,
                    )
                )
                for uid, recurrence_id in result:
                    original = parse_utc(recurrence_id)
                    if original is not None:
                        overridden[(cal, uid)].add(original)
        streams: list[Iterator[Occurrence]] = []
        overrides: list[Occurrence] = []
        for row in rows:
            if row["recurrence_id"] or not (row["rrule"] or json_list(row["rdates"])):
                if (include_cancelled or row["status"] != "cancelled") and overlaps(
                    row["start_utc"], row["end_utc"], start, end
                ):
                    overrides.append(occurrence_from_row(row))
                continue
            try:
                streams.append(
                    master_occurrences(
                        row,
                        overridden=overridden[(row["calendar_id"], row["uid"])],
                        start=start,
                        end=end,
                        cap=cap,
                        include_cancelled=include_cancelled,
                        truncation=truncation,
                    )
                )
            except (ValueError, TypeError) as exc:
                log.warning(
                    "cannot expand the rule %r of %s (%s): %s",
                    row["rrule"],
                    row["provider_id"],
                    connection,
                    exc,
                )
                truncation.stop(row["provider_id"])
        overrides.sort(key=start_key)
        streams.append(iter(overrides))
        return streams

    async def export_ics(self, connection: str, calendar_id: str) -> str:
        """The calendar as one VCALENDAR (iCalendar resources verbatim, JSON ones rebuilt)."""
        async with self._engine.connect() as conn:
            name = await conn.scalar(
                select(calendars.c.name).where(
                    *self._calendar_filter(calendars, connection, calendar_id)
                )
            )
            stored = (
                await conn.execute(
                    select(resources.c.provider_id, resources.c.raw, resources.c.raw_format)
                    .where(*self._calendar_filter(resources, connection, calendar_id))
                    .order_by(resources.c.provider_id)
                )
            ).all()
            json_rows: dict[str, list[RowMapping]] = defaultdict(list)
            if any(fmt != "ical" for _, _, fmt in stored):
                result = await conn.execute(
                    select(*events.c)
                    .join(
                        resources,
                        and_(
                            resources.c.connection == events.c.connection,
                            resources.c.calendar_id == events.c.calendar_id,
                            resources.c.provider_id == events.c.provider_id,
                        ),
                    )
                    .where(
                        *self._calendar_filter(events, connection, calendar_id),
                        resources.c.raw_format != "ical",
                    )
                    .order_by(events.c.provider_id, events.c.recurrence_id)
                )
                for row in result.mappings():
                    json_rows[row["provider_id"]].append(row)
        return calendar_text(
            name,
            (Exported(raw, fmt, json_rows.get(pid, ())) for pid, raw, fmt in stored),
        )

    # -- helpers ---------------------------------------------------------------------------

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(table)

    @staticmethod
    def _calendar_filter(
        table: Any, connection: str, calendar_id: str | None
    ) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = [table.c.connection == connection]
        if calendar_id is not None:
            where.append(table.c.calendar_id == calendar_id)
        return where

    def _id_filters(self, column: Any, ids: Sequence[str]) -> Iterable[ColumnElement[bool]]:
        """Conditions matching `column` against `ids`: one array on PostgreSQL, chunks on SQLite."""
        if not ids:
            return []
        if self._postgres:
            return [column == any_(bindparam("ids", list(ids), type_=ARRAY(Text)))]
        return [column.in_(ids[i : i + _SQLITE_CHUNK]) for i in range(0, len(ids), _SQLITE_CHUNK)]


class PreparedPage(NamedTuple):
    """A page's upserts as the driver takes them (`EventStore.prepare_page`)."""

    upserts: list[str]  # provider ids, each once
    resources: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]


class _BulkInsert:
    """One of a page's big INSERTs, handed to the driver as plain value tuples.

    PostgreSQL gets one row per statement through asyncpg's executemany, which pipelines them.
    SQLite gets multi-row statements (`VALUES (...), (...), ...`, up to `_SQLITE_VALUES` values)
    instead of executemany: Python's sqlite3 module takes the GIL back for every row of an
    executemany, and while the event loop thread is busy parsing the next page each of those
    hand-overs waits for the interpreter's switch interval (5 ms), so the store's thread made
    next to no progress whenever the provider had work to do. One statement binds all its
    values at once and then runs its whole B-tree work without the GIL.

    The table and column names are this package's constants; values only ever travel as
    parameters.
    """

    def __init__(
        self, table: str, columns: Sequence[str], postgres: bool, conflict: str = ""
    ) -> None:
        self._head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608
        self._conflict = f" {conflict}" if conflict else ""
        self._postgres = postgres
        self._width = len(columns)
        self._rows = max(1, _SQLITE_VALUES // self._width)  # rows per SQLite statement
        self._sqlite: dict[int, str] = {}  # rows per statement -> its text

    def sql(self, rows: int = 1) -> str:
        """The statement for `rows` rows ($n placeholders for asyncpg, ? for SQLite)."""
        if self._postgres:
            marks = ", ".join(f"${n}" for n in range(1, self._width + 1))
            return f"{self._head}({marks}){self._conflict}"
        text = self._sqlite.get(rows)
        if text is None:
            one = "(" + ", ".join("?" * self._width) + ")"
            text = self._head + ", ".join([one] * rows) + self._conflict
            if len(self._sqlite) < 8:  # full chunks, and a few sizes of a page's last one
                self._sqlite[rows] = text
        return text

    def run(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self._postgres:
            conn.exec_driver_sql(self.sql(), list(rows))
            return
        flat = itertools.chain.from_iterable
        for start in range(0, len(rows), self._rows):
            chunk = rows[start : start + self._rows]
            conn.exec_driver_sql(self.sql(len(chunk)), tuple(flat(chunk)))


def _epoch_us(value: dt.datetime | None) -> int | None:
    """SQLite keeps timestamps as epoch microseconds (see `schema.UtcDateTime`)."""
    return None if value is None else to_epoch_us(value)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """PostgreSQL takes aware datetimes as they are; a naive one has no meaning to store."""
    if value is not None and value.tzinfo is None:
        raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: give it a zone")
    return value


def _overlap(
    start_column: Any, end_column: Any, start: dt.datetime | None, end: dt.datetime | None
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if end is not None:
        where.append(start_column < end)
    if start is not None:
        where.append(or_(end_column > start, start_column >= start))
    return where


def _horizon(series_end: dt.datetime | None) -> dt.datetime:
    return series_end + dt.timedelta(days=1) if series_end is not None else HIGHEST


def _order(occurrence: Occurrence) -> tuple[dt.datetime, str, str, str, str]:
    return (
        start_key(occurrence),
        occurrence.uid,
        occurrence.recurrence_id or "",
        occurrence.calendar_id,
        occurrence.provider_id,
    )
