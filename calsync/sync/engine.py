"""The provider-agnostic sync engine: page through changes, apply each page with its cursor.

For each selected calendar the engine asks the provider for changes since the stored cursor and
hands every page to the store, which applies its upserts, deletes and new cursor in one
transaction. A crash between pages therefore loses nothing: the next run resumes from the last
committed cursor and replays at most one page, and replaying is harmless because upserts replace
whole resources. A cursor the provider rejects (expired sync token, 410) makes the engine drop the
calendar's cursor and run a full listing, after which whatever the listing did not mention is
deleted. Resources wholly outside the connection's window are not stored (and are deleted when a
change moves them out). Malformed resources and duplicate UIDs are reported, never fatal, and so
are recurring series with more occurrences in the window than a range query expands
(`series_limit`, the `query_series_limit` setting): they are stored whole, and named.

A run may carry the `Fence` of its claim on the connection. Every store write of the run then
carries it too, and the first write after the claim was taken over (or the connection purged)
raises `Fenced` (`ConnectionPurged`), which ends the run: nothing of it is written from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Literal, TypedDict

from calsync.model import Calendar, ChangePage, Resource, Window
from calsync.providers.base import CalendarGone, CalendarProvider, CursorInvalid, let_go
from calsync.store import CalendarRow, EventStore, Fence, PreparedPage
from calsync.store.expand import capped_series

log = logging.getLogger(__name__)

Mode = Literal["incremental", "full"]


class _Fencing(TypedDict, total=False):
    fence: Fence


def _fencing(fence: Fence | None) -> _Fencing:
    """The keyword arguments that fence a store write. An unfenced run passes none, so it makes
    the same calls as before fences existed (stores wrapped by tests keep working)."""
    return {} if fence is None else {"fence": fence}


@dataclass
class CalendarResult:
    calendar_id: str
    name: str
    fetched: int = 0
    upserted: int = 0
    deleted: int = 0
    dropped: int = 0  # outside the window
    pages: int = 0
    full: bool = False
    cursor_reset: bool = False  # the provider rejected the cursor; a full resync ran
    duplicates: list[tuple[str, list[str]]] = field(default_factory=list)
    # Series with more occurrences in the window than a query expands (provider id, why).
    capped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.full or self.cursor_reset or bool(self.upserted or self.deleted)


@dataclass
class _Ready:
    """A page cut to the window and made ready for the store, ahead of its turn."""

    page: ChangePage  # upserts inside the window; those outside it added to the deletes
    fetched: int  # upserts as the provider listed them
    dropped: int  # of which outside the window
    rows: PreparedPage
    capped: list[tuple[str, str]]


@dataclass
class SyncResult:
    calendars: list[CalendarResult] = field(default_factory=list)
    removed_calendars: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (provider id, why)
    # Whether duplicate UIDs were looked for: only when something changed, since the check
    # scans every event of the connection and an unchanged store cannot have new ones.
    duplicates_checked: bool = False
    # The connection's calendars as stored when the run began, and whether the run left them
    # as they were but for their sync times: then they need not be read again to report.
    stored: list[CalendarRow] = field(default_factory=list)
    calendars_unchanged: bool = False

    @property
    def fetched(self) -> int:
        return sum(c.fetched for c in self.calendars)

    @property
    def upserted(self) -> int:
        return sum(c.upserted for c in self.calendars)

    @property
    def deleted(self) -> int:
        return sum(c.deleted for c in self.calendars)

    @property
    def capped(self) -> list[tuple[str, str]]:
        return [item for c in self.calendars for item in c.capped]

    @property
    def duplicates(self) -> list[tuple[str, str, list[str]]]:
        return [(c.calendar_id, uid, ids) for c in self.calendars for uid, ids in c.duplicates]


def select_calendars(
    calendars: Iterable[Calendar], include: Sequence[str], exclude: Sequence[str]
) -> list[Calendar]:
    """Apply the connection's include/exclude lists (matching id or display name)."""

    def named(cal: Calendar, names: Sequence[str]) -> bool:
        return cal.id in names or cal.name in names

    return [
        cal for cal in calendars if (not include or named(cal, include)) and not named(cal, exclude)
    ]


