"""Connection claims, fences, tombstones, the store id and heartbeats, on real databases.

Most tests run on SQLite and on PostgreSQL. The last ones start several OS processes that
contend for the same connections on one PostgreSQL store and check, from what each process
saw succeed, that no two holds of a connection ever overlapped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import multiprocessing
import os
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from calsync.model import Calendar, ChangePage, Resource, Window
from calsync.providers.base import KnownEtags
from calsync.store import ConnectionPurged, EventStore, Fence, Fenced, JobDone
from calsync.store import schema as store_schema
from calsync.sync.engine import SyncEngine
from tests.integration.ical_helpers import single

pytestmark = pytest.mark.integration

T = TypeVar("T")
UTC = dt.UTC
NOW = dt.datetime.now(UTC).replace(microsecond=0)
WINDOW = Window.around(NOW, 365, 730)
# Connection keys are Kubernetes UIDs.
CONN = "6f1c2a9e-0b7d-4d8e-9a61-3c0f5e2b7d10"
OTHER = "0d9e4b12-77a3-4f0c-b5e8-91a2c3d4e5f6"
CAL = "work"
LONG = 60.0  # a lease that outlives the test
SHORT = 0.05  # a lease that runs out while the test polls


def event(n: int) -> Resource:
    start = NOW + dt.timedelta(hours=n)
    return single(f"{n}.ics", f"u{n}", start, start + dt.timedelta(minutes=30))


def page(*numbers: int, **kwargs: Any) -> ChangePage:
    return ChangePage(upserts=[event(n) for n in numbers], **kwargs)


async def eventually(
    attempt: Callable[[], Awaitable[T | None]], *, within: float = 15.0, what: str = ""
) -> T:
    """Await `attempt` until it returns something other than None, for `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await attempt()
        if value is not None:
            return value
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


async def contents(store: EventStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the migration record, in key order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with store.engine.connect() as conn:
        for table in store_schema.metadata.sorted_tables:
            if table.name == "schema_version":
                continue
            result = await conn.execute(sa.select(table).order_by(*table.primary_key.columns))
            out[table.name] = [tuple(row) for row in result]
    return out


async def rows_of(store: EventStore, connection: str) -> dict[str, int]:
    """How many rows each data table holds for `connection`."""
    counts: dict[str, int] = {}
    async with store.engine.connect() as conn:
        for table in (store_schema.calendars, store_schema.resources, store_schema.events):
            counts[table.name] = int(
                await conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(table)
                    .where(table.c.connection == connection)
                )
                or 0
            )
    return counts


NO_ROWS = {"calendars": 0, "resources": 0, "events": 0}


async def taken_over(store: EventStore, connection: str, holder: str) -> Fence:
    """Claim `connection` for `holder` as soon as the current lease runs out."""
    return await eventually(
        lambda: store.claim(connection, holder, LONG), what=f"{holder} to take {connection} over"
    )


# -- identity ---------------------------------------------------------------------------------


async def test_the_store_id_survives_reopening(store_url: str) -> None:
    async with await EventStore.open(store_url) as first:
        store_id = first.store_id
    assert len(store_id) == 32 and int(store_id, 16) >= 0
    async with await EventStore.open(store_url) as again:
        assert again.store_id == store_id


async def test_each_database_has_its_own_store_id(tmp_path: Path, postgres_url: str) -> None:
    urls = [
        f"sqlite+aiosqlite:///{tmp_path / 'one.db'}",
        f"sqlite+aiosqlite:///{tmp_path / 'two.db'}",
        make_url(postgres_url).set(drivername="postgresql+asyncpg").render_as_string(False),
    ]
    ids = []
    for url in urls:
        async with await EventStore.open(url) as store:
            ids.append(store.store_id)
    assert len(set(ids)) == 3


# -- claims -----------------------------------------------------------------------------------


async def test_one_of_twenty_concurrent_claims_wins(store_url: str) -> None:
    stores = [await EventStore.open(store_url) for _ in range(4)]
    try:
        fences = await asyncio.gather(
            *(stores[i % 4].claim(CONN, f"worker-{i}", LONG) for i in range(20))
        )
        won = [f for f in fences if f is not None]
        assert len(won) == 1
        assert won[0].token == 1 and won[0].connection == CONN
        holders = {CONN: won[0].holder}
        assert {c: h for c, (h, _) in (await stores[0].claims()).items()} == holders
    finally:
        for store in stores:
            await store.close()


async def test_claims_of_different_connections_are_independent(store: EventStore) -> None:
    mine = await store.claim(CONN, "worker-a", LONG)
    theirs = await store.claim(OTHER, "worker-b", LONG)
    assert mine == Fence(CONN, "worker-a", 1)
    assert theirs == Fence(OTHER, "worker-b", 1)
    assert await store.claim(CONN, "worker-b", LONG) is None
    assert await store.claim(OTHER, "worker-a", LONG) is None
    await store.release(mine)
    assert await store.renew(theirs, LONG)
    held = await store.claims()
    assert {c: h for c, (h, _) in held.items()} == {OTHER: "worker-b"}
    assert held[OTHER][1] > dt.datetime.now(UTC)


async def test_a_live_claim_refuses_others_and_an_expired_one_is_taken_over(
    store: EventStore,
) -> None:
    first = await store.claim(CONN, "worker-a", LONG)
    assert first is not None and first.token == 1
    assert await store.claim(CONN, "worker-b", LONG) is None
    # The holder claiming again gets a new token; its earlier fence is stale from then on.
    again = await store.claim(CONN, "worker-a", SHORT)
    assert again == Fence(CONN, "worker-a", 2)
    assert not await store.renew(first, LONG)
    takeover = await taken_over(store, CONN, "worker-b")
    assert takeover == Fence(CONN, "worker-b", 3)
    assert not await store.renew(again, LONG)
    assert await store.renew(takeover, LONG)
    assert {c: h for c, (h, _) in (await store.claims()).items()} == {CONN: "worker-b"}


async def test_a_stale_fence_writes_nothing(store: EventStore) -> None:
    old = await store.claim(CONN, "worker-a", SHORT)
    assert old is not None
    await store.upsert_calendar(CONN, CAL, "Work", fence=old)
    await store.apply_page(CONN, CAL, page(1, 2, cursor="v1"), fence=old)
    new = await taken_over(store, CONN, "worker-b")
    assert new.token == old.token + 1
    before = await contents(store)

    with pytest.raises(Fenced, match="worker-a"):
        await store.apply_page(CONN, CAL, page(3, deletes=["1.ics"], cursor="v2"), fence=old)
    with pytest.raises(Fenced):  # the last page of a full listing, which prunes too
        await store.apply_page(CONN, CAL, page(4, full=True, complete=True, cursor="v3"), fence=old)
    with pytest.raises(Fenced):
        await store.set_cursor(CONN, CAL, "v9", fence=old)
    with pytest.raises(Fenced):
        await store.reset_calendar(CONN, CAL, fence=old)
    with pytest.raises(Fenced):
        await store.upsert_calendar(CONN, CAL, "Renamed", fence=old)
    with pytest.raises(Fenced):
        await store.upsert_calendar(CONN, "new-calendar", "New", fence=old)
    with pytest.raises(Fenced):
        await store.remove_calendar(CONN, CAL, fence=old)
    assert not await store.renew(old, LONG)
    await store.release(old)  # a stale release leaves the new holder alone
    assert await contents(store) == before

    await store.apply_page(CONN, CAL, page(3, cursor="v2"), fence=new)
    assert await store.get_cursor(CONN, CAL) == "v2"
    assert sorted(await store.known_etags(CONN, CAL)) == ["1.ics", "2.ics", "3.ics"]
    assert {c: h for c, (h, _) in (await store.claims()).items()} == {CONN: "worker-b"}


async def test_a_fence_only_writes_its_own_connection(store: EventStore) -> None:
    fence = await store.claim(CONN, "worker-a", LONG)
    assert fence is not None
    with pytest.raises(ValueError, match="cannot write"):
        await store.apply_page(OTHER, CAL, page(1), fence=fence)
    assert await rows_of(store, OTHER) == NO_ROWS


async def test_release_lets_another_claim_at_once(store: EventStore) -> None:
    first = await store.claim(CONN, "worker-a", LONG)
    assert first is not None
    await store.apply_page(CONN, CAL, page(1), fence=first)
    await store.release(first)
    assert await store.claims() == {}
    second = await store.claim(CONN, "worker-b", LONG)
    assert second == Fence(CONN, "worker-b", 2)
    assert not await store.renew(first, LONG)
    with pytest.raises(Fenced):
        await store.apply_page(CONN, CAL, page(2), fence=first)
    assert sorted(await store.known_etags(CONN, CAL)) == ["1.ics"]


async def test_a_released_fence_is_dead_even_before_anyone_claims(store: EventStore) -> None:
    # A renewal racing the release must not bring the lease back to life.
    fence = await store.claim(CONN, "worker-a", LONG)
    assert fence is not None
    await store.release(fence)
    assert not await store.renew(fence, LONG)
    with pytest.raises(Fenced):
        await store.set_cursor(CONN, CAL, "v1", fence=fence)
    assert await store.claims() == {}


async def test_a_job_released_as_done_is_never_claimed_again(store: EventStore) -> None:
    # Worker A finishes job j1 and releases; worker B, whose cache still shows j1 pending,
    # must not run it a second time. Other jobs of the connection run as usual.
    first = await store.claim(CONN, "worker-a", LONG, job="j1")
    assert first is not None
    await store.release(first, done_job="j1")
    with pytest.raises(JobDone, match="j1"):
        await store.claim(CONN, "worker-b", LONG, job="j1")
    assert await store.claims() == {}
    second = await store.claim(CONN, "worker-b", LONG, job="j2")
    assert second == Fence(CONN, "worker-b", 2)
    # A run that ends without finishing its job (a retry later) leaves it claimable.
    await store.release(second)
    third = await store.claim(CONN, "worker-a", LONG, job="j2")
    assert third is not None
    # A claim that names no job is never refused for it.
    await store.release(third, done_job="j2")
    assert await store.claim(CONN, "worker-b", LONG) is not None


async def test_connections_the_server_dropped_cost_one_failure(postgres_url: str) -> None:
    # The pool does not ping on checkout; a dead pooled connection fails one statement, the
    # pool is discarded, and the next call (the caller's retry) works.
    from tests.fixtures.postgres import _admin, _libpq_url

    async with await EventStore.open(postgres_url) as store:
        fences = [await store.claim(f"conn-{i}", "worker-a", LONG) for i in range(3)]
        assert all(fences)
        _admin(
            _libpq_url(postgres_url),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        failures = 0
        for fence in fences:
            assert fence is not None
            try:
                assert await store.renew(fence, LONG)
            except Exception:
                failures += 1
                assert await store.renew(fence, LONG)
        assert failures <= 1
        assert sorted(await store.claims()) == ["conn-0", "conn-1", "conn-2"]


async def test_ttls_must_be_positive(store: EventStore) -> None:
    for ttl in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ttl"):
            await store.claim(CONN, "worker-a", ttl)
        with pytest.raises(ValueError, match="ttl"):
            await store.heartbeat("worker-a", ttl)
    assert await store.claims() == {}


# -- purging ----------------------------------------------------------------------------------


async def test_a_poll_waits_until_a_claim_naming_it_ends_as_done(store: EventStore) -> None:
    # The operator asks for poll p1 (twice: asking is idempotent and keeps its place); a
    # worker sees it due, claims the connection naming it, and releases it as done.
    assert await store.due_polls(10) == []
    assert await store.request_poll(CONN, "p1")
    assert await store.request_poll(OTHER, "q1")
    assert await store.request_poll(CONN, "p1")
    due = await store.due_polls(10)
    assert [(c, k) for c, k, _ in due] == [(CONN, "p1"), (OTHER, "q1")]
    assert all(asked is not None for _, _, asked in due)
    assert [c for c, _, _ in await store.due_polls(1)] == [CONN]
    fence = await store.claim(CONN, "worker-a", LONG, job="p1")
    assert fence is not None
    # While it runs it is not offered to anyone else.
    assert [c for c, _, _ in await store.due_polls(10)] == [OTHER]
    # A run that ends without finishing (a worker stopping) leaves the poll waiting.
    await store.release(fence)
    assert [c for c, _, _ in await store.due_polls(10)] == [CONN, OTHER]
    fence = await store.claim(CONN, "worker-b", LONG, job="p1")
    assert fence is not None
    await store.release(fence, done_job="p1")
    assert [c for c, _, _ in await store.due_polls(10)] == [OTHER]
    # The same poll asked for again (an operator whose cache lags) never runs twice.
    assert not await store.request_poll(CONN, "p1")
    assert [c for c, _, _ in await store.due_polls(10)] == [OTHER]
    with pytest.raises(JobDone):
        await store.claim(CONN, "worker-a", LONG, job="p1")
    # The next one does.
    assert await store.request_poll(CONN, "p2")
    assert [k for _, k, _ in await store.due_polls(10)] == ["q1", "p2"]


async def test_polls_are_read_in_pages_and_listed(store: EventStore) -> None:
    keys = [f"{n:02d}-{CONN}" for n in range(7)]
    for n, key in enumerate(keys):
        assert await store.request_poll(key, f"p{n}")
    assert sorted(await store.waiting_polls()) == keys
    seen: list[str] = []
    after = None
    while page := await store.due_polls(3, after):
        seen += [c for c, _, _ in page]
        after = (page[-1][2], page[-1][0])
    assert seen == keys
    held = await store.claim(keys[0], "worker-a", LONG, job="p0")
    assert held is not None
    assert sorted(await store.waiting_polls()) == keys[1:]
    await store.release(held, done_job="p0")
    assert sorted(await store.waiting_polls()) == keys[1:]


async def test_any_run_ended_as_done_covers_a_waiting_poll(store: EventStore) -> None:
    assert await store.request_poll(CONN, "p1")
    job = await store.claim(CONN, "worker-a", LONG, job="job-uid")
    assert job is not None
    assert await store.due_polls(10) == []  # held
    await store.release(job, done_job="job-uid")
    assert await store.due_polls(10) == []
    # A new poll replaces one still waiting.
    assert await store.request_poll(CONN, "p2")
    assert await store.request_poll(CONN, "p3")
    assert [k for _, k, _ in await store.due_polls(10)] == ["p3"]


async def test_a_purged_connection_gets_no_polls(store: EventStore) -> None:
    assert await store.request_poll(CONN, "p1")
    await store.purge_connection(CONN)
    assert await store.due_polls(10) == []
    assert not await store.request_poll(CONN, "p2")
    assert await store.due_polls(10) == []
    with pytest.raises(ValueError, match="key"):
        await store.request_poll(OTHER, "")


async def test_a_purged_connection_is_never_claimed_or_written_again(store: EventStore) -> None:
    fence = await store.claim(CONN, "worker-a", LONG)
    assert fence is not None
    await store.upsert_calendar(CONN, CAL, "Work", fence=fence)
    await store.apply_page(CONN, CAL, page(1, 2, cursor="v1"), fence=fence)
    await store.apply_page(OTHER, CAL, page(1, cursor="v1"))
    assert await store.purge_connection(CONN) == 2
    assert await rows_of(store, CONN) == NO_ROWS

    for holder in ("worker-a", "worker-b"):
        with pytest.raises(ConnectionPurged):
            await store.claim(CONN, holder, LONG)
    assert not await store.renew(fence, LONG)
    assert await store.claims() == {}
    writes: list[Callable[[Fence | None], Awaitable[object]]] = [
        lambda f: store.apply_page(CONN, CAL, page(3, cursor="v2"), fence=f),
        lambda f: store.apply_page(CONN, "home", page(4, full=True, complete=True), fence=f),
        lambda f: store.upsert_calendar(CONN, CAL, "Work", fence=f),
        lambda f: store.set_cursor(CONN, CAL, "v3", fence=f),
        lambda f: store.reset_calendar(CONN, CAL, fence=f),
        lambda f: store.remove_calendar(CONN, CAL, fence=f),
    ]
    for write in writes:
        for with_fence in (fence, None):
            with pytest.raises(ConnectionPurged):
                await write(with_fence)
    assert await rows_of(store, CONN) == NO_ROWS
    assert await store.purge_connection(CONN) == 0
    assert await store.count_events(OTHER) == 1
    assert await store.get_cursor(OTHER, CAL) == "v1"


async def test_a_run_begun_before_a_purge_cannot_bring_its_data_back(store: EventStore) -> None:
    # Today's unfenced writer: its second page arrives after the connection was purged.
    await store.apply_page(CONN, CAL, page(1, 2))
    assert await store.purge_connection(CONN) == 2
    with pytest.raises(ConnectionPurged):
        await store.apply_page(CONN, CAL, page(3, cursor="v1", complete=True))
    assert await rows_of(store, CONN) == NO_ROWS
    assert await store.calendars(CONN) == []


async def test_old_tombstones_are_pruned(store: EventStore) -> None:
    await store.purge_connection(CONN)  # never claimed: the tombstone is made anyway
    with pytest.raises(ConnectionPurged):
        await store.claim(CONN, "worker-a", LONG)
    assert await store.prune_tombstones(older_than=3600) == 0
    assert await store.prune_tombstones(older_than=0) == 1
    assert await store.prune_tombstones(older_than=0) == 0
    assert await store.claim(CONN, "worker-a", LONG) == Fence(CONN, "worker-a", 1)


# -- members ----------------------------------------------------------------------------------


async def test_heartbeats_list_the_live_members(store: EventStore) -> None:
    assert await store.heartbeat("worker-b", LONG) == ["worker-b"]
    assert await store.heartbeat("worker-a", LONG) == ["worker-a", "worker-b"]
    assert await store.heartbeat("gateway-1", LONG, kind="gateway") == ["gateway-1"]
    assert await store.heartbeat("worker-c", SHORT) == ["worker-a", "worker-b", "worker-c"]

    async def without_c() -> list[str] | None:
        alive = await store.heartbeat("worker-a", LONG)
        return alive if "worker-c" not in alive else None

    assert await eventually(without_c, what="worker-c to expire") == ["worker-a", "worker-b"]
    await store.leave("worker-b")
    assert await store.heartbeat("worker-a", LONG) == ["worker-a"]
    assert await store.heartbeat("worker-c", LONG) == ["worker-a", "worker-c"]


# -- the engine -------------------------------------------------------------------------------


@dataclass
class PagedProvider:
    """One calendar of `count` events, listed `page_size` at a time; `before_page(n)` runs
    before page n (from 1) is produced."""

    count: int
    page_size: int = 5
    before_page: Callable[[int], Awaitable[None]] | None = None
    produced: list[int] = field(default_factory=list)

    async def list_calendars(self) -> list[Calendar]:
        return [Calendar(id=CAL, name="Work")]

    async def changes(
        self,
        calendar: Calendar,
        cursor: str | None,
        *,
        window: Window,
        known: KnownEtags,
        batch_size: int,
    ) -> AsyncIterator[ChangePage]:
        numbers = list(range(self.count))
        chunks = [numbers[i : i + self.page_size] for i in range(0, self.count, self.page_size)]
        for n, chunk in enumerate(chunks, start=1):
            if self.before_page is not None:
                await self.before_page(n)
            self.produced.append(n)
            last = n == len(chunks)
            yield page(*chunk, cursor="v1" if last else None, complete=last, full=cursor is None)

    async def aclose(self) -> None:
        return None


async def test_a_fenced_engine_run_syncs_while_its_claim_holds(store: EventStore) -> None:
    fence = await store.claim(CONN, "worker-a", LONG)
    assert fence is not None
    result = await SyncEngine(store).sync_connection(
        CONN, PagedProvider(12), window=WINDOW, fence=fence
    )
    assert result.upserted == 12
    assert await store.get_cursor(CONN, CAL) == "v1"


async def test_an_engine_run_stops_when_its_claim_is_taken_over(store: EventStore) -> None:
    fence = await store.claim(CONN, "worker-a", SHORT)
    assert fence is not None

    async def take_over(n: int) -> None:
        # Page 1 is committed before page 3 is asked for: the engine reads one page ahead.
        if n == 3:
            await taken_over(store, CONN, "worker-b")

    provider = PagedProvider(30, before_page=take_over)
    with pytest.raises(Fenced, match="worker-b"):
        await SyncEngine(store).sync_connection(CONN, provider, window=WINDOW, fence=fence)
    assert {c: h for c, (h, _) in (await store.claims()).items()} == {CONN: "worker-b"}
    stored = await store.known_etags(CONN, CAL)
    # Pages 1 (and maybe 2, committed while page 3 was being produced); nothing after.
    assert sorted(stored, key=lambda pid: int(pid.split(".")[0])) in (
        [f"{n}.ics" for n in range(5)],
        [f"{n}.ics" for n in range(10)],
    )
    assert await store.get_cursor(CONN, CAL) is None
    assert provider.produced[-1] <= 4


async def test_an_engine_run_with_a_stale_fence_writes_nothing(store: EventStore) -> None:
    stale = await store.claim(CONN, "worker-a", LONG)
    assert stale is not None
    assert await store.claim(CONN, "worker-a", LONG) is not None
    with pytest.raises(Fenced):
        await SyncEngine(store).sync_connection(CONN, PagedProvider(5), window=WINDOW, fence=stale)
    assert await rows_of(store, CONN) == NO_ROWS


# -- several processes ------------------------------------------------------------------------

CONTENDED = [f"c0ffee00-0000-4000-8000-00000000000{n}" for n in range(5)]
WORKERS = 3
LIVE_LEASE = 300.0  # no hold of a working process runs out during the test
FROZEN_LEASE = 0.05  # a frozen process's lease runs out while the others carry on


@dataclass(frozen=True)
class Hold:
    """What one process saw of one claim: the claim returned at `start`, and a fenced write
    or renewal sent at `end` then succeeded, so the claim held at both instants."""

    connection: str
    token: int
    holder: str
    start: int  # time.monotonic_ns(), one clock for every process on the host
    end: int


def overlapping(holds: list[Hold]) -> list[tuple[Hold, Hold]]:
    """Pairs of holds of the same connection whose intervals meet, in order of start."""
    by_connection: dict[str, list[Hold]] = defaultdict(list)
    for hold in holds:
        by_connection[hold.connection].append(hold)
    pairs: list[tuple[Hold, Hold]] = []
    for same in by_connection.values():
        same.sort(key=lambda h: (h.start, h.end))
        pairs += [(a, b) for a, b in itertools.pairwise(same) if b.start <= a.end]
    return pairs


def test_overlapping_finds_holds_that_meet() -> None:
    a = Hold("c", 1, "x", start=10, end=20)
    b = Hold("c", 2, "y", start=20, end=30)
    c = Hold("c", 3, "z", start=31, end=40)
    elsewhere = Hold("d", 1, "x", start=0, end=100)
    assert overlapping([c, b, a, elsewhere]) == [(a, b)]
    assert overlapping([a, c, elsewhere]) == []


async def _contend(url: str, holder: str, record: str, iterations: int, fenced: bool) -> None:
    """One worker process: claim a random connection, write and renew under the fence a few
    times, release; sometimes stop without releasing (a frozen worker) and try the old fence
    again later. Appends one JSON line per successful write or renewal to `record`, and a
    summary: claims refused, live holds that lost their claim, late writes of frozen fences
    refused."""
    rng = random.Random(holder)
    out = os.open(record, os.O_WRONLY | os.O_APPEND)
    refused = lost = stale = 0

    def note(fence: Fence, claimed: int, sent: int, cursor: str | None) -> None:
        line = {
            "connection": fence.connection,
            "token": fence.token,
            "holder": holder,
            "start": claimed,
            "end": sent,
            "cursor": cursor,
        }
        os.write(out, (json.dumps(line) + "\n").encode())

    async with await EventStore.open(url) as store:
        deadline = time.monotonic() + 120
        # Start together: wait until every worker has announced itself.
        while len(await store.heartbeat(holder, 300, kind="contender")) < WORKERS:
            if time.monotonic() > deadline:
                raise TimeoutError("the other workers did not start")
            await asyncio.sleep(0.01)
        frozen: list[tuple[Fence, int]] = []
        for i in range(iterations):
            connection = rng.choice(CONTENDED)
            freeze = rng.random() < 0.1
            claimed_fence: Fence | None
            if fenced:
                ttl = FROZEN_LEASE if freeze else LIVE_LEASE
                claimed_fence = await store.claim(connection, holder, ttl)
                if claimed_fence is None:
                    refused += 1
                    continue
                fence = claimed_fence
            else:  # the control run: no claims, so nothing keeps the workers apart
                claimed_fence, fence = None, Fence(connection, holder, i)
            claimed = time.monotonic_ns()
            try:
                for step in range(2):
                    cursor = f"{holder}/{fence.token}/{step}"
                    sent = time.monotonic_ns()
                    await store.apply_page(
                        connection, "cal", ChangePage(cursor=cursor), fence=claimed_fence
                    )
                    note(fence, claimed, sent, cursor)
                    if claimed_fence is not None:
                        sent = time.monotonic_ns()
                        if not await store.renew(claimed_fence, LIVE_LEASE):
                            lost += 0 if freeze else 1
                            break
                        note(fence, claimed, sent, None)
            except Fenced:
                # A hold claimed with the frozen lease may lapse before its first page on a
                # busy machine; only a live lease taken away counts as lost.
                lost += 0 if freeze else 1
            if claimed_fence is not None:
                if freeze:
                    frozen.append((claimed_fence, claimed))
                else:
                    await store.release(claimed_fence)
            if frozen and rng.random() < 0.2:
                # A frozen worker wakes up and carries on with its old fence.
                old, old_claimed = frozen.pop(0)
                cursor = f"{holder}/{old.token}/late"
                sent = time.monotonic_ns()
                try:
                    await store.apply_page(
                        old.connection, "cal", ChangePage(cursor=cursor), fence=old
                    )
                except Fenced:
                    stale += 1
                else:
                    note(old, old_claimed, sent, cursor)
        summary = {"holder": holder, "refused": refused, "lost": lost, "stale": stale}
        os.write(out, (json.dumps(summary) + "\n").encode())
        await store.leave(holder)
    os.close(out)


def _contend_process(url: str, holder: str, record: str, iterations: int, fenced: bool) -> None:
    asyncio.run(_contend(url, holder, record, iterations, fenced))


def _run_contenders(
    url: str, record: Path, iterations: int, fenced: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    record.touch()
    spawn = multiprocessing.get_context("spawn")
    processes = [
        spawn.Process(
            target=_contend_process, args=(url, f"worker-{n}", str(record), iterations, fenced)
        )
        for n in range(WORKERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=600)
    for process in processes:
        if process.is_alive():
            process.kill()
    assert [p.exitcode for p in processes] == [0] * WORKERS
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    ops = [line for line in lines if "connection" in line]
    summaries = [line for line in lines if "connection" not in line]
    return ops, summaries


def holds_from(ops: list[dict[str, Any]]) -> list[Hold]:
    """One hold per claim (connection, token): from its claim to its last successful step."""
    spans: dict[tuple[str, int, str], tuple[int, int]] = {}
    for op in ops:
        key = (op["connection"], op["token"], op["holder"])
        start, end = spans.get(key, (op["start"], op["end"]))
        spans[key] = (min(start, op["start"]), max(end, op["end"]))
    return [Hold(c, t, h, start, end) for (c, t, h), (start, end) in spans.items()]


def test_claims_keep_processes_apart(postgres_url: str, tmp_path: Path) -> None:
    url = make_url(postgres_url).set(drivername="postgresql+asyncpg").render_as_string(False)
    ops, summaries = _run_contenders(url, tmp_path / "holds.jsonl", 300, fenced=True)
    holds = holds_from(ops)

    # Real contention happened: refusals, and every connection held by several workers.
    assert sum(s["refused"] for s in summaries) > 0
    # Nobody took a live lease away: only frozen processes' fences went stale.
    assert [s["lost"] for s in summaries] == [0] * WORKERS
    for connection in CONTENDED:
        assert len({h.holder for h in holds if h.connection == connection}) >= 2
    # One holder per token, and no two holds of a connection meet in time...
    tokens = [(h.connection, h.token) for h in holds]
    assert len(tokens) == len(set(tokens))
    assert overlapping(holds) == []
    # ...and they follow each other in token order.
    for connection in CONTENDED:
        mine = [h for h in holds if h.connection == connection]
        assert sorted(mine, key=lambda h: h.token) == sorted(mine, key=lambda h: h.start)
    # The cursor each connection ends with is the last one written under its newest claim.

    async def cursors() -> dict[str, str | None]:
        async with await EventStore.open(url) as store:
            return {c: await store.get_cursor(c, "cal") for c in CONTENDED}

    last: dict[str, tuple[int, int, str]] = {}
    for op in ops:
        if op["cursor"] is not None:
            key = (op["token"], op["end"], op["cursor"])
            last[op["connection"]] = max(last.get(op["connection"], key), key)
    assert asyncio.run(cursors()) == {c: last[c][2] for c in CONTENDED}


def test_without_claims_the_same_check_finds_overlaps(postgres_url: str, tmp_path: Path) -> None:
    """The control for the test above: unfenced workers do overlap, and the check sees it."""
    url = make_url(postgres_url).set(drivername="postgresql+asyncpg").render_as_string(False)
    ops, _ = _run_contenders(url, tmp_path / "holds.jsonl", 100, fenced=False)
    assert overlapping(holds_from(ops))


async def test_a_holder_stopped_inside_a_write_does_not_hang_a_claim(postgres_url: str) -> None:
    """A worker frozen (SIGSTOP) mid-transaction keeps the connection's lock; another worker's
    claim is refused after a short wait instead of waiting with it, and succeeds once the
    frozen session is gone."""
    from calsync.store.claims import connection_lock

    url = make_url(postgres_url).set(drivername="postgresql+asyncpg").render_as_string(False)
    async with await EventStore.open(url) as store:
        frozen = await store.claim(CONN, "worker-a", SHORT)
        assert frozen is not None
        await taken_over(store, CONN, "worker-c")  # the lease lapses and someone takes over...
        await store.release((await store.claim(CONN, "worker-c", LONG)) or frozen)
        holder = await store.engine.connect()
        transaction = await holder.begin()
        # ...while the frozen worker sits inside a page transaction holding the shared lock.
        await holder.execute(sa.select(connection_lock(CONN, shared=True)))
        try:
            refused = await asyncio.wait_for(store.claim(CONN, "worker-b", LONG), 30)
            assert refused is None
        finally:
            await transaction.rollback()
            await holder.close()
        granted = await store.claim(CONN, "worker-b", LONG)
        assert granted is not None and granted.holder == "worker-b"


async def test_a_claim_on_postgresql_is_one_statement(postgres_url: str) -> None:
    """A claim is sent as one statement on its own: granted, refused while another lease is
    live, refused for a done job and refused for a purged connection alike, with the same
    answers as the multi-statement form (every claim costs a worker round trips per job)."""
    url = make_url(postgres_url).set(drivername="postgresql+asyncpg").render_as_string(False)
    async with await EventStore.open(url) as store:
        sent: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            sent.append(statement)

        sa.event.listen(store.engine.sync_engine, "before_cursor_execute", record)

        async def counted(claim: Awaitable[T]) -> tuple[T, int]:
            sent.clear()
            return await claim, len(sent)

        fence, statements = await counted(store.claim(CONN, "worker-a", LONG, job="job-1"))
        assert fence is not None and fence.token == 1 and statements == 1
        refused, statements = await counted(store.claim(CONN, "worker-b", LONG, job="job-2"))
        assert refused is None and statements == 1
        again, statements = await counted(store.claim(CONN, "worker-a", LONG, job="job-1"))
        assert again is not None and again.token == 2 and statements == 1
        await store.release(again, done_job="job-1")
        sent.clear()
        with pytest.raises(JobDone):
            await store.claim(CONN, "worker-b", LONG, job="job-1")
        assert len(sent) == 1
        await store.purge_connection(CONN)
        sent.clear()
        with pytest.raises(ConnectionPurged):
            await store.claim(CONN, "worker-b", LONG)
        assert len(sent) == 1
        assert not any(s.strip().upper() in ("BEGIN", "COMMIT") for s in sent)


async def test_a_page_that_changes_nothing_writes_one_statement(store: EventStore) -> None:
    """A no-change sync's page (no upserts, no deletes) only moves the cursor and the sync
    time: past the fence's lock and check, one UPDATE. A first such page of a calendar with no
    row yet still creates the row."""
    fence = await store.claim(CONN, "worker-a", LONG)
    assert fence is not None
    await store.apply_page(CONN, CAL, page(1, 2, cursor="c1", complete=True), fence=fence)
    before = {row.id: row for row in await store.calendars(CONN)}[CAL]
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            sent.append(statement)

    # Every engine: on a SQLite file pages are written by a blocking engine of their own.
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        await no_change_pages(store, fence, before, sent)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


async def no_change_pages(store: EventStore, fence: Fence, before: Any, sent: list[str]) -> None:
    empty = ChangePage(upserts=[], cursor="c2", complete=True)
    applied = await store.apply_page(CONN, CAL, empty, fence=fence)
    assert (applied.upserted, applied.deleted) == (0, 0)
    assert len(sent) == 1 and sent[0].lstrip().upper().startswith("UPDATE")
    after = {row.id: row for row in await store.calendars(CONN)}[CAL]
    assert after.cursor == "c2" and after.event_count == before.event_count == 2
    assert after.last_sync_at is not None and before.last_sync_at is not None
    assert after.last_sync_at >= before.last_sync_at
    sent.clear()
    await store.apply_page(CONN, "new", empty, fence=fence)
    assert [s.lstrip().split()[0].upper() for s in sent] == ["UPDATE", "INSERT", "UPDATE"]
    created = {row.id: row for row in await store.calendars(CONN)}["new"]
    assert created.cursor == "c2" and created.event_count == 0
    assert await store.get_cursor(CONN, "new") == "c2"
    stale = Fence(CONN, "worker-a", fence.token - 1)
    with pytest.raises(Fenced):
        await store.apply_page(CONN, CAL, ChangePage(upserts=[], cursor="c3"), fence=stale)
    assert await store.get_cursor(CONN, CAL) == "c2"
