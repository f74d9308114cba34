"""What the store hands back: plain, immutable records that carry no database handle.

Callers (the engine, the gateway's read API, the controllers' status writers) get these records
and never a SQLAlchemy row, so the schema can change behind them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one page changed: resources written, and resources removed (deletes and pruning)."""

    upserted: int
    deleted: int


@dataclass(frozen=True, slots=True)
class CalendarRow:
    """A calendar as the store knows it: its listing, its cursor and its last completed sync."""

    id: str
    name: str
    color: str | None
    event_count: int
    last_sync_at: dt.datetime | None
    cursor: str | None


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One event as it happens: a single event, an override, or one expanded instance.

    `recurrence_id` is None for a non-recurring event and otherwise the UTC ISO 8601 start of the
    instance it stands for (for a moved instance, the original start). Times are aware UTC;
    all-day events run from midnight UTC of their first date to midnight UTC after the last.
    """

    uid: str
    recurrence_id: str | None
    calendar_id: str
    provider_id: str
    start: dt.datetime | None
    end: dt.datetime | None
    all_day: bool
    timezone: str | None
    summary: str
    location: str
    status: str
    transparency: str
    organizer: str | None
    attendees: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Occurrences sorted by start; `truncated` when a cap (total or per series) cut some off.

    `capped_series` names the resources (provider ids) whose expansion stopped short: at the
    per-series cap, at its budget of rule periods, or because the rule is not expanded at all.
    """

    occurrences: list[Occurrence]
    truncated: bool
    capped_series: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Occurrence]:
        return iter(self.occurrences)

    def __len__(self) -> int:
        return len(self.occurrences)