_running_syncs = 0  # syncs of this process running under `_syncing`
_saved_interval = 0.005  # the switch interval `_syncing` restores
_saved_threshold = (700, 10, 10)  # the collector's thresholds `_syncing` restores
# The interpreter's switch interval while syncs run (its default is 5 ms); see `_syncing`.
SYNC_SWITCH_INTERVAL = 0.001
# The collector's youngest-generation threshold while syncs run (default 700); see `_syncing`.
SYNC_GC_THRESHOLD = 50_000
# Seconds between the full collections a finishing sync runs; see `_syncing`.
SYNC_COLLECT_EVERY = 30.0
_last_collection = time.monotonic()  # of the last one (a new process has nothing piled up)


@contextlib.contextmanager
def _syncing() -> Iterator[None]:
    """Process-wide settings that hold while at least one sync runs; counted, so the first sync
    to start applies them and the last to finish restores them.

    Older objects are frozen out of full collections. A listing allocates tens of thousands of
    tracked objects (parsed JSON, resources, row tuples) that live until their page is stored,
    and that sets off full (generation 2) collections, each of which also walked every older
    object of the process: the imported libraries alone are some 80,000. On the Google
    benchmark's listing the two full collections of a sync took about 0.12 s; with the older
    objects frozen, 0.01 s, and the sync ran 12 to 17 % faster (medians of seven and nine
    interleaved runs). Unfreezing returns the objects to the oldest generation, where a cycle
    among them that became garbage meanwhile is collected as usual; objects made during a sync
    are collected normally throughout. While syncs overlap without a gap only the snapshot taken
    by the first stays frozen, so what can wait for collection is bounded by that snapshot and
    does not grow.

    The switch interval drops to `SYNC_SWITCH_INTERVAL`. A SQLite store writes each page on a
    thread of its own (`EventStore.apply_page`) while the event loop reads and converts the next
    one; every statement the thread finishes needs the GIL back, and with the loop busy it waited
    up to the whole interval for it, several times per page. At 1 ms the store's thread stopped
    being the slower half of that pipeline: the Google benchmark's listing ran 8 to 14 % faster
    (three interleaved series of four syncs each against 5 ms). A thread that never waits for the
    GIL is not affected; one that does gives it up sooner, which costs a little switching.

    The youngest generation is collected after `SYNC_GC_THRESHOLD` new container objects instead
    of 700. A page's objects live until the page is stored, so each of the 200-odd young
    collections of the Google benchmark's listing walked them again and promoted them, for about
    50 ms of a sync; at 50,000 the listing sets off one or two, for about 10 ms. Only garbage in
    reference cycles waits for a collection at all (everything else is freed when its last
    reference goes), and at most that many objects' worth of it can wait.

    A sync that finishes runs a full collection when the last was `SYNC_COLLECT_EVERY` seconds
    ago or more (the first, that long after the engine was imported). With the higher threshold
    and syncs overlapping all the time, the collector's own full collections became rare, and
    the garbage cycles every job leaves (an HTTP client's request, its pool request and its
    events: a few KiB per call to the API server or a provider) piled up in the oldest
    generation: the soak's workers grew 3 to 4 MiB a minute, in steps whenever a wave of CalDAV
    polls came due, with hundreds of finished requests still in memory. Frozen objects are
    skipped, so one costs tens of milliseconds.
    """
    global _running_syncs, _saved_interval, _saved_threshold, _last_collection
    if _running_syncs == 0:
        gc.freeze()
        _saved_threshold = gc.get_threshold()
        gc.set_threshold(max(SYNC_GC_THRESHOLD, _saved_threshold[0]), *_saved_threshold[1:])
        _saved_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(SYNC_SWITCH_INTERVAL, _saved_interval))
    _running_syncs += 1
    try:
        yield
    finally:
        _running_syncs -= 1
        if _running_syncs == 0:
            sys.setswitchinterval(_saved_interval)
            gc.set_threshold(*_saved_threshold)
            gc.unfreeze()
        now = time.monotonic()
        if now - _last_collection >= SYNC_COLLECT_EVERY:
            _last_collection = now
            gc.collect()


