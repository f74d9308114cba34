"""Google Calendar event resources (JSON) turned into calsync's `Resource` / `Event`.

Pure functions, no I/O. One Google event is one `Resource` holding one `Event`: a single event,
a recurring master (with `recurrence` lines), or an exception of a series (an instance changed
or cancelled on its own, carrying `recurringEventId` and `originalStartTime`). An exception is
an override in the store's terms: the master's UID (`iCalUID`, which Google gives every event of
a series) and `recurrence_id` = the original start in UTC, so a range query lets it replace
that instance of the master.

Times:
- `{"date": "2025-03-01"}` is all-day: midnight UTC of the date, `all_day=True`; Google's end
  date is exclusive, which is the store's convention too.
- `{"dateTime": "2025-03-01T09:00:00+01:00", "timeZone": "Europe/Berlin"}`: the instant from
  the offset. A `dateTime` without an offset is wall time in `timeZone`. The event's zone is
  its `timeZone`, else the calendar's (Google reads a missing `timeZone` that way, and a
  recurring series expands in it); the store expands masters on that zone's wall clock. Zone
  names go through the one resolver, `calsync.timezones` (reported as their IANA key); one that
  resolves to nothing is kept as written and its wall times are read as UTC (decision 0012).
- Recurrence lines are RFC 5545: `RRULE:` (the first one is kept; a second makes the series
  open-ended, since the model holds one rule), `RDATE` / `EXDATE` with `TZID=`, UTC (`Z`),
  floating (read in the event's zone) or `VALUE=DATE` values. A date EXDATE on a timed series
  means the instance on that date. `EXRULE` (deprecated, rare) is ignored.
- `series_end` is computed by the iCalendar extractor's own routine (UNTIL, or COUNT by
  arithmetic / bounded dateutil), imported from `calsync.providers.ical` rather than copied.

Items arrive as `GoogleEvent` structs, decoded straight from the page's JSON with only the
members read here (`calsync.providers.jsonpage`); each member holds whatever JSON value was sent
and the functions below check its type, as they would a dict's. A plain dict (a single
`events.get`, a test) is turned into the struct first.

An item that cannot be read raises `MalformedEvent`; the provider skips and reports it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from calsync import timezones
from calsync.model import Event, EventStatus, Resource
from calsync.providers.base import ProviderError
from calsync.providers.ical import (
    MalformedCalendarData,
    _content_line,
    _params,
    _series_end,
    _stamp,
    _When,
)
from calsync.recurrence import check_interval

UTC: Final = dt.UTC
_STATUSES: Final[dict[str, EventStatus]] = {
    "confirmed": "confirmed",
    "tentative": "tentative",
    "cancelled": "cancelled",
}
_FREQS: Final = frozenset(
    {"SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY"}
)
_DAY: Final = dt.timedelta(days=1)
_NOTHING: Final = dt.timedelta(0)
MAX_RECURRENCE_LINES: Final = 1000
MAX_LINE: Final = 8192


class MalformedEvent(ProviderError):
    """An event resource that cannot be read; the engine skips and reports it."""

    retryable = False
    reason = "MalformedEvent"


class GoogleEvent(msgspec.Struct, kw_only=True):
    """The members of an event resource the conversion reads, each as sent (any JSON value, or
    None when absent or null); the other members are skipped when a page is decoded."""

    id: Any = None
    etag: Any = None
    status: Any = None
    ical_uid: Any = msgspec.field(default=None, name="iCalUID")
    recurring_event_id: Any = msgspec.field(default=None, name="recurringEventId")
    original_start_time: Any = msgspec.field(default=None, name="originalStartTime")
    start: Any = None
    end: Any = None
    summary: Any = None
    location: Any = None
    transparency: Any = None
    organizer: Any = None
    attendees: Any = None
    sequence: Any = None
    updated: Any = None
    recurrence: Any = None


def as_event(item: object) -> GoogleEvent:
    """An item as a `GoogleEvent`: a struct as it is, a dict converted; anything else is not an
    event resource."""
    if type(item) is GoogleEvent:
        return item
    if not isinstance(item, Mapping):
        raise MalformedEvent("an item is not an object")
    try:
        return msgspec.convert(dict(item), GoogleEvent)
    except msgspec.ValidationError as exc:
        raise MalformedEvent(f"an item is not an event resource: {exc}") from None


def raw_text(item: Mapping[str, Any]) -> str:
    """JSON text for an item that came without its own (compact, non-ASCII kept as is)."""
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"))


class _Time:
    """A start / end / originalStartTime as read: the UTC instant, its zone, its wall time."""

    __slots__ = ("all_day", "utc", "zone", "zone_name")

    def __init__(self, value: Any, zone_name: str | None, field: str) -> None:
        if not isinstance(value, dict):
            raise MalformedEvent(f"{field} is not an object")
        stamp = value.get("dateTime")
        own = value.get("timeZone")
        if type(own) is str and own:  # else Google means the calendar's zone
            zone_name = own
        zone = timezones.resolve(zone_name) if zone_name else None
        if zone is not None:
            zone_name = zone.key
        if stamp is None:
            date_text = value.get("date")
            if type(date_text) is not str:
                raise MalformedEvent(f"{field} has neither date nor dateTime")
            try:
                day = dt.date.fromisoformat(date_text)
            except ValueError:
                raise MalformedEvent(f"{field}.date is not a date: {date_text[:40]!r}") from None
            self.all_day = True
            self.utc = dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
            self.zone = None
            self.zone_name = None
            return
        if type(stamp) is not str:
            raise MalformedEvent(f"{field}.dateTime is not a string")
        try:
            parsed = dt.datetime.fromisoformat(stamp)
        except ValueError:
            raise MalformedEvent(f"{field}.dateTime is not RFC 3339: {stamp[:40]!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone or UTC)
        self.all_day = False
        self.utc = parsed.astimezone(UTC)
        self.zone = zone
        self.zone_name = zone_name or "UTC"  # unknown: as written, its times read as UTC

    @property
    def local(self) -> dt.datetime:
        """Naive wall-clock time in the value's zone (midnight for a date)."""
        if self.zone is None:
            return self.utc.replace(tzinfo=None)
        return self.utc.astimezone(self.zone).replace(tzinfo=None)

    def when(self) -> _When:
        return _When(self.local, self.zone, self.zone_name, self.all_day)


