"""Exclusive, fenced claims on connections, tombstones of purged ones, and live members.

A worker claims a connection before syncing it. A claim is a lease: a holder, an expiry, and a
token that grows by one with every successful claim. The `Fence` a claim hands out names the
holder and the token; every store write a sync run makes carries it, and the write checks, in
its own transaction, that the claim row still names that holder and token. A run whose lease
ran out and was claimed by someone else (a worker frozen past its lease, then resumed) is
therefore refused at its next write, and the refused write changes nothing. Exclusivity and
fencing live in the database, next to the data, so they hold across processes and machines
whatever else (the Kubernetes API, a clock, a network) gets wrong.

Purging a connection leaves a tombstone in the same row: no later claim, and no later write,
fenced or not, touches the connection again, so a run that started before the purge cannot
re-create what the purge removed.

How writes and claims are ordered:

- SQLite: every writer holds the database's write lock (BEGIN IMMEDIATE) for its whole
  transaction, so a claim, a purge and a page never interleave.
- PostgreSQL: a write takes a shared transaction-scoped advisory lock on its connection before
  it checks the claim row; a claim and a purge take the same lock exclusively. A takeover
  therefore waits for pages already past their check to commit, and a page that starts after
  the takeover reads the new token. The same lock orders unfenced writes after a purge even
  when the connection has no claim row yet (a row lock could not). The advisory key is a hash
  of the connection: two connections sharing one only queue behind each other.

Lease times come from one clock per database: PostgreSQL's `now()` (the transaction's start,
so a decision can only err towards a longer-looking lease), SQLite's host clock (every process
on one file shares a host). A lease is live while `expires_at > now`.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Interval,
    and_,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from calsync.store.connect import one_statement, writer
from calsync.store.schema import (
    POLL_WAITING,
    UtcDateTime,
    connection_claims,
    store_members,
    store_meta,
)

# pg_advisory_xact_lock(int, int) key space for per-connection claim locks: the bytes of "clms".
CLAIM_LOCK_SPACE = int.from_bytes(b"clms", "big")
# How long a member that stopped heartbeating without leaving stays in the table.
MEMBER_RETENTION = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof of a claim: store writes that carry it succeed only while the claim holds."""

    connection: str
    holder: str
    token: int


class Fenced(RuntimeError):
    """A write carried a fence that no longer holds its connection; nothing was written."""


class ConnectionPurged(Fenced):
    """The connection was purged: it can never be claimed or written again."""


class JobDone(RuntimeError):
    """A claim named the job last finished on the connection: it must not run again."""


def connection_lock(connection: str, *, shared: bool) -> ColumnElement[Any]:
    """PostgreSQL: the connection's claim lock, as a column of a SELECT."""
    lock = func.pg_advisory_xact_lock_shared if shared else func.pg_advisory_xact_lock
    return lock(CLAIM_LOCK_SPACE, func.hashtext(connection))


def check_claim(conn: Connection, connection: str, fence: Fence | None) -> None:
    """Refuse a write to a purged connection, or one whose fence lost the claim.

    Runs inside the write's transaction, after the PostgreSQL connection lock (see the module
    docstring); raising there rolls the whole transaction back."""
    if fence is not None and fence.connection != connection:
        raise ValueError(f"a fence for {fence.connection!r} cannot write to {connection!r}")
    row = conn.execute(
        select(
            connection_claims.c.holder, connection_claims.c.token, connection_claims.c.purged_at
        ).where(connection_claims.c.connection == connection)
    ).first()
    if row is not None and row.purged_at is not None:
        raise ConnectionPurged(f"connection {connection!r} was purged")
    if fence is None:
        return
    if row is None or row.holder != fence.holder or row.token != fence.token:
        holder = "no holder" if row is None or not row.holder else f"holder {row.holder!r}"
        token = 0 if row is None else row.token
        raise Fenced(
            f"{fence.holder!r} lost its claim on {connection!r}: its fence has token "
            f"{fence.token}, the claim now names {holder} with token {token}"
        )


