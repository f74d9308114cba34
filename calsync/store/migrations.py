"""Schema migrations: an ordered list of functions, applied once each, in one transaction.

`schema_version` records every migration applied (version, description, time). Opening a store
applies the missing ones in order and records them, all in a single transaction, so a failed
migration leaves the database as it was. Two processes opening the same database at once are
serialised: PostgreSQL takes a transaction-scoped advisory lock before looking at the version,
SQLite starts the transaction with BEGIN IMMEDIATE (the database write lock). Both dialects run
DDL transactionally, so nothing else is needed.

Adding migration N: write `_vN_...(connection)` with the DDL (and any data rewrite) it needs,
append `Migration(N, "...", _vN_...)` to `MIGRATIONS`, and change `schema.py` to match. A migration
never changes once released; each defines the tables it touches itself instead of importing
`schema.py`, because `schema.py` always describes the latest version. A database whose version
is newer than this code knows is refused rather than used.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    insert,
    select,
    text,
    true,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from calsync.store.connect import writer
from calsync.store.schema import UtcDateTime, schema_version

# pg_advisory_xact_lock(bigint) key for migrations: the bytes of "calsync".
MIGRATION_LOCK_KEY = int.from_bytes(b"calsync", "big")


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer calsync than this one."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_initial(connection: Connection) -> None:
    md = MetaData()
    Table(
        "calendars",
        md,
        Column("connection", Text, nullable=False),
        Column("calendar_id", Text, nullable=False),
        Column("name", Text, nullable=False),
        Column("color", Text),
        Column("cursor", Text),
        Column("last_sync_at", UtcDateTime),
        Column("event_count", Integer, nullable=False),
        PrimaryKeyConstraint("connection", "calendar_id", name="calendars_pkey"),
    )
    resources = Table(
        "resources",
        md,
        Column("connection", Text, nullable=False),
        Column("calendar_id", Text, nullable=False),
        Column("provider_id", Text, nullable=False),
        Column("etag", Text),
        Column("raw", Text, nullable=False),
        Column("raw_format", Text, nullable=False),
        Column("recurring", Boolean, nullable=False),
        Column("first_start", UtcDateTime),
        Column("series_end", UtcDateTime),
        Column("updated_at", UtcDateTime, nullable=False),
        PrimaryKeyConstraint("connection", "calendar_id", "provider_id", name="resources_pkey"),
        ForeignKeyConstraint(
            ["connection", "calendar_id"],
            ["calendars.connection", "calendars.calendar_id"],
            ondelete="CASCADE",
            name="resources_calendar_fkey",
        ),
        CheckConstraint("raw_format IN ('ical', 'json')", name="resources_raw_format_check"),
    )
    recurring = resources.c.recurring == true()
    Index(
        "resources_recurring_idx",
        resources.c.connection,
        resources.c.calendar_id,
        resources.c.first_start,
        postgresql_where=recurring,
        sqlite_where=recurring,
    )
    Table(
        "events",
        md,
        Column("connection", Text, nullable=False),
        Column("calendar_id", Text, nullable=False),
        Column("provider_id", Text, nullable=False),
        Column("uid", Text, nullable=False),
        Column("recurrence_id", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("start_utc", UtcDateTime),
        Column("end_utc", UtcDateTime),
        Column("timezone", Text),
        Column("all_day", Boolean, nullable=False),
        Column("summary", Text, nullable=False),
        Column("location", Text, nullable=False),
        Column("transparency", Text, nullable=False),
        Column("organizer", Text),
        Column("attendees", Text, nullable=False),
        Column("rrule", Text),
        Column("rdates", Text, nullable=False),
        Column("exdates", Text, nullable=False),
        Column("series_end", UtcDateTime),
        Column("last_modified", UtcDateTime),
        Column("sequence", Integer, nullable=False),
        PrimaryKeyConstraint(
            "connection", "calendar_id", "provider_id", "recurrence_id", name="events_pkey"
        ),
        ForeignKeyConstraint(
            ["connection", "calendar_id", "provider_id"],
            ["resources.connection", "resources.calendar_id", "resources.provider_id"],
            ondelete="CASCADE",
            name="events_resource_fkey",
        ),
        CheckConstraint(
            "status IN ('confirmed', 'tentative', 'cancelled')", name="events_status_check"
        ),
        CheckConstraint(
            "transparency IN ('opaque', 'transparent')", name="events_transparency_check"
        ),
        Index("events_start_idx", "connection", "calendar_id", "start_utc"),
        Index("events_uid_idx", "connection", "calendar_id", "uid"),
    )
    md.create_all(connection)


def _v2_claims(connection: Connection) -> None:
    md = MetaData()
    meta = Table(
        "store_meta",
        md,
        Column("key", Text, nullable=False),
        Column("value", Text, nullable=False),
        PrimaryKeyConstraint("key", name="store_meta_pkey"),
    )
    Table(
        "connection_claims",
        md,
        Column("connection", Text, nullable=False),
        Column("holder", Text, nullable=False),
        Column("token", BigInteger, nullable=False),
        Column("expires_at", UtcDateTime, nullable=False),
        Column("purged_at", UtcDateTime),
        PrimaryKeyConstraint("connection", name="connection_claims_pkey"),
    )
    Table(
        "store_members",
        md,
        Column("identity", Text, nullable=False),
        Column("kind", Text, nullable=False),
        Column("expires_at", UtcDateTime, nullable=False),
        PrimaryKeyConstraint("identity", name="store_members_pkey"),
    )
    md.create_all(connection)
    # The database's identity: made here, once, so it lives exactly as long as the data.
    connection.execute(insert(meta).values(key="store_id", value=uuid.uuid4().hex))


def _v3_done_job(connection: Connection) -> None:
    # The last job a holder finished on the connection: a claim for that same job is refused,
    # so a worker whose cache still shows it pending cannot run it a second time.
    connection.execute(text("ALTER TABLE connection_claims ADD COLUMN done_job TEXT"))


def _v4_covering_uid_index(connection: Connection) -> None:
    # The duplicate-UID check after every changed sync groups a calendar's events by (uid,
    # recurrence id) and reads their provider ids: with all three in the index it reads the
    # index alone instead of looking up every row (a 10,680-resource calendar: 20 ms -> 7 ms).
    connection.execute(text("DROP INDEX events_uid_idx"))
    connection.execute(
        text(
            "CREATE INDEX events_uid_idx"
            " ON events (connection, calendar_id, uid, recurrence_id, provider_id)"
        )
    )


def _v5_polls(connection: Connection) -> None:
    # Polls are asked for through the store, not as SyncJobs (decision 0018): the key of the
    # poll asked for, and when it was asked for (the order workers take them in).
    stamp = "BIGINT" if connection.dialect.name == "sqlite" else "TIMESTAMP WITH TIME ZONE"
    connection.execute(text("ALTER TABLE connection_claims ADD COLUMN poll TEXT"))
    connection.execute(text(f"ALTER TABLE connection_claims ADD COLUMN poll_at {stamp}"))
    connection.execute(
        text(
            "CREATE INDEX connection_claims_poll_idx ON connection_claims (poll_at, connection)"
            " WHERE poll IS NOT NULL"
        )
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "calendars, resources and events", _v1_initial),
    Migration(2, "store identity, connection claims and members", _v2_claims),
    Migration(3, "the last job finished on each claimed connection", _v3_done_job),
    Migration(4, "events by uid cover recurrence id and provider id", _v4_covering_uid_index),
    Migration(5, "polls asked for through the store", _v5_polls),
)


def check_order(migrations: Sequence[Migration]) -> None:
    """Versions must run 1, 2, 3, ... with no gap or repeat."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migration versions must be 1..n in order, got {versions}")


async def migrate(engine: AsyncEngine, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Bring the database to the latest version; returns the versions applied now."""
    check_order(migrations)
    async with writer(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
        return await conn.run_sync(_apply_pending, migrations)


async def current_version(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.max(schema_version.c.version))) or 0)


def _apply_pending(connection: Connection, migrations: Sequence[Migration]) -> list[int]:
    schema_version.create(connection, checkfirst=True)
    current = int(connection.scalar(select(func.max(schema_version.c.version))) or 0)
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise SchemaTooNew(
            f"the store's schema is at version {current}, newer than this calsync knows "
            f"({latest}); upgrade calsync or point it at another database"
        )
    applied: list[int] = []
    for migration in migrations[current:]:
        migration.apply(connection)
        connection.execute(
            insert(schema_version).values(
                version=migration.version,
                description=migration.description,
                applied_at=dt.datetime.now(dt.UTC),
            )
        )
        applied.append(migration.version)
    return applied