def _time_list(value: str, params: str, start: _Time) -> list[_When]:
    """RDATE / EXDATE values as `_When`s on the series' wall clock."""
    tzid = _params(params).get("TZID") if params else None
    own = timezones.resolve(tzid) if tzid else None  # unknown: read as UTC, as everywhere
    out: list[_When] = []
    for item in value.split(","):
        text = item.strip().partition("/")[0]  # a PERIOD's start
        if not text:
            continue
        try:
            local, is_utc, is_date = _stamp(text)
        except MalformedCalendarData as exc:
            raise MalformedEvent(str(exc)) from None
        if is_date:
            if start.all_day:
                out.append(_When(local, None, None, True))
            else:  # the instance on that date, at the series' time of day
                wall = dt.datetime.combine(local.date(), start.local.time())
                out.append(_When(wall, start.zone, start.zone_name, False))
        elif is_utc:
            out.append(_When(local, None, "UTC", False))
        elif tzid:
            out.append(_When(local, own, timezones.zone_name(tzid), False))
        else:
            out.append(_When(local, start.zone, start.zone_name, False))
    return out


def _recurrence(lines: Any, event: Event, start: _Time) -> None:
    if not isinstance(lines, list) or len(lines) > MAX_RECURRENCE_LINES:
        raise MalformedEvent("recurrence is not a list of lines")
    rdates: list[_When] = []
    rules = 0
    for line in lines:
        if not isinstance(line, str) or len(line) > MAX_LINE:
            raise MalformedEvent("a recurrence line is not a string of sensible length")
        try:
            name, params, value = _content_line(line.strip())
        except MalformedCalendarData as exc:
            raise MalformedEvent(str(exc)) from None
        if name == "RRULE":
            rules += 1
            parts = {
                key.strip().upper(): val
                for key, _, val in (p.partition("=") for p in value.split(";"))
            }
            if parts.get("FREQ", "").strip().upper() not in _FREQS:
                raise MalformedEvent(f"RRULE without a known FREQ: {value[:60]!r}")
            try:
                check_interval(value)  # INTERVAL=0 would make every expansion of it hang
            except ValueError as exc:
                raise MalformedEvent(str(exc)) from None
            if event.rrule is None:
                event.rrule = value.strip()
        elif name == "RDATE":
            found = _time_list(value, params, start)
            rdates += found
            event.rdates += [w.utc.isoformat() for w in found]
        elif name == "EXDATE":
            event.exdates += [w.utc.isoformat() for w in _time_list(value, params, start)]
        elif name != "EXRULE":
            raise MalformedEvent(f"unknown recurrence line {name[:20]!r}")
    if event.rrule or rdates:
        try:
            event.series_end = None if rules > 1 else _series_end(event, start.when(), rdates)
        except (MalformedCalendarData, ValueError, OverflowError) as exc:
            raise MalformedEvent(f"unusable recurrence: {exc}") from None


