"""Graph event JSON (as a calendar-view delta returns it) to the store's `Resource` and `Event`.

How a series is stored. A calendar view never returns the series master, only what falls in the
window: single instances, occurrences and exceptions. So every instance is its own resource
(provider id = the instance's Graph id, which Graph keeps stable for an occurrence even when it
becomes an exception) holding one non-recurring event. That makes the store's range query
exact without expanding anything on our side: a moved occurrence is stored where it now is, a
deleted occurrence arrives as `@removed` and disappears, an occurrence cancelled from the
attendee's side arrives with `isCancelled` and is stored with status "cancelled" (left out of
range queries unless asked for).

What identifies an instance to the store:
- `uid`: for a single event its `iCalUId`; for an occurrence or exception the series' UID.
  Graph gives every occurrence its own `iCalUId` (Outlook's GlobalObjectId with the
  occurrence's date in bytes 16-19); with those bytes zeroed it is the series' id (Outlook calls
  that the "clean" GlobalObjectId), the same for every instance of the series. An `iCalUId` in
  another format falls back to `seriesMasterId`, which is also the same for the whole series.
- `recurrence_id`: the occurrence's original start (`originalStart`, UTC) in the ISO 8601 form
  the CalDAV extractor uses; for all-day series midnight UTC of the original date.
So the instances of one series share a UID but differ by recurrence id, and the store's
duplicate check, which groups by (uid, recurrence id), does not report a normal series.

Times: the provider asks for `Prefer: outlook.timezone="UTC"`, but zones named otherwise
(an IANA name, or a Windows name such as "Pacific Standard Time") are converted too, by the one
resolver, `calsync.timezones`; a wall time in a zone it cannot resolve is read as UTC (decision
0012). An all-day event keeps its dates: midnight UTC of the first day to midnight UTC after the
last. `timezone` is the event's own zone (`originalStartTimeZone`) as an IANA name when it maps
to one, otherwise as Graph wrote it; None for all-day events, as the CalDAV extractor does for
dates.

Anything unusable raises `MalformedEvent`; the provider skips and reports that item.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Final

from calsync import timezones
from calsync.model import Event, EventStatus, Resource
from calsync.providers.base import ProviderError

UTC: Final = dt.UTC
GLOBAL_OBJECT_CLASS: Final = "040000008200E00074C5B7101A82E008"
INSTANCE_TYPES: Final = ("singleInstance", "occurrence", "exception")


class MalformedEvent(ProviderError):
    """A Graph event that cannot be read; the engine skips and reports it."""

    retryable = False
    reason = "MalformedEvent"


def iana_zone(name: str | None) -> str | None:
    """The IANA name for a Graph zone name (IANA or Windows), or None when unknown."""
    return timezones.zone_key(name)


_fromisoformat: Final = dt.datetime.fromisoformat


def _local(text: str) -> dt.datetime:
    """Graph's dateTime ("2025-01-06T09:00:00.0000000"; up to 7 fractional digits)."""
    size = len(text)
    if size == 27 and text[19] == ".":  # the shape Graph always sends: one fast path
        return dt.datetime.fromisoformat(text[:26])
    if size == 28 and text[19] == "." and text[27] in "Zz":
        return dt.datetime.fromisoformat(text[:26]).replace(tzinfo=UTC)
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    head, dot, tail = value.partition(".")
    if dot:
        digits = tail
        rest = ""
        for index, char in enumerate(tail):
            if not char.isdigit():
                digits, rest = tail[:index], tail[index:]
                break
        value = f"{head}.{(digits + '000000')[:6]}{rest}"
    return dt.datetime.fromisoformat(value)


def parse_when(value: Any, what: str) -> tuple[dt.datetime, dt.datetime]:
    """A dateTimeTimeZone as (aware UTC instant, the wall-clock time as written)."""
    try:
        text = value["dateTime"]
        zone_name = value.get("timeZone")
    except (TypeError, KeyError, AttributeError):
        raise MalformedEvent(f"{what} has no dateTime") from None
    if not isinstance(text, str):
        raise MalformedEvent(f"{what} has no dateTime")
    try:
        local = _local(text)
    except ValueError:
        raise MalformedEvent(f"{what}.dateTime is not a date-time: {text!r}") from None
    if local.tzinfo is not None:
        return local.astimezone(UTC), local
    if zone_name == "UTC":  # what the provider asks for: no conversion
        return local.replace(tzinfo=UTC), local
    # An unknown zone is read as UTC, as every reader does (calsync.timezones).
    zone = timezones.resolve(zone_name) if isinstance(zone_name, str) and zone_name else None
    return local.replace(tzinfo=zone or UTC).astimezone(UTC), local