def _seconds(ttl: float) -> dt.timedelta:
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"a lease needs a positive, finite ttl in seconds, got {ttl!r}")
    return dt.timedelta(seconds=ttl)


class Leases:
    """Claims, tombstones and members: the store's side of the worker fleet's coordination."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = writer(engine)
        self._single = one_statement(engine, write=True)
        self._postgres = engine.dialect.name == "postgresql"

    # -- clock -----------------------------------------------------------------------------

    def _at(self, *offsets: dt.timedelta) -> list[ColumnElement[Any]]:
        """`now + offset` for each offset, all from one reading of the database's clock."""
        if self._postgres:
            return [
                func.now() + literal(offset, Interval()) if offset else func.now()
                for offset in offsets
            ]
        now = dt.datetime.now(dt.UTC)
        return [literal(now + offset, UtcDateTime()) for offset in offsets]

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(table)

    async def _lock(self, conn: AsyncConnection, connection: str) -> None:
        if self._postgres:
            await conn.execute(select(connection_lock(connection, shared=False)))

    # -- identity --------------------------------------------------------------------------

    @staticmethod
    async def read_store_id(conn: AsyncConnection) -> str:
        value = await conn.scalar(select(store_meta.c.value).where(store_meta.c.key == "store_id"))
        if not value:
            raise RuntimeError("the store has no store_id: its migrations did not complete")
        return str(value)

    # -- claims ----------------------------------------------------------------------------

    async def claim(
        self, connection: str, holder: str, ttl: float, job: str | None = None
    ) -> Fence | None:
        if not holder:
            raise ValueError("a claim needs a holder")
        return await self._claim(connection, holder, _seconds(ttl), job)

    async def _claim(
        self, connection: str, holder: str, lease: dt.timedelta, job: str | None
    ) -> Fence | None:
        if self._postgres:
            return await self._claim_postgres(connection, holder, lease, job)
        table = connection_claims
        async with self._writer.begin() as conn:
            await self._lock(conn, connection)
            token = (await conn.execute(self._upsert(connection, holder, lease, job))).scalar()
            if token is not None:
                return Fence(connection, holder, int(token))
            row = (
                await conn.execute(
                    select(table.c.purged_at, table.c.done_job).where(
                        table.c.connection == connection
                    )
                )
            ).first()
        self._refused(connection, job, row)
        return None

    def _upsert(
        self,
        connection: str,
        holder: str,
        lease: dt.timedelta,
        job: str | None,
        rows: Any = None,
    ) -> Any:
        """The claim itself: insert the row, or take it over when it is free, expired or ours
        already (and not purged, and not done with `job`); returns the new token, or nothing.
        `rows`, a SELECT of the values to insert, replaces the plain VALUES (PostgreSQL's
        one-statement claim filters it)."""
        table = connection_claims
        now, until = self._at(dt.timedelta(0), lease)
        columns = ["connection", "holder", "token", "expires_at"]
        stmt = self._insert(table)
        if rows is None:
            stmt = stmt.values(connection=connection, holder=holder, token=1, expires_at=until)
        else:
            stmt = stmt.from_select(columns, rows)
        return stmt.on_conflict_do_update(
            index_elements=["connection"],
            set_={
                "holder": stmt.excluded.holder,
                "token": table.c.token + 1,
                "expires_at": stmt.excluded.expires_at,
            },
            where=and_(
                table.c.purged_at.is_(None),
                or_(table.c.expires_at <= now, table.c.holder == stmt.excluded.holder),
                *([or_(table.c.done_job.is_(None), table.c.done_job != job)] if job else []),
            ),
        ).returning(table.c.token)

    async def _claim_postgres(
        self, connection: str, holder: str, lease: dt.timedelta, job: str | None
    ) -> Fence | None:
        """The claim as one statement on its own (one round trip instead of five).

        The row to insert is selected only while no one else's lease is live and the
        connection's claim lock is free right now (`pg_try_advisory_xact_lock`, held to the
        statement's end): a claim never waits behind a page write in flight (a holder stopped
        inside a page transaction keeps that lock until the server ends its session, see
        connect.py), and a takeover still waits for no page past its check. The claim row's
        purge and done marks are read in the same statement, from its snapshot, for the
        refusal's reason."""
        table = connection_claims
        now, until = self._at(dt.timedelta(0), lease)
        busy = (
            select(table.c.connection)
            .where(
                table.c.connection == connection,
                table.c.purged_at.is_(None),
                table.c.holder != holder,
                table.c.expires_at > now,
            )
            .exists()
        )
        taken = func.pg_try_advisory_xact_lock(CLAIM_LOCK_SPACE, func.hashtext(connection))
        rows = select(literal(connection), literal(holder), literal(1), until).where(~busy, taken)
        claimed = self._upsert(connection, holder, lease, job, rows).cte("claimed")
        marks = select(table.c.purged_at, table.c.done_job).where(table.c.connection == connection)
        stmt = select(
            select(claimed.c.token).scalar_subquery().label("token"),
            marks.with_only_columns(table.c.purged_at).scalar_subquery().label("purged_at"),
            marks.with_only_columns(table.c.done_job).scalar_subquery().label("done_job"),
        )
        async with self._single.begin() as conn:
            row = (await conn.execute(stmt)).one()
        if row.token is not None:
            return Fence(connection, holder, int(row.token))
        self._refused(connection, job, row)
        return None

    @staticmethod
    def _refused(connection: str, job: str | None, row: Any) -> None:
        """Raise when a refused claim's row says why for good: purged, or done with `job`."""
        if row is not None and row.purged_at is not None:
            raise ConnectionPurged(f"connection {connection!r} was purged")
        if row is not None and job and row.done_job == job:
            raise JobDone(f"job {job!r} already finished on connection {connection!r}")

    def _matching(self, fence: Fence) -> list[ColumnElement[bool]]:
        table = connection_claims
        return [
            table.c.connection == fence.connection,
            table.c.holder == fence.holder,
            table.c.token == fence.token,
            table.c.purged_at.is_(None),
        ]

    async def renew(self, fence: Fence, ttl: float) -> bool:
        (until,) = self._at(_seconds(ttl))
        async with self._single.begin() as conn:
            result = await conn.execute(
                update(connection_claims).where(*self._matching(fence)).values(expires_at=until)
            )
        return result.rowcount == 1

    async def release(self, fence: Fence, done_job: str | None = None) -> None:
        (now,) = self._at(dt.timedelta(0))
        values: dict[str, Any] = {"holder": "", "expires_at": now}
        if done_job:
            # A run that ended for good covers a poll asked for before it: the operator asks
            # for the next one from the status the run wrote.
            values.update(done_job=done_job, poll=None, poll_at=None)
        async with self._single.begin() as conn:
            await conn.execute(
                update(connection_claims).where(*self._matching(fence)).values(**values)
            )

    async def live_claims(self) -> dict[str, tuple[str, dt.datetime]]:
        table = connection_claims
        (now,) = self._at(dt.timedelta(0))
        async with self._engine.connect() as conn:
            result = await conn.execute(
                select(table.c.connection, table.c.holder, table.c.expires_at).where(
                    table.c.purged_at.is_(None), table.c.holder != "", table.c.expires_at > now
                )
            )
            return {row.connection: (row.holder, row.expires_at) for row in result}

    async def bury(self, conn: AsyncConnection, connection: str) -> None:
        """In a purge's transaction, before its deletes: end any lease and leave a tombstone."""
        await self._lock(conn, connection)
        (now,) = self._at(dt.timedelta(0))
        table = connection_claims
        stmt = self._insert(table).values(
            connection=connection, holder="", token=0, expires_at=now, purged_at=now
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["connection"],
                set_={
                    "expires_at": stmt.excluded.expires_at,
                    "purged_at": func.coalesce(table.c.purged_at, stmt.excluded.purged_at),
                },
            )
        )

    async def prune_tombstones(self, older_than: float) -> int:
        if not math.isfinite(older_than) or older_than < 0:
            raise ValueError(f"older_than must be a non-negative number of seconds: {older_than!r}")
        (cutoff,) = self._at(-dt.timedelta(seconds=older_than))
        table = connection_claims
        async with self._writer.begin() as conn:
            result = await conn.execute(
                delete(table).where(table.c.purged_at.is_not(None), table.c.purged_at < cutoff)
            )
        return result.rowcount

    # -- polls -----------------------------------------------------------------------------

    async def request_poll(self, connection: str, key: str) -> bool:
        if not key:
            raise ValueError("a poll needs a key")
        table = connection_claims
        (now,) = self._at(dt.timedelta(0))
        stmt = self._insert(table).values(
            connection=connection, holder="", token=0, expires_at=now, poll=key, poll_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["connection"],
            set_={
                "poll": stmt.excluded.poll,
                # Asking again for the same poll keeps its place in the line.
                "poll_at": case(
                    (table.c.poll == stmt.excluded.poll, table.c.poll_at),
                    else_=stmt.excluded.poll_at,
                ),
            },
            where=and_(
                table.c.purged_at.is_(None),
                or_(table.c.done_job.is_(None), table.c.done_job != stmt.excluded.poll),
            ),
        ).returning(table.c.connection)
        async with self._single.begin() as conn:
            return (await conn.execute(stmt)).first() is not None

    def _waiting(self, now: ColumnElement[Any]) -> list[ColumnElement[bool]]:
        table = connection_claims
        return [
            POLL_WAITING,
            table.c.purged_at.is_(None),
            or_(table.c.holder == "", table.c.expires_at <= now),
            or_(table.c.done_job.is_(None), table.c.done_job != table.c.poll),
        ]

    async def due_polls(
        self, limit: int, after: tuple[dt.datetime, str] | None = None
    ) -> list[tuple[str, str, dt.datetime]]:
        table = connection_claims
        (now,) = self._at(dt.timedelta(0))
        where = self._waiting(now)
        if after is not None:
            at = literal(after[0], UtcDateTime())
            where.append(
                or_(
                    table.c.poll_at > at,
                    and_(table.c.poll_at == at, table.c.connection > after[1]),
                )
            )
        async with self._engine.connect() as conn:
            result = await conn.execute(
                select(table.c.connection, table.c.poll, table.c.poll_at)
                .where(*where)
                .order_by(table.c.poll_at, table.c.connection)
                .limit(max(0, limit))
            )
            return [(str(row.connection), str(row.poll), row.poll_at) for row in result]

    async def waiting_polls(self) -> list[str]:
        (now,) = self._at(dt.timedelta(0))
        async with self._engine.connect() as conn:
            rows = await conn.scalars(
                select(connection_claims.c.connection).where(*self._waiting(now))
            )
            return [str(c) for c in rows]

    # -- members ---------------------------------------------------------------------------

    async def heartbeat(self, identity: str, ttl: float, kind: str) -> list[str]:
        if not identity:
            raise ValueError("a heartbeat needs an identity")
        now, until, forgotten = self._at(dt.timedelta(0), _seconds(ttl), -MEMBER_RETENTION)
        table = store_members
        stmt = self._insert(table).values(identity=identity, kind=kind, expires_at=until)
        stmt = stmt.on_conflict_do_update(
            index_elements=["identity"],
            set_={"kind": stmt.excluded.kind, "expires_at": stmt.excluded.expires_at},
        )
        async with self._writer.begin() as conn:
            await conn.execute(stmt)
            await conn.execute(delete(table).where(table.c.expires_at < forgotten))
            alive = await conn.scalars(
                select(table.c.identity).where(table.c.kind == kind, table.c.expires_at > now)
            )
            return sorted(alive)

    async def leave(self, identity: str) -> None:
        async with self._writer.begin() as conn:
            await conn.execute(delete(store_members).where(store_members.c.identity == identity))
