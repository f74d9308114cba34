"""The store's tables as the latest migration leaves them, and how timestamps are kept.

Queries are written against these `Table` objects. The migrations in `migrations.py` build the
same tables from their own frozen definitions, so that an old migration never changes meaning
when this file moves on; a test compares the migrated database with this file.

Timestamps are timezone-aware UTC datetimes in Python. PostgreSQL stores them as `timestamptz`.
SQLite has no date type, so there they are integer microseconds since the Unix epoch: exact,
compact, compared and indexed as plain integers, with no text format to get wrong. `UtcDateTime`
converts both ways and refuses naive datetimes, whose meaning would be a guess.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def to_epoch_us(value: dt.datetime) -> int:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: give it a zone")
    since = value - _EPOCH  # whole days, seconds and microseconds: no division needed
    return (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds


def from_epoch_us(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime: `timestamptz` on PostgreSQL, epoch microseconds on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return to_epoch_us(value)
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: give it a zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, int):
            return from_epoch_us(value)
        assert isinstance(value, dt.datetime)
        return value.astimezone(UTC)


STATUSES = ("confirmed", "tentative", "cancelled")
TRANSPARENCIES = ("opaque", "transparent")
RAW_FORMATS = ("ical", "json")


def _one_of(column: str, values: tuple[str, ...], name: str) -> CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({listed})", name=name)


metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

calendars = Table(
    "calendars",
    metadata,
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
    metadata,
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
    _one_of("raw_format", RAW_FORMATS, "resources_raw_format_check"),
)
# Queries must repeat this exact term for SQLite to use the partial index.
RECURRING = resources.c.recurring == true()
Index(
    "resources_recurring_idx",
    resources.c.connection,
    resources.c.calendar_id,
    resources.c.first_start,
    postgresql_where=RECURRING,
    sqlite_where=RECURRING,
)

events = Table(
    "events",
    metadata,
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
    _one_of("status", STATUSES, "events_status_check"),
    _one_of("transparency", TRANSPARENCIES, "events_transparency_check"),
    Index("events_start_idx", "connection", "calendar_id", "start_utc"),
    # Covers the duplicate-UID check (`EventStore.duplicate_uids`), which reads only these.
    Index("events_uid_idx", "connection", "calendar_id", "uid", "recurrence_id", "provider_id"),
)

# Facts about the store itself; `store_id` is created once, by migration 2.
store_meta = Table(
    "store_meta",
    metadata,
    Column("key", Text, nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("key", name="store_meta_pkey"),
)

# One row per connection ever claimed or purged (see `claims.py`). `holder` is '' when nobody
# holds the connection; `purged_at` set makes the row a tombstone.
connection_claims = Table(
    "connection_claims",
    metadata,
    Column("connection", Text, nullable=False),
    Column("holder", Text, nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("purged_at", UtcDateTime),
    Column("done_job", Text),  # the last job finished under a claim (migration 3)
    # A poll the operator asked for and no run has covered yet, and when (migration 5).
    Column("poll", Text),
    Column("poll_at", UtcDateTime),
    PrimaryKeyConstraint("connection", name="connection_claims_pkey"),
)

# Only connections with a poll waiting, in the order workers take them (migration 5). Queries
# must repeat this exact term for SQLite to use the partial index.
POLL_WAITING = connection_claims.c.poll.is_not(None)
Index(
    "connection_claims_poll_idx",
    connection_claims.c.poll_at,
    connection_claims.c.connection,
    postgresql_where=POLL_WAITING,
    sqlite_where=POLL_WAITING,
)

# Processes sharing the store (workers, ...), each alive until its `expires_at`.
store_members = Table(
    "store_members",
    metadata,
    Column("identity", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("identity", name="store_members_pkey"),
)