def _timestamp(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    if len(value) == 28 and value[27] == "Z" and value[19] == ".":
        try:
            return _fromisoformat(value[:26]).replace(tzinfo=UTC)
        except ValueError:
            return None
    try:
        parsed = _local(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=UTC)


def series_uid(item: Mapping[str, Any]) -> str:
    """The UID all instances of the item's series share (see the module docstring)."""
    ical_uid = item.get("iCalUId")
    if (
        isinstance(ical_uid, str)
        and len(ical_uid) >= 40
        and ical_uid[:32].upper() == GLOBAL_OBJECT_CLASS
    ):
        return ical_uid[:32] + "00000000" + ical_uid[40:]
    master = item.get("seriesMasterId")
    if isinstance(master, str) and master:
        return master
    raise MalformedEvent("an occurrence without seriesMasterId")


def _address(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    email = value.get("emailAddress")
    if not isinstance(email, dict):
        return None
    address = email.get("address")
    return address.strip() if isinstance(address, str) and address.strip() else None


def to_event(item: Mapping[str, Any]) -> Event:
    """The one `Event` a calendar-view item stands for."""
    kind = item.get("type", "singleInstance")
    if kind not in INSTANCE_TYPES:
        raise MalformedEvent(f"unexpected event type {kind!r} in a calendar view")
    all_day = item.get("isAllDay") is True
    start, start_local = parse_when(item.get("start"), "start")
    end, end_local = parse_when(item.get("end"), "end")
    if all_day:
        start, end = _midnight(start_local.date()), _midnight(end_local.date())
        if end <= start:
            end = start + dt.timedelta(days=1)
    elif end < start:
        raise MalformedEvent("the event ends before it starts")
    original_zone = item.get("originalStartTimeZone")
    timezone = None
    if not all_day:
        if isinstance(original_zone, str) and original_zone:
            timezone = timezones.zone_name(original_zone)
        else:
            zone = (item.get("start") or {}).get("timeZone")
            timezone = timezones.zone_name(zone) if isinstance(zone, str) and zone else None
    if kind == "singleInstance":
        ical_uid = item.get("iCalUId")
        uid = ical_uid if isinstance(ical_uid, str) and ical_uid else str(item["id"])
        recurrence_id = None
    else:
        uid = series_uid(item)
        original = _timestamp(item.get("originalStart"))
        if original is None:
            if kind == "exception":
                raise MalformedEvent("an exception without originalStart")
            original = start
        if all_day:
            zone = timezones.resolve(original_zone) if isinstance(original_zone, str) else None
            original = _midnight(original.astimezone(zone or UTC).date())
        recurrence_id = original.isoformat()
    subject = item.get("subject")
    location = item.get("location")
    place = location.get("displayName") if isinstance(location, dict) else None
    status: EventStatus = "cancelled" if item.get("isCancelled") is True else "confirmed"
    listed = item.get("attendees")
    attendees = [a for a in map(_address, listed) if a] if isinstance(listed, list) else []
    return Event(
        uid=uid,
        recurrence_id=recurrence_id,
        status=status,
        start=start,
        end=end,
        timezone=timezone,
        all_day=all_day,
        summary=subject if isinstance(subject, str) else "",
        location=place if isinstance(place, str) else "",
        transparency="transparent" if item.get("showAs") == "free" else "opaque",
        organizer=_address(item.get("organizer")),
        attendees=attendees,
        last_modified=_timestamp(item.get("lastModifiedDateTime")),
    )


def to_resource(item: Mapping[str, Any], raw: str | None = None) -> Resource:
    """A calendar-view item as the store's resource; `raw` defaults to the item as JSON."""
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise MalformedEvent("an event without id")
    etag = item.get("@odata.etag") or item.get("changeKey")
    return Resource(
        provider_id=item_id,
        etag=etag if isinstance(etag, str) else None,
        raw=raw if raw is not None else json.dumps(item, separators=(",", ":"), ensure_ascii=False),
        raw_format="json",
        events=[to_event(item)],
    )
