"""Recurring series turned into the occurrences that fall in a time range, with caps.

For iCalendar resources the raw original is authoritative: recurring-ical-events expands it,
honouring RRULE, RDATE, EXDATE, RECURRENCE-ID overrides (moved, changed, cancelled) and
RANGE=THISANDFUTURE, in the series' own time zone (so 09:00 Berlin stays 09:00 across DST).

The library's own range iteration (`after`) probes in steps of a day and is slow for long
ranges, and `between` materialises a whole range at once, which a minutely rule turns into
millions of instances. So each series is walked here in windows that start at one day and double
while they come back nearly empty; the walk stops as soon as the per-series cap is reached.
Within a window the instances are sorted; an instance new in a later window starts at or after
that window's start, so the walk yields a series' instances in start order, and the cap keeps
the earliest ones.

JSON resources (Google, Graph) keep no iCalendar text. Their masters are expanded from the
stored RRULE, RDATE and EXDATE with dateutil in the event's zone as the one resolver,
`calsync.timezones`, reads its name (UTC when it resolves to nothing, which is how the readers
read wall times in such a zone); instances that have an override row elsewhere in the calendar
(same UID, recurrence id = the instance start) are left to that row. This fallback also serves an
iCalendar resource whose raw text the library cannot expand. It knows nothing of
RANGE=THISANDFUTURE or per-instance durations.

Floating times (no zone) are read as UTC: the store has no user time zone to apply.
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
from collections.abc import Iterator, Mapping, Set
from typing import Any

import recurring_ical_events  # type: ignore[import-untyped]
from dateutil.rrule import rruleset

from calsync import timezones
from calsync.recurrence import dateutil_rule
from calsync.store.ical_zones import parse_zoned
from calsync.store.results import Occurrence
from calsync.store.rows import json_list, occurrence_from_row

log = logging.getLogger(__name__)

UTC = dt.UTC
LOWEST = dt.datetime(1000, 1, 1, tzinfo=UTC)
HIGHEST = dt.datetime(9000, 1, 1, tzinfo=UTC)
_FIRST_WINDOW = dt.timedelta(days=1)
_SPARSE = 32  # a window with fewer new instances than this doubles the next one


class Truncation:
    """Set by an expansion that stopped at its cap (or on an error) before the range ended."""

    __slots__ = ("cut",)

    def __init__(self) -> None:
        self.cut = False


def start_key(occurrence: Occurrence) -> dt.datetime:
    return occurrence.start if occurrence.start is not None else HIGHEST


def overlaps(
    start: dt.datetime | None,
    end: dt.datetime | None,
    range_start: dt.datetime | None,
    range_end: dt.datetime | None,
) -> bool:
    """Overlap with [range_start, range_end); an instant event counts when it lies inside."""
    if start is None:
        return range_start is None and range_end is None
    if range_end is not None and start >= range_end:
        return False
    if range_start is None:
        return True
    return (end if end is not None else start) > range_start or start >= range_start


def as_utc(value: dt.date | dt.datetime) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=UTC)


def parse_utc(text: str) -> dt.datetime | None:
    """A stored ISO 8601 instant (recurrence id, RDATE, EXDATE) as aware UTC; None if unreadable."""
    try:
        return as_utc(dt.datetime.fromisoformat(text))
    except ValueError:
        return None


def ical_occurrences(
    raw: str,
    *,
    calendar_id: str,
    provider_id: str,
    lower: dt.datetime,
    upper: dt.datetime,
    start: dt.datetime | None,
    end: dt.datetime | None,
    cap: int,
    include_cancelled: bool,
    truncation: Truncation,
) -> Iterator[Occurrence]:
    """Occurrences of every series in an iCalendar text overlapping [start, end), by start.

    `lower` and `upper` bound the walk (the range, or the resource's envelope where the range is
    open). The text is parsed now, so unusable text raises here (whatever icalendar or
    recurring-ical-events raise); the occurrences are produced lazily.
    """
    calendar = parse_zoned(raw)
    query = recurring_ical_events.of(calendar)
    streams = [
        _series_occurrences(
            series,
            calendar_id=calendar_id,
            provider_id=provider_id,
            lower=lower,
            upper=upper,
            start=start,
            end=end,
            cap=cap,
            include_cancelled=include_cancelled,
            truncation=truncation,
        )
        for series in query.series
    ]
    return heapq.merge(*streams, key=start_key)


def _series_occurrences(
    series: Any,
    *,
    calendar_id: str,
    provider_id: str,
    lower: dt.datetime,
    upper: dt.datetime,
    start: dt.datetime | None,
    end: dt.datetime | None,
    cap: int,
    include_cancelled: bool,
    truncation: Truncation,
) -> Iterator[Occurrence]:
    count = 0
    for occurrence in _walk(series, lower, upper, provider_id, truncation):
        found = _from_component(
            occurrence.as_component(False), occurrence, calendar_id, provider_id
        )
        if found.status == "cancelled" and not include_cancelled:
            continue
        if not overlaps(found.start, found.end, start, end):
            continue
        if count >= cap:
            truncation.cut = True
            return
        count += 1
        yield found


def _walk(
    series: Any, lower: dt.datetime, upper: dt.datetime, provider_id: str, truncation: Truncation
) -> Iterator[Any]:
    span = _FIRST_WINDOW
    window_start = lower
    seen: set[Any] = set()
    while window_start < upper:
        window_end = upper if upper - window_start <= span else window_start + span
        try:
            batch = [o for o in series.between(window_start, window_end) if o.id not in seen]
        except Exception:
            log.warning("cannot expand a series of %s past %s", provider_id, window_start)
            truncation.cut = True
            return
        seen.update(o.id for o in batch)
        batch.sort(key=lambda o: as_utc(o.start))
        yield from batch
        if len(batch) < _SPARSE:
            span *= 2
        window_start = window_end


def _address(value: Any) -> str:
    text = str(value).strip()
    return text[7:] if text[:7].lower() == "mailto:" else text


def _zone_name(component: Any, start: dt.date | dt.datetime) -> str | None:
    prop = component.get("DTSTART")
    tzid = prop.params.get("TZID") if prop is not None else None
    if tzid:
        return timezones.zone_name(str(tzid))
    if isinstance(start, dt.datetime) and start.tzinfo is not None:
        return str(getattr(start.tzinfo, "key", None) or "UTC")
    return None


def _from_component(
    component: Any, occurrence: Any, calendar_id: str, provider_id: str
) -> Occurrence:
    start, end = occurrence.start, occurrence.end
    recurrence = component.get("RECURRENCE-ID")
    status = str(component.get("STATUS", "CONFIRMED")).lower()
    attendees = component.get("ATTENDEE", [])
    if not isinstance(attendees, list):
        attendees = [attendees]
    organizer = component.get("ORGANIZER")
    return Occurrence(
        uid=str(component.get("UID", "")),
        recurrence_id=as_utc(recurrence.dt).isoformat() if recurrence is not None else None,
        calendar_id=calendar_id,
        provider_id=provider_id,
        start=as_utc(start),
        end=as_utc(end) if end is not None else as_utc(start),
        all_day=not isinstance(start, dt.datetime),
        timezone=_zone_name(component, start),
        summary=str(component.get("SUMMARY", "")),
        location=str(component.get("LOCATION", "")),
        status=status if status in ("confirmed", "tentative", "cancelled") else "confirmed",
        transparency=(
            "transparent"
            if str(component.get("TRANSP", "OPAQUE")).upper() == "TRANSPARENT"
            else "opaque"
        ),
        organizer=_address(organizer) if organizer is not None else None,
        attendees=tuple(_address(a) for a in attendees),
    )


def master_occurrences(
    master: Mapping[Any, Any],
    *,
    overridden: Set[dt.datetime],
    start: dt.datetime | None,
    end: dt.datetime | None,
    cap: int,
    include_cancelled: bool,
    truncation: Truncation,
) -> Iterator[Occurrence]:
    """The dateutil fallback: instances of a stored master row overlapping [start, end).

    `overridden` holds the original starts (UTC) of instances that an override row replaces.
    The rule is parsed now (a bad RRULE raises ValueError here); instances come lazily.
    """
    first: dt.datetime | None = master["start_utc"]
    if first is None or (master["status"] == "cancelled" and not include_cancelled):
        return iter(())
    duration = (master["end_utc"] or first) - first
    zone = _zone(master["timezone"]) if not master["all_day"] else UTC

    def local(value: dt.datetime) -> dt.datetime:
        return value.astimezone(zone).replace(tzinfo=None)

    rules = rruleset()
    rules.rdate(local(first))
    if master["rrule"]:
        rules.rrule(dateutil_rule(master["rrule"], local(first), zone))
    for text in json_list(master["rdates"]):
        instant = parse_utc(text)
        if instant is not None:
            rules.rdate(local(instant))
    for text in json_list(master["exdates"]):
        instant = parse_utc(text)
        if instant is not None:
            rules.exdate(local(instant))
    instances = rules.xafter(local(start - duration), inc=True) if start is not None else rules

    def generate() -> Iterator[Occurrence]:
        count = 0
        for naive in instances:
            begin = naive.replace(tzinfo=zone).astimezone(UTC)
            if end is not None and begin >= end:
                return
            finish = begin + duration
            if begin in overridden or not overlaps(begin, finish, start, end):
                continue
            if count >= cap:
                truncation.cut = True
                return
            count += 1
            yield occurrence_from_row(
                master, start=begin, end=finish, recurrence_id=begin.isoformat()
            )

    return generate()


def _zone(name: str | None) -> dt.tzinfo:
    """The zone a stored name stands for (`calsync.timezones`); UTC when unknown or absent."""
    zone = timezones.resolve(name) if name else None
    return zone if zone is not None else UTC
