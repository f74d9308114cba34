"""Translation between the model (`Resource`, `Event`) and the rows of the store's tables.

Kept apart from the SQL so that what is stored for an event, and what a stored row reads back
as, is written down once. Two normalisations happen here: an event without an end ends at its
start (one day later when all-day), as RFC 5545 says for a DTSTART alone, so that every range
comparison has both ends; and a resource carries the envelope of its events (`first_start`,
`series_end`, open when any series is unbounded) so queries can skip it without parsing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from calsync.model import Event, Resource
from calsync.store.results import Occurrence

log = logging.getLogger(__name__)

_DAY = dt.timedelta(days=1)


def event_end(event: Event) -> dt.datetime | None:
    if event.end is not None:
        return event.end
    if event.start is None:
        return None
    return event.start + _DAY if event.all_day else event.start


def resource_envelope(events: list[Event]) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(first start, end of the last occurrence or None when unbounded) over all components."""
    if len(events) == 1:  # most resources: one event, no overrides
        event = events[0]
        if event.recurring:
            return event.start, event.series_end
        return event.start, event_end(event)
    starts = [e.start for e in events if e.start is not None]
    ends: list[dt.datetime] = []
    for event in events:
        if event.recurring:
            if event.series_end is None:
                return min(starts, default=None), None
            ends.append(event.series_end)
        else:
            end = event_end(event)
            if end is not None:
                ends.append(end)
    return min(starts, default=None), max(ends, default=None)


# Column order of the value tuples below; the store's bulk statements list the same names.
RESOURCE_COLUMNS: Final = (
    "connection",
    "calendar_id",
    "provider_id",
    "etag",
    "raw",
    "raw_format",
    "recurring",
    "first_start",
    "series_end",
    "updated_at",
)
EVENT_COLUMNS: Final = (
    "connection",
    "calendar_id",
    "provider_id",
    "uid",
    "recurrence_id",
    "status",
    "start_utc",
    "end_utc",
    "timezone",
    "all_day",
    "summary",
    "location",
    "transparency",
    "organizer",
    "attendees",
    "rrule",
    "rdates",
    "exdates",
    "series_end",
    "last_modified",
    "sequence",
)

# How a timestamp is handed to the database driver (the store passes its dialect's conversion;
# the dict forms below keep datetimes for SQLAlchemy's own column types).
Stamp = Callable[[dt.datetime | None], Any]


def _same(value: dt.datetime | None) -> dt.datetime | None:
    return value


def resource_values(
    connection: str,
    calendar_id: str,
    resource: Resource,
    now: Any,
    stamp: Stamp = _same,
) -> tuple[Any, ...]:
    """A resource's row in `RESOURCE_COLUMNS` order; `now` is already converted."""
    events = resource.events
    first_start, series_end = resource_envelope(events)
    return (
        connection,
        calendar_id,
        resource.provider_id,
        resource.etag,
        resource.raw,
        resource.raw_format,
        events[0].recurring if len(events) == 1 else any(e.recurring for e in events),
        stamp(first_start),
        stamp(series_end),
        now,
    )


def event_values(
    connection: str, calendar_id: str, resource: Resource, stamp: Stamp = _same
) -> list[tuple[Any, ...]]:
    """One row per component in `EVENT_COLUMNS` order; of two components with the same
    RECURRENCE-ID the last wins."""
    provider_id = resource.provider_id
    events = resource.events
    if len(events) == 1:  # most resources, and every Google or Graph one
        return [_event_row(connection, calendar_id, provider_id, events[0], stamp)]
    rows: dict[str, tuple[Any, ...]] = {}
    for event in events:
        recurrence_id = event.recurrence_id or ""
        if recurrence_id in rows:
            log.warning(
                "resource %s of calendar %s (%s) repeats the component %r; keeping the last",
                provider_id,
                calendar_id,
                connection,
                recurrence_id or "master",
            )
        rows[recurrence_id] = _event_row(connection, calendar_id, provider_id, event, stamp)
    return list(rows.values())


def _event_row(
    connection: str, calendar_id: str, provider_id: str, event: Event, stamp: Stamp
) -> tuple[Any, ...]:
    return (
        connection,
        calendar_id,
        provider_id,
        event.uid,
        event.recurrence_id or "",
        event.status,
        stamp(event.start),
        stamp(event_end(event)),
        event.timezone,
        event.all_day,
        event.summary,
        event.location,
        event.transparency,
        event.organizer,
        _json(event.attendees),
        event.rrule,
        _json(event.rdates),
        _json(event.exdates),
        stamp(event.series_end),
        stamp(event.last_modified),
        event.sequence,
    )


def resource_row(
    connection: str, calendar_id: str, resource: Resource, now: dt.datetime
) -> dict[str, Any]:
    """`resource_values` by column name."""
    return dict(
        zip(RESOURCE_COLUMNS, resource_values(connection, calendar_id, resource, now), strict=True)
    )


_ENCODE: Final = msgspec.json.Encoder().encode  # compact; ten times the standard library's


def _json(values: list[str]) -> str:
    return _ENCODE(values).decode() if values else "[]"


def event_rows(connection: str, calendar_id: str, resource: Resource) -> list[dict[str, Any]]:
    """`event_values` by column name."""
    return [
        dict(zip(EVENT_COLUMNS, values, strict=True))
        for values in event_values(connection, calendar_id, resource)
    ]


def json_list(text: str | None) -> list[str]:
    if not text:
        return []
    values = json.loads(text)
    return [str(v) for v in values] if isinstance(values, list) else []


def occurrence_from_row(
    row: Mapping[Any, Any],
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    recurrence_id: str | None = None,
) -> Occurrence:
    """A stored event row as an occurrence; an expanded instance passes its own times and id."""
    return Occurrence(
        uid=row["uid"],
        recurrence_id=recurrence_id if recurrence_id is not None else row["recurrence_id"] or None,
        calendar_id=row["calendar_id"],
        provider_id=row["provider_id"],
        start=start if start is not None else row["start_utc"],
        end=end if end is not None else row["end_utc"],
        all_day=bool(row["all_day"]),
        timezone=row["timezone"],
        summary=row["summary"],
        location=row["location"],
        status=row["status"],
        transparency=row["transparency"],
        organizer=row["organizer"],
        attendees=tuple(json_list(row["attendees"])),
    )
