"""Fast extraction of the `Event` fields from iCalendar text, for the CalDAV hot path.

A full iCalendar parse builds an object for every property and parameter of every component;
an initial sync of a large calendar spends most of its time there while the store needs a
dozen fields per VEVENT (the raw text is kept verbatim anyway). This module unfolds the lines,
walks BEGIN/END, and reads only the properties `calsync.model.Event` carries.

Time zones: every TZID goes through the one resolver, `calsync.timezones.resolve` (IANA keys,
UTC spellings, Outlook's Windows names such as "W. Europe Standard Time", libical's
"/freeassociation.sourceforge.net/Europe/Berlin"); an IANA zone found there wins over the
embedded VTIMEZONE, as every mainstream client does. Failing that, the object's own VTIMEZONE
definition is used (`calsync.timezones.defined_zone`, scoped to this object: one object's
definition never leaks into another's). A TZID that resolves to nothing is read as UTC and
reported as written (docs/decisions/0012).

Conventions of the extracted values:
- start/end/last_modified/series_end are aware UTC datetimes; a DATE becomes midnight UTC and
  sets `all_day`; floating times are read as UTC with `timezone=None`.
- recurrence_id, rdates, exdates are `datetime.isoformat()` strings of UTC datetimes
  ("2025-03-01T09:00:00+00:00").
- `timezone` is the IANA name when one is known, else the TZID as written (a VTIMEZONE-defined
  or unknown zone), "UTC" for UTC times, None for floating times and dates.
- organizer/attendees are the calendar addresses without a leading "mailto:".
- A missing DTEND is DTSTART + DURATION, else one day for dates and zero for date-times
  (RFC 5545 3.6.1); DURATION weeks and days are nominal (wall clock), hours and less exact.
- `series_end` is the end of the last occurrence: the start `calsync.recurrence.last_start`
  gives (UNTIL as a bound, read as the store's expansion reads it; COUNT exactly, by
  arithmetic for the plain rules, else with dateutil when that is bounded) plus the event's
  duration, extended by later RDATEs; None (open-ended, so never excluded from a window) when
  unbounded or too costly to know.

Hostile input (see PROTOCOLS.md) ends in MalformedCalendarData, never in a hang or an
unbounded allocation: object size, nesting depth, component count and recurrence expansion are
capped.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

from calsync.model import Event, EventStatus, Resource
from calsync.providers.base import ProviderError
from calsync.recurrence import check_interval, last_start
from calsync.timezones import ObjectZones, resolve, split_vtimezones

__all__ = [
    "MAX_COMPONENTS",
    "MAX_DEPTH",
    "MAX_OBJECT_SIZE",
    "MalformedCalendarData",
    "extract_events",
    "parse_resource",
]

MAX_OBJECT_SIZE: Final = 1 << 20  # characters of one calendar object resource
MAX_DEPTH: Final = 8  # VCALENDAR > VTIMEZONE > STANDARD is 3; real data never nears 8
MAX_COMPONENTS: Final = 10_000  # a master with thousands of overrides is still plausible

UTC: Final = dt.UTC


class MalformedCalendarData(ProviderError):
    """A calendar object that cannot be read; the engine skips and reports that resource."""

    retryable = False
    reason = "MalformedCalendarData"


def parse_resource(
    provider_id: str, etag: str | None, raw: str | bytes, *, max_size: int = MAX_OBJECT_SIZE
) -> Resource:
    """One calendar object resource: its VEVENTs extracted, the text kept verbatim.

    Bytes are decoded as UTF-8 with replacement characters, so a stray Latin-1 byte costs one
    character rather than the whole resource.
    """
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        events = extract_events(text, max_size=max_size)
    except MalformedCalendarData as exc:
        raise MalformedCalendarData(f"{provider_id}: {exc}") from None
    return Resource(provider_id, etag, text, "ical", events)


# --- line level -------------------------------------------------------------------------------

# Properties read from a VEVENT; everything else is skipped before its parameters are parsed.
_SINGLE: Final = frozenset(
    {
        "UID",
        "RECURRENCE-ID",
        "STATUS",
        "DTSTART",
        "DTEND",
        "DURATION",
        "SUMMARY",
        "LOCATION",
        "TRANSP",
        "ORGANIZER",
        "RRULE",
        "LAST-MODIFIED",
        "SEQUENCE",
    }
)
_MULTI: Final = frozenset({"ATTENDEE", "RDATE", "EXDATE"})
_WANTED: Final = _SINGLE | _MULTI
_WANTED_INITIALS: Final = frozenset(name[0] for name in _WANTED) | frozenset(
    name[0].lower() for name in _WANTED
)
_TEXT_ESCAPE: Final = re.compile(r"\\(.)", re.DOTALL)
_DURATION: Final = re.compile(
    r"([+-])?P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", re.ASCII
)
_STATUSES: Final[dict[str, EventStatus]] = {
    "CONFIRMED": "confirmed",
    "TENTATIVE": "tentative",
    "CANCELLED": "cancelled",
}

# (parameters, value) as written; parameters unparsed until a property needs them.
_Prop = tuple[str, str]


def _unfold(raw: str) -> str:
    """The text with LF line ends and folded lines joined."""
    text = raw
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\n " in text or "\n\t" in text:
        text = text.replace("\n ", "").replace("\n\t", "")
    return text


def _without_vtimezones(text: str) -> tuple[str, int]:
    """The text minus its VTIMEZONE blocks, and how many were cut.

    The walk reads nothing in them (time zones come from zoneinfo first), and they are a third
    of a typical object's lines; `_Zones` parses them from the full text when it must.
    """
    pieces: list[str] = []
    cut = 0
    position = 0
    while True:
        begin = text.find("\nBEGIN:VTIMEZONE", position)
        if begin < 0:
            break
        end = text.find("\nEND:VTIMEZONE", begin)
        if end < 0:
            break  # unbalanced: let the walk report it
        after = text.find("\n", end + 1)
        pieces.append(text[position : begin + 1])
        cut += 1
        position = len(text) if after < 0 else after + 1
    if not cut:
        return text, 0
    pieces.append(text[position:])
    return "".join(pieces), cut


def _split_quoted(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    quoted = False
    begin = 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[begin:i])
            begin = i + 1
    parts.append(text[begin:])
    return parts


def _content_line(line: str) -> tuple[str, str, str]:
    """NAME;PARAMS:VALUE -> (upper-case name, params, value); a colon may hide in quotes."""
    colon = line.find(":")
    if colon < 0:
        raise MalformedCalendarData(f"not a content line: {line[:60]!r}")
    semi = line.find(";", 0, colon)
    if semi < 0:
        return line[:colon].upper(), "", line[colon + 1 :]
    if line.find('"', semi, colon) >= 0:
        quoted = False
        for i in range(semi, len(line)):
            ch = line[i]
            if ch == '"':
                quoted = not quoted
            elif ch == ":" and not quoted:
                colon = i
                break
        else:
            raise MalformedCalendarData(f"unterminated parameter quote: {line[:60]!r}")
    return line[:semi].upper(), line[semi + 1 : colon], line[colon + 1 :]


def _params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if not text:
        return out
    for part in _split_quoted(text, ";") if '"' in text else text.split(";"):
        key, _, value = part.partition("=")
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        out[key.strip().upper()] = value
    return out


def _unescape_match(match: re.Match[str]) -> str:
    ch = match.group(1)
    return "\n" if ch in "nN" else ch


def _text(value: str) -> str:
    return _TEXT_ESCAPE.sub(_unescape_match, value) if "\\" in value else value


def _address(value: str) -> str:
    value = value.strip()
    return value[7:] if value[:7].lower() == "mailto:" else value


# --- time zones -------------------------------------------------------------------------------

_MISSING: Final = object()
_ZONE_CACHE_LIMIT: Final = 2048


class _Zones:
    """TZID resolution for one object: `calsync.timezones.resolve`, then its own VTIMEZONEs
    through `calsync.timezones.ObjectZones`, the resolver the store's expansion uses too. The
    object's VTIMEZONE blocks are only cut out when a TZID names no known zone."""

    __slots__ = ("_object", "_resolved", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._resolved: dict[str, tuple[dt.tzinfo | None, str | None]] = {}
        self._object: ObjectZones | None = None

    def get(self, tzid: str) -> tuple[dt.tzinfo | None, str | None]:
        """(tzinfo, name to report) for a TZID; (None, TZID) when it names nothing (read as UTC)."""
        hit = self._resolved.get(tzid)
        if hit is not None:
            return hit
        zone = resolve(tzid)
        if zone is not None:
            hit = (zone, zone.key)
        else:
            if self._object is None:
                self._object = ObjectZones(split_vtimezones(self._text.split("\n"))[1])
            hit = (self._object.get(tzid), tzid)
        self._resolved[tzid] = hit
        return hit


# --- values -----------------------------------------------------------------------------------


class _When:
    """A DATE or DATE-TIME value as read: naive wall time, its zone, how it was written, UTC."""

    __slots__ = ("is_date", "local", "name", "utc", "zone")

    def __init__(
        self, local: dt.datetime, zone: dt.tzinfo | None, name: str | None, is_date: bool
    ) -> None:
        self.local = local  # naive wall-clock time (midnight for a date)
        self.zone = zone  # None: UTC or floating
        self.name = name  # reported timezone name
        self.is_date = is_date
        self.utc = (
            local.replace(tzinfo=UTC)
            if zone is None
            else local.replace(tzinfo=zone).astimezone(UTC)
        )


_fromisoformat = dt.datetime.fromisoformat


def _stamp(value: str) -> tuple[dt.datetime, bool, bool]:
    """'20250301T090000Z' -> (naive datetime, is_utc, is_date)."""
    n = len(value)
    try:
        # The shapes real data has, straight to the C parser; anything else is checked below.
        if n == 16 and value[15] == "Z" and value[8] == "T" and value[:8].isdigit():
            return _fromisoformat(value[:15]), True, False
        if n == 15 and value[8] == "T" and value[:8].isdigit():
            return _fromisoformat(value), False, False
        if n == 8 and value.isdigit():
            return _fromisoformat(value), False, True
    except ValueError:
        pass
    v = value.strip()
    n = len(v)
    if n == 8:
        if v.isdigit():
            try:
                return _fromisoformat(v), False, True
            except ValueError:
                pass
    elif (
        (n == 15 or (n == 16 and v[15] in "Zz"))
        and v[8] in "Tt"
        and v[:8].isdigit()
        and v[9:15].isdigit()
    ):
        try:
            return _fromisoformat(f"{v[:8]}T{v[9:15]}"), n == 16, False
        except ValueError:
            pass
    raise MalformedCalendarData(f"not a DATE or DATE-TIME: {value[:40]!r}")


_TZID_OF: dict[str, str | None] = {}  # parameter text -> its TZID; the same few strings repeat


def _tzid(params: str) -> str | None:
    found = _TZID_OF.get(params, _MISSING)
    if found is _MISSING:
        found = _params(params).get("TZID") or None if "TZID" in params.upper() else None
        if len(_TZID_OF) < _ZONE_CACHE_LIMIT:
            _TZID_OF[params] = found
    return found  # type: ignore[return-value]  # the sentinel was excluded above


def _when(params: str, value: str, zones: _Zones) -> _When:
    local, is_utc, is_date = _stamp(value)
    if is_date:
        return _When(local, None, None, True)
    if is_utc:
        return _When(local, None, "UTC", False)
    if params:
        tzid = _tzid(params)
        if tzid:
            zone, name = zones.get(tzid)
            return _When(local, zone, name, False)
    return _When(local, None, None, False)


def _utc_of(params: str, value: str, zones: _Zones) -> dt.datetime:
    """`_when(...).utc` without the intermediate object (most values need nothing else)."""
    local, is_utc, is_date = _stamp(value)
    if params and not is_utc and not is_date:
        tzid = _tzid(params)
        if tzid:
            zone = zones.get(tzid)[0]
            if zone is not None:
                return local.replace(tzinfo=zone).astimezone(UTC)
    return local.replace(tzinfo=UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat()


def _when_list(props: list[_Prop], zones: _Zones) -> list[_When]:
    out: list[_When] = []
    for params, value in props:
        for item in value.split(","):
            if item:
                # PERIOD values (start/end or start/duration): the start is the occurrence.
                out.append(_when(params, item.partition("/")[0], zones))
    return out


def _duration(value: str) -> tuple[int, int]:
    """DURATION -> (nominal days, exact seconds)."""
    match = _DURATION.fullmatch(value.strip())
    if match is None or not any(match.group(i) for i in range(2, 7)):
        raise MalformedCalendarData(f"not a DURATION: {value[:40]!r}")
    sign = -1 if match.group(1) == "-" else 1
    weeks, days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups()[1:])
    return sign * (weeks * 7 + days), sign * (hours * 3600 + minutes * 60 + seconds)


def add_duration(start: _When, days: int, seconds: int) -> dt.datetime:
    """start + DURATION in UTC: days on the wall clock of start's zone, seconds exactly."""
    if start.zone is None or days == 0:
        base = start.utc + dt.timedelta(days=days)
    else:
        base = (start.local + dt.timedelta(days=days)).replace(tzinfo=start.zone).astimezone(UTC)
    return base + dt.timedelta(seconds=seconds)


# --- the walk ---------------------------------------------------------------------------------


def extract_events(raw: str, *, max_size: int = MAX_OBJECT_SIZE) -> list[Event]:
    """Every VEVENT of one VCALENDAR object as an Event (masters and overrides alike)."""
    if len(raw) > max_size:
        raise MalformedCalendarData(
            f"calendar object of {len(raw)} characters exceeds the limit of {max_size} "
            "(MAX_OBJECT_SIZE)"
        )
    text = _unfold(raw)
    body, components = _without_vtimezones(text)
    stack: list[str] = []
    found: list[tuple[dict[str, _Prop], dict[str, list[_Prop]]]] = []
    single: dict[str, _Prop] = {}
    multi: dict[str, list[_Prop]] = {}
    in_event = False  # directly inside a VEVENT (not in its VALARMs)
    wanted = _WANTED
    closed = False
    for line in body.split("\n"):
        if not line:
            continue
        first = line[0]
        if (first == "B" or first == "b") and line[:6].upper() == "BEGIN:":
            name = line[6:].strip().upper()
            if closed:
                raise MalformedCalendarData("content after END:VCALENDAR")
            if not stack and name != "VCALENDAR":
                raise MalformedCalendarData(f"expected BEGIN:VCALENDAR, found BEGIN:{name[:40]}")
            components += 1
            if len(stack) >= MAX_DEPTH or components > MAX_COMPONENTS:
                raise MalformedCalendarData(
                    f"components nested deeper than {MAX_DEPTH} or more than {MAX_COMPONENTS}"
                )
            if name == "VEVENT":
                if len(stack) != 1:
                    raise MalformedCalendarData(f"VEVENT inside {stack[-1][:40]}")
                single, multi = {}, {}
            stack.append(name)
            in_event = name == "VEVENT"
        elif (first == "E" or first == "e") and line[:4].upper() == "END:":
            name = line[4:].strip().upper()
            if not stack or stack[-1] != name:
                raise MalformedCalendarData(f"END:{name[:40]} does not close {stack[-1:]}")
            stack.pop()
            if in_event:
                found.append((single, multi))
                in_event = False
            elif len(stack) == 2 and stack[1] == "VEVENT":
                in_event = True
            elif not stack:
                closed = True
        elif in_event:
            if first not in _WANTED_INITIALS:
                if ":" not in line:
                    raise MalformedCalendarData(f"not a content line: {line[:60]!r}")
                continue
            colon = line.find(":")
            if colon < 0:
                raise MalformedCalendarData(f"not a content line: {line[:60]!r}")
            semi = line.find(";", 0, colon)
            name = (line[:colon] if semi < 0 else line[:semi]).upper()
            if name in wanted:
                if semi < 0:
                    prop = ("", line[colon + 1 :])
                elif line.find('"', semi, colon) < 0:
                    prop = (line[semi + 1 : colon], line[colon + 1 :])
                else:  # a quoted parameter may hide the real colon
                    prop = _content_line(line)[1:]
                if name in _MULTI:
                    multi.setdefault(name, []).append(prop)
                elif name not in single:
                    single[name] = prop
        elif not stack:
            if line.strip():
                raise MalformedCalendarData(f"content outside VCALENDAR: {line[:60]!r}")
        elif ":" not in line:
            raise MalformedCalendarData(f"not a content line: {line[:60]!r}")
    if stack or not closed:
        raise MalformedCalendarData("no complete VCALENDAR (missing END lines)")
    zones = _Zones(text)
    return [_event(single, multi, zones) for single, multi in found]


def _event(single: dict[str, _Prop], multi: dict[str, list[_Prop]], zones: _Zones) -> Event:
    uid_prop = single.get("UID")
    if uid_prop is None or not uid_prop[1].strip():
        raise MalformedCalendarData("VEVENT without UID")
    event = Event(uid=_text(uid_prop[1].strip()))
    uid = event.uid[:80]
    try:
        _fill(event, single, multi, zones)
    except MalformedCalendarData as exc:
        raise MalformedCalendarData(f"UID {uid!r}: {exc}") from None
    except (ValueError, OverflowError) as exc:
        raise MalformedCalendarData(f"UID {uid!r}: {exc}") from None
    return event


def _fill(
    event: Event, single: dict[str, _Prop], multi: dict[str, list[_Prop]], zones: _Zones
) -> None:
    get = single.get
    if (prop := get("RECURRENCE-ID")) is not None:
        event.recurrence_id = _iso(_utc_of(*prop, zones))
    if (prop := get("STATUS")) is not None:
        event.status = _STATUSES.get(prop[1].strip().upper(), "confirmed")
    start: _When | None = None
    if (prop := get("DTSTART")) is not None:
        start = _when(*prop, zones)
        event.start = start.utc
        event.all_day = start.is_date
        event.timezone = start.name
        if (prop := get("DTEND")) is not None:
            event.end = _utc_of(*prop, zones)
        elif (prop := get("DURATION")) is not None:
            event.end = add_duration(start, *_duration(prop[1]))
        else:
            event.end = add_duration(start, 1 if start.is_date else 0, 0)
    if (prop := get("SUMMARY")) is not None:
        event.summary = _text(prop[1])
    if (prop := get("LOCATION")) is not None:
        event.location = _text(prop[1])
    if (prop := get("TRANSP")) is not None and prop[1].strip().upper() == "TRANSPARENT":
        event.transparency = "transparent"
    if (prop := get("ORGANIZER")) is not None:
        event.organizer = _address(prop[1])
    if attendees := multi.get("ATTENDEE"):
        event.attendees = [_address(value) for _, value in attendees]
    rdates: list[_When] = []
    if props := multi.get("RDATE"):
        rdates = _when_list(props, zones)
        event.rdates = [_iso(w.utc) for w in rdates]
    if props := multi.get("EXDATE"):
        event.exdates = [_iso(w.utc) for w in _when_list(props, zones)]
    if (prop := get("LAST-MODIFIED")) is not None:
        event.last_modified = _utc_of(*prop, zones)
    if (prop := get("SEQUENCE")) is not None:
        try:
            event.sequence = int(prop[1].strip())
        except ValueError:
            event.sequence = 0
    if (prop := get("RRULE")) is not None:
        event.rrule = prop[1].strip()
        check_interval(event.rrule)  # INTERVAL=0 would hang every expansion of the series
    if start is not None and (event.rrule or rdates):
        event.series_end = _series_end(event, start, rdates)


def _series_end(event: Event, start: _When, rdates: list[_When]) -> dt.datetime | None:
    assert event.start is not None and event.end is not None
    last = event.start
    if event.rrule:
        rule_last = last_start(event.rrule, start.local, start.zone)
        if rule_last is None:
            return None
        last = max(rule_last, last)
    for rdate in rdates:
        last = max(last, rdate.utc)
    return last + (event.end - event.start)