def _text(value: Any) -> str:
    return value if type(value) is str else ""


def event_from_json(
    item: GoogleEvent | Mapping[str, Any], *, uid: str, default_zone: str | None = None
) -> Event:
    """The Event of one live (not cancelled) event resource."""
    item = as_event(item)
    start = _Time(item.start, default_zone, "start")
    end_value = item.end
    if end_value is not None:
        end = _Time(end_value, default_zone, "end")
        if end.all_day != start.all_day:
            raise MalformedEvent("start and end are not both dates or both date-times")
        if end.utc < start.utc:
            raise MalformedEvent("the event ends before it starts")
        finish = end.utc
    else:  # RFC 5545: a lone start lasts a day (date) or no time (date-time)
        finish = start.utc + (_DAY if start.all_day else _NOTHING)
    status = item.status
    organizer = item.organizer
    attendees = item.attendees
    sequence = item.sequence
    event = Event(
        uid=uid,
        status=_STATUSES.get(status, "confirmed") if type(status) is str else "confirmed",
        start=start.utc,
        end=finish,
        timezone=start.zone_name,
        all_day=start.all_day,
        summary=_text(item.summary),
        location=_text(item.location),
        transparency="transparent" if item.transparency == "transparent" else "opaque",
        organizer=(
            organizer["email"]
            if type(organizer) is dict and type(organizer.get("email")) is str
            else None
        ),
        attendees=(
            [a["email"] for a in attendees if type(a) is dict and type(a.get("email")) is str]
            if type(attendees) is list
            else []
        ),
        sequence=sequence if type(sequence) is int else 0,
        last_modified=_instant(item.updated),
    )
    if item.recurring_event_id is not None:
        original = _Time(item.original_start_time, default_zone, "originalStartTime")
        event.recurrence_id = original.utc.isoformat()
    else:
        lines = item.recurrence
        if lines:
            _recurrence(lines, event, start)
    return event


def _instant(value: Any) -> dt.datetime | None:
    if type(value) is not str:
        return None
    try:
        return dt.datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return None


def cancelled_instance(
    item: GoogleEvent | Mapping[str, Any], *, uid: str, default_zone: str | None = None
) -> Event:
    """The override of a cancelled instance: the master's UID, its original start."""
    original = _Time(as_event(item).original_start_time, default_zone, "originalStartTime")
    return Event(
        uid=uid,
        recurrence_id=original.utc.isoformat(),
        status="cancelled",
        start=original.utc,
        end=original.utc,
        timezone=original.zone_name,
        all_day=original.all_day,
    )


def resource_from_json(
    item: GoogleEvent | Mapping[str, Any],
    *,
    uid: str | None = None,
    default_zone: str | None = None,
    raw: str | None = None,
) -> Resource:
    """One event resource as a Resource; a cancelled instance becomes a cancelled override.

    `uid` stands in when the item has no `iCalUID` (cancelled instances carry only their id,
    `recurringEventId` and `originalStartTime`; the provider finds the master's). `raw` is the
    item's text as received (`calsync.providers.jsonpage`); without it the item is serialised
    (a dict only: a struct holds just the members read here).
    """
    event_item = as_event(item)
    event_id = event_item.id
    if not isinstance(event_id, str) or not event_id:
        raise MalformedEvent("an item has no id")
    own = event_item.ical_uid
    chosen = own if isinstance(own, str) and own else uid
    if chosen is None:
        raise MalformedEvent(f"{event_id}: no iCalUID")
    etag = event_item.etag
    try:
        if event_item.status == "cancelled":
            if event_item.recurring_event_id is None:
                raise MalformedEvent("a cancelled event is a deletion, not a resource")
            event = cancelled_instance(event_item, uid=chosen, default_zone=default_zone)
        else:
            event = event_from_json(event_item, uid=chosen, default_zone=default_zone)
    except MalformedEvent as exc:
        raise MalformedEvent(f"{event_id}: {exc}") from None
    if raw is not None:
        text = raw
    elif isinstance(item, Mapping):
        text = raw_text(item)
    else:
        raise ValueError("a decoded GoogleEvent needs its raw text")
    return Resource(event_id, etag if isinstance(etag, str) else None, text, "json", [event])
