"""One VCALENDAR from a calendar's stored resources, for backups, migrations and debugging.

iCalendar resources are copied component by component from their raw text, content lines
untouched (folding, parameters, X- properties and all), so what a CalDAV server gave us comes
back out; only the per-object VCALENDAR wrappers go, and VTIMEZONEs are written once per TZID.
JSON resources (Google, Graph) have no iCalendar original: their stored event rows are written
as VEVENTs in UTC, which keeps what the store knows but not the provider's every field.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import icalendar

from calsync.store.expand import parse_utc
from calsync.store.rows import json_list

PRODID = "-//calsync//event store export//EN"


@dataclass(frozen=True, slots=True)
class Exported:
    raw: str
    raw_format: str
    rows: Sequence[Mapping[Any, Any]] = ()


def calendar_text(name: str | None, resources: Iterable[Exported]) -> str:
    timezones: dict[str, list[str]] = {}
    components: list[list[str]] = []
    for resource in resources:
        if resource.raw_format == "ical":
            for block in top_level_components(resource.raw):
                tzid = _tzid(block)
                if tzid is not None:
                    timezones.setdefault(tzid, block)
                else:
                    components.append(block)
        else:
            components.extend(_vevent_lines(row) for row in resource.rows)
    head = ["BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:{PRODID}"]
    if name:
        head.append("X-WR-CALNAME:" + icalendar.vText(name).to_ical().decode())
    lines = head + [line for block in timezones.values() for line in block]
    lines += [line for block in components for line in block]
    lines.append("END:VCALENDAR")
    return "\r\n".join(lines) + "\r\n"


def top_level_components(raw: str) -> Iterator[list[str]]:
    """The content lines of each component directly inside a VCALENDAR, as written."""
    depth = 0
    block: list[str] = []
    for line in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line:
            continue
        continued = line[0] in " \t"
        name = line.upper()
        if not continued and name.startswith("BEGIN:"):
            depth += 1
            if depth == 2:
                block = []
        if depth >= 2:
            block.append(line)
        if not continued and name.startswith("END:"):
            depth -= 1
            if depth == 1:
                yield block
            depth = max(depth, 0)


def _tzid(block: list[str]) -> str | None:
    if not block or block[0].strip().upper() != "BEGIN:VTIMEZONE":
        return None
    unfolded = "\n".join(block).replace("\n ", "").replace("\n\t", "")
    for line in unfolded.split("\n"):
        if line.upper().startswith("TZID"):
            return line.split(":", 1)[-1].strip()
    return ""


def _vevent_lines(row: Mapping[Any, Any]) -> list[str]:
    event = icalendar.Event()
    event.add("UID", row["uid"])
    event.add("DTSTAMP", row["last_modified"] or dt.datetime.now(dt.UTC))
    start: dt.datetime | None = row["start_utc"]
    end: dt.datetime | None = row["end_utc"]
    all_day = bool(row["all_day"])
    if start is not None:
        event.add("DTSTART", start.date() if all_day else start)
    if end is not None and start is not None and end != start:
        event.add("DTEND", end.date() if all_day else end)
    if row["recurrence_id"]:
        original = parse_utc(row["recurrence_id"])
        if original is not None:
            event.add("RECURRENCE-ID", original.date() if all_day else original)
    if row["rrule"]:
        event.add("RRULE", icalendar.vRecur.from_ical(row["rrule"].removeprefix("RRULE:")))
    for key, prop in (("rdates", "RDATE"), ("exdates", "EXDATE")):
        for text in json_list(row[key]):
            instant = parse_utc(text)
            if instant is not None:
                event.add(prop, instant.date() if all_day else instant)
    for key, prop in (("summary", "SUMMARY"), ("location", "LOCATION")):
        if row[key]:
            event.add(prop, row[key])
    event.add("STATUS", str(row["status"]).upper())
    event.add("TRANSP", str(row["transparency"]).upper())
    event.add("SEQUENCE", row["sequence"])
    if row["last_modified"] is not None:
        event.add("LAST-MODIFIED", row["last_modified"])
    if row["organizer"]:
        event.add("ORGANIZER", _cal_address(row["organizer"]))
    for attendee in json_list(row["attendees"]):
        event.add("ATTENDEE", _cal_address(attendee))
    content: str = event.to_ical().decode()
    return content.replace("\r\n", "\n").rstrip("\n").split("\n")


def _cal_address(value: str) -> str:
    return value if ":" in value else f"mailto:{value}"
