"""Hand-written iCalendar objects for the store tests, and a small VCALENDAR -> Resource reader.

The store's tests must not wait for the providers' extractor, so this reads just enough of a
calendar object resource with icalendar to build the `Resource` the store receives: one `Event`
per VEVENT, times in UTC, the series end computed with dateutil for finite rules.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import icalendar
from dateutil.rrule import rrulestr

from calsync.model import Event, Resource

UTC = dt.UTC

BERLIN_TZ = """BEGIN:VTIMEZONE
TZID:Europe/Berlin
BEGIN:DAYLIGHT
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
TZNAME:CEST
DTSTART:19700329T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
END:DAYLIGHT
BEGIN:STANDARD
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
TZNAME:CET
DTSTART:19701025T030000
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
END:STANDARD
END:VTIMEZONE"""


def vcalendar(*components: str) -> str:
    """A VCALENDAR around the given component texts, with CRLF line ends."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//calsync tests//EN"]
    for component in components:
        lines.extend(component.strip().splitlines())
    lines.append("END:VCALENDAR")
    return "\r\n".join(lines) + "\r\n"


def vevent(uid: str, *props: str) -> str:
    return "\n".join(
        ["BEGIN:VEVENT", f"UID:{uid}", "DTSTAMP:20240101T000000Z", *props, "END:VEVENT"]
    )


def utc(value: dt.date | dt.datetime) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=UTC)


def _times(prop: Any) -> list[dt.date | dt.datetime]:
    values = prop if isinstance(prop, list) else [prop]
    return [d.dt for value in values for d in value.dts]


def _address(value: Any) -> str:
    text = str(value)
    return text[7:] if text.lower().startswith("mailto:") else text


def event_from(component: Any) -> Event:
    start_prop = component.get("DTSTART")
    start_value = start_prop.dt if start_prop is not None else None
    all_day = start_value is not None and not isinstance(start_value, dt.datetime)
    start = utc(start_value) if start_value is not None else None
    if component.get("DTEND") is not None:
        end: dt.datetime | None = utc(component["DTEND"].dt)
    elif component.get("DURATION") is not None and start is not None:
        end = start + component["DURATION"].dt
    else:
        end = None
    tzid = start_prop.params.get("TZID") if start_prop is not None else None
    if tzid is None and isinstance(start_value, dt.datetime) and start_value.tzinfo is not None:
        tzid = "UTC"
    rrule = component.get("RRULE")
    rule_text = rrule.to_ical().decode() if rrule is not None else None
    rdates = (
        [utc(d).isoformat() for d in _times(component["RDATE"])] if "RDATE" in component else []
    )
    exdates = (
        [utc(d).isoformat() for d in _times(component["EXDATE"])] if "EXDATE" in component else []
    )
    recurrence = component.get("RECURRENCE-ID")
    attendees = component.get("ATTENDEE", [])
    attendees = attendees if isinstance(attendees, list) else [attendees]
    event = Event(
        uid=str(component["UID"]),
        recurrence_id=utc(recurrence.dt).isoformat() if recurrence is not None else None,
        status=str(component.get("STATUS", "CONFIRMED")).lower(),  # type: ignore[arg-type]
        start=start,
        end=end,
        timezone=str(tzid) if tzid else None,
        all_day=all_day,
        summary=str(component.get("SUMMARY", "")),
        location=str(component.get("LOCATION", "")),
        transparency=(
            "transparent" if str(component.get("TRANSP", "")).upper() == "TRANSPARENT" else "opaque"
        ),
        organizer=_address(component["ORGANIZER"]) if "ORGANIZER" in component else None,
        attendees=[_address(a) for a in attendees],
        rrule=rule_text,
        rdates=rdates,
        exdates=exdates,
        sequence=int(component.get("SEQUENCE", 0)),
    )
    if event.recurring and start_value is not None and start is not None:
        event.series_end = _series_end(start_value, rule_text, rdates, (end or start) - start)
    return event


def _series_end(
    start: dt.date | dt.datetime, rule: str | None, rdates: list[str], duration: dt.timedelta
) -> dt.datetime | None:
    last = utc(start)
    if rule is not None:
        if "COUNT=" not in rule and "UNTIL=" not in rule:
            return None
        first = start
        if not isinstance(first, dt.datetime):
            first = dt.datetime(first.year, first.month, first.day, tzinfo=UTC)
        elif first.tzinfo is None:
            first = first.replace(tzinfo=UTC)
        last = max(last, utc(list(rrulestr(rule, dtstart=first))[-1]))
    for text in rdates:
        last = max(last, dt.datetime.fromisoformat(text))
    return last + duration


def resource(
    provider_id: str, raw: str, etag: str | None = "etag-1", *, format: str = "ical"
) -> Resource:
    """The Resource a CalDAV provider would hand the store for this calendar object text."""
    calendar = icalendar.Calendar.from_ical(raw)
    events = [event_from(c) for c in calendar.walk("VEVENT")]
    return Resource(provider_id, etag, raw, format, events)  # type: ignore[arg-type]


def single(
    provider_id: str,
    uid: str,
    start: dt.datetime,
    end: dt.datetime,
    summary: str = "",
    etag: str | None = "etag-1",
) -> Resource:
    """A one-off event in UTC."""
    fmt = "%Y%m%dT%H%M%SZ"
    raw = vcalendar(
        vevent(
            uid,
            f"DTSTART:{start.astimezone(UTC).strftime(fmt)}",
            f"DTEND:{end.astimezone(UTC).strftime(fmt)}",
            f"SUMMARY:{summary or uid}",
        )
    )
    return resource(provider_id, raw, etag)