class SyncEngine:
    def __init__(
        self, store: EventStore, *, batch_size: int = 100, series_limit: int | None = None
    ) -> None:
        """`series_limit`: the per-series cap of range queries (`query_series_limit`); a
        stored series with more occurrences in the window is reported in `capped`."""
        self.store = store
        self.batch_size = batch_size
        self.series_limit = series_limit

    async def sync_connection(
        self,
        connection: str,
        provider: CalendarProvider,
        *,
        window: Window,
        mode: Mode = "incremental",
        calendar_id: str = "",
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        fence: Fence | None = None,
    ) -> SyncResult:
        """Sync every selected calendar of a connection (or only `calendar_id`).

        With a `fence`, every write is made under it, and `Fenced` ends the run as soon as the
        claim is lost."""
        with _syncing():
            return await self._sync_connection(
                connection,
                provider,
                window=window,
                mode=mode,
                calendar_id=calendar_id,
                include=include,
                exclude=exclude,
                fence=fence,
            )

    async def _sync_connection(
        self,
        connection: str,
        provider: CalendarProvider,
        *,
        window: Window,
        mode: Mode,
        calendar_id: str,
        include: Sequence[str],
        exclude: Sequence[str],
        fence: Fence | None,
    ) -> SyncResult:
        fenced = _fencing(fence)
        listed = await provider.list_calendars()
        selected = select_calendars(listed, include, exclude)
        result = SyncResult(stored=await self.store.calendars(connection))
        stored = {row.id: row for row in result.stored}
        unchanged = True
        if not calendar_id:
            # A calendar no longer listed (deleted, unshared, excluded) takes its events along.
            wanted = {cal.id for cal in selected}
            for gone in result.stored:
                if gone.id not in wanted:
                    await self.store.remove_calendar(connection, gone.id, **fenced)
                    result.removed_calendars.append(gone.id)
        else:
            selected = [cal for cal in selected if cal.id == calendar_id]
            if not selected:
                raise CalendarGone(f"calendar {calendar_id!r} is not listed by the provider")
        for calendar in selected:
            row = stored.get(calendar.id)
            # An unchanged calendar row is not written again: a no-change poll writes one page.
            if row is None or (row.name, row.color) != (calendar.name, calendar.color):
                unchanged = False
                await self.store.upsert_calendar(
                    connection, calendar.id, calendar.name, calendar.color, **fenced
                )
            result.calendars.append(
                await self.sync_calendar(
                    connection,
                    provider,
                    calendar,
                    window=window,
                    mode=mode,
                    fence=fence,
                    cursor=row.cursor if row is not None else None,
                )
            )
        result.calendars_unchanged = (
            unchanged
            and not result.removed_calendars
            and not any(c.changed for c in result.calendars)
        )
        if result.removed_calendars or any(c.changed for c in result.calendars):
            for outcome in result.calendars:
                outcome.duplicates = await self.store.duplicate_uids(
                    connection, outcome.calendar_id
                )
            result.duplicates_checked = True
        skipped = getattr(provider, "skipped", None)
        if isinstance(skipped, list):
            result.skipped.extend(skipped)
            skipped.clear()
        return result

    async def sync_calendar(
        self,
        connection: str,
        provider: CalendarProvider,
        calendar: Calendar,
        *,
        window: Window,
        mode: Mode = "incremental",
        fence: Fence | None = None,
        cursor: str | EllipsisType | None = ...,
    ) -> CalendarResult:
        """Sync one calendar; `cursor` is its stored cursor when the caller has read it."""
        if mode == "full":
            cursor = None
        elif cursor is ...:
            cursor = await self.store.get_cursor(connection, calendar.id)
        outcome = CalendarResult(calendar.id, calendar.name)
        try:
            await self._run(connection, provider, calendar, cursor, window, outcome, fence)
        except CursorInvalid as exc:
            if cursor is None:
                raise
            log.warning(
                "cursor rejected for %s calendar %s, running a full resync: %s",
                connection,
                calendar.id,
                exc,
            )
            await self.store.reset_calendar(connection, calendar.id, **_fencing(fence))
            outcome = CalendarResult(calendar.id, calendar.name, cursor_reset=True)
            await self._run(connection, provider, calendar, None, window, outcome, fence)
        return outcome

    async def _run(
        self,
        connection: str,
        provider: CalendarProvider,
        calendar: Calendar,
        cursor: str | None,
        window: Window,
        outcome: CalendarResult,
        fence: Fence | None,
    ) -> None:
        seen: set[str] = set()
        # A full listing into an empty calendar, under the run's claim: the store need neither
        # replace event rows nor look for leftovers beyond what this run wrote itself.
        fresh = cursor is None and await self.store.is_empty(connection, calendar.id)

        async def known() -> Mapping[str, str | None]:
            return await self.store.known_etags(connection, calendar.id)

        pages = provider.changes(
            calendar, cursor, window=window, known=known, batch_size=self.batch_size
        ).__aiter__()
        # The next page is read, parsed and turned into rows while the store commits this one:
        # the store's database work runs outside the event loop, so both proceed at once.
        ahead: asyncio.Task[_Ready] | None = asyncio.ensure_future(
            self._next(pages, connection, calendar, window)
        )
        try:
            while ahead is not None:
                try:
                    ready = await ahead
                except StopAsyncIteration:
                    break
                ahead = (
                    None
                    if ready.page.complete
                    else asyncio.ensure_future(self._next(pages, connection, calendar, window))
                )
                await self._apply(connection, calendar, ready, seen, fresh, outcome, fence)
        finally:
            if ahead is not None:
                await let_go(ahead)
            aclose = getattr(pages, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _next(
        self,
        pages: AsyncIterator[ChangePage],
        connection: str,
        calendar: Calendar,
        window: Window,
    ) -> _Ready:
        """The next page, cut to the window, with its rows and the series it caps."""
        page = await anext(pages)
        kept: list[Resource] = []
        outside: list[str] = []
        for resource in page.upserts:
            if window.admits_resource(resource):
                kept.append(resource)
            else:
                outside.append(resource.provider_id)
        capped: list[tuple[str, str]] = []
        if self.series_limit is not None:
            for resource in kept:
                if any(e.recurring for e in resource.events):
                    why = capped_series(resource, window.start, window.end, self.series_limit)
                    if why is not None:
                        capped.append((resource.provider_id, why))
        cut = dataclasses.replace(page, upserts=kept, deletes=[*page.deletes, *outside])
        return _Ready(
            page=cut,
            fetched=len(page.upserts),
            dropped=len(outside),
            rows=self.store.prepare_page(connection, calendar.id, cut),
            capped=capped,
        )

    async def _apply(
        self,
        connection: str,
        calendar: Calendar,
        ready: _Ready,
        seen: set[str],
        fresh: bool,
        outcome: CalendarResult,
        fence: Fence | None,
    ) -> None:
        page = ready.page
        written = frozenset(seen) if fresh and page.full else None
        if page.full:
            seen.update(r.provider_id for r in page.upserts)
        applied = await self.store.apply_page(
            connection,
            calendar.id,
            page,
            run_seen=seen if page.full else None,
            written=written,
            prepared=ready.rows,
            **_fencing(fence),
        )
        outcome.pages += 1
        outcome.full = outcome.full or page.full
        outcome.fetched += ready.fetched
        outcome.dropped += ready.dropped
        outcome.upserted += applied.upserted
        outcome.deleted += applied.deleted
        outcome.capped += ready.capped
