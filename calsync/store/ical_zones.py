"""Stored iCalendar text parsed for expansion, its TZIDs read the one documented way.

icalendar resolves TZIDs on its own: it builds a zone from every VTIMEZONE it parses and keeps
it in a process-wide cache, so one object's definition of "My Zone" served every later object
naming "My Zone" without one (which the extractor reads as UTC), the cache grew with every
hostile definition, and definitions the extractor refuses as unusable (transition rules other
than yearly ones) were used anyway. The expansion then disagreed with what the extractor stored.

`parse_zoned` cuts the VTIMEZONE blocks out of the text before icalendar sees it (so it caches
nothing), then puts on every zoned date-time of the object (DTSTART, DTEND, DUE, RECURRENCE-ID,
RDATE, EXDATE) the zone `calsync.timezones` gives its TZID, scoped to this object: an IANA,
Windows or vendor-path name, else the object's own usable VTIMEZONE, else UTC under the name as
written (docs/decisions/0012-one-path-for-zones-recurrence-retry-after.md). It also refuses
(ValueError) a rule whose INTERVAL is no positive integer, which the extractor refuses too: one
stored before that would repeat its first instance forever.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

import icalendar

from calsync.recurrence import check_interval
from calsync.timezones import ObjectZones, split_vtimezones

__all__ = ["parse_zoned"]

_ZONED: Final = ("DTSTART", "DTEND", "DUE", "RECURRENCE-ID", "RDATE", "EXDATE")


def _unfolded_lines(raw: str) -> list[str]:
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\n ", "").replace("\n\t", "").split("\n")


def parse_zoned(raw: str) -> icalendar.Calendar:
    """The object as icalendar reads it, its zoned times in the zones the extractor used.

    Raises what icalendar raises on text it cannot read, ValueError on INTERVAL=0.
    """
    lines, blocks = split_vtimezones(_unfolded_lines(raw))
    calendar = icalendar.Calendar.from_ical("\r\n".join(lines))
    zones = ObjectZones(blocks)
    named: dict[str, dt.tzinfo] = {}

    def zone_of(tzid: str) -> dt.tzinfo:
        zone = zones.get(tzid)
        if zone is not None:
            return zone
        if tzid not in named:  # unknown: UTC, under the name as written
            named[tzid] = dt.timezone(dt.timedelta(0), tzid)
        return named[tzid]

    for component in calendar.walk():
        rules = component.get("RRULE")
        for rule in rules if isinstance(rules, list) else [rules] if rules is not None else []:
            check_interval(rule.to_ical().decode())
        for name in _ZONED:
            props = component.get(name)
            if props is None:
                continue
            for prop in props if isinstance(props, list) else [props]:
                tzid = prop.params.get("TZID")
                if tzid:
                    _rezone(prop, zone_of(str(tzid)))
    return calendar


def _rezone(prop: Any, zone: dt.tzinfo) -> None:
    for value in getattr(prop, "dts", None) or [prop]:
        moment = value.dt
        if isinstance(moment, tuple):  # a PERIOD: (start, end or duration)
            value.dt = tuple(_local(part, zone) for part in moment)
        else:
            value.dt = _local(moment, zone)


def _local(value: Any, zone: dt.tzinfo) -> Any:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None).replace(tzinfo=zone)
    return value
