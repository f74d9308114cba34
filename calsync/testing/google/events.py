"""Stored events: validation of request bodies and rendering as Google event resources.

A `StoredEvent` is one event resource of a calendar: a single event, a recurring master, or an
exception (an instance changed or cancelled on its own, with `recurringEventId` and
`originalStartTime`). Deleted events stay as tombstones with `status: "cancelled"`, since
incremental sync must report them.

Rendering is cached as JSON bytes per event, so a listing of thousands of events costs a join,
not thousands of `json.dumps` calls; every change drops the cache. A cancelled event is listed
in Google's minimal form (id, status, and for an instance its `recurringEventId` and
`originalStartTime`): "deleted events are only guaranteed to have the id field populated".
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from calsync.testing.google.errors import GoogleError, bad_request
from calsync.testing.google.times import (
    Recurrence,
    TimeValue,
    from_epoch,
    parse_recurrence,
    parse_time,
    rfc3339_utc,
)

# Google's event ids: base32hex lower case, 5 to 1024 characters (instance ids add _stamp).
EVENT_ID: Final = re.compile(r"[a-v0-9]{5,1024}")
INSTANCE_ID: Final = re.compile(r"([a-v0-9]{5,1024})_(\d{8}(?:T\d{6}Z)?)")
MAX_TEXT: Final = 8192
MAX_ATTENDEES: Final = 1000
STATUSES: Final = ("confirmed", "tentative", "cancelled")
TEXT_FIELDS: Final = ("summary", "description", "location")
_COMPACT: Final = (",", ":")  # what Google sends with prettyPrint=false


@dataclass(eq=False, slots=True)
class StoredEvent:
    id: str
    calendar_id: str
    calendar_zone: str
    owner: str
    status: str
    ical_uid: str
    created: float
    updated: float
    seq: int  # the simulator-wide change number of the last change (sync tokens compare it)
    sequence: int = 0
    start: TimeValue | None = None
    end: TimeValue | None = None
    recurrence: list[str] | None = None
    parsed_recurrence: Recurrence | None = None
    recurring_event_id: str | None = None
    original_start: TimeValue | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # summary, attendees, ...
    organizer: dict[str, Any] | None = None
    order: bytes = b""  # the unordered-looking order of listings (a hash of the id)
    _full: bytes | None = None
    _listed: bytes | None = None

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"

    @property
    def is_master(self) -> bool:
        return bool(self.recurrence) and self.recurring_event_id is None

    @property
    def etag(self) -> str:
        return f'"{3_400_000_000_000_000 + self.seq}"'

    def touch(self, seq: int, now: float) -> None:
        self.seq = seq
        self.updated = now
        self._full = None
        self._listed = None

    def html_link(self) -> str:
        eid = base64.urlsafe_b64encode(f"{self.id} {self.calendar_id}".encode()).rstrip(b"=")
        return "https://www.google.com/calendar/event?eid=" + eid.decode()

    def resource(self) -> dict[str, Any]:
        """The full event resource (what events.get answers)."""
        out: dict[str, Any] = {
            "kind": "calendar#event",
            "etag": self.etag,
            "id": self.id,
            "status": self.status,
            "htmlLink": self.html_link(),
            "created": rfc3339_utc(from_epoch(self.created)),
            "updated": rfc3339_utc(from_epoch(self.updated)),
        }
        for name in TEXT_FIELDS:
            if self.fields.get(name):
                out[name] = self.fields[name]
        if "colorId" in self.fields:
            out["colorId"] = self.fields["colorId"]
        out["creator"] = {"email": self.owner}
        out["organizer"] = self.organizer or {"email": self.owner}
        if self.start is not None and self.end is not None:
            out["start"] = self.start.render(self.calendar_zone)
            out["end"] = self.end.render(self.calendar_zone)
        if self.recurrence:
            out["recurrence"] = list(self.recurrence)
        if self.recurring_event_id is not None and self.original_start is not None:
            out["recurringEventId"] = self.recurring_event_id
            out["originalStartTime"] = self.original_start.render(self.calendar_zone)
        if self.fields.get("transparency") == "transparent":
            out["transparency"] = "transparent"
        if self.fields.get("visibility"):
            out["visibility"] = self.fields["visibility"]
        out["iCalUID"] = self.ical_uid
        out["sequence"] = self.sequence
        if self.fields.get("attendees"):
            out["attendees"] = self.fields["attendees"]
        if self.fields.get("extendedProperties"):
            out["extendedProperties"] = self.fields["extendedProperties"]
        out["reminders"] = {"useDefault": True}
        out["eventType"] = "default"
        return out

    def minimal(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "calendar#event",
            "etag": self.etag,
            "id": self.id,
            "status": "cancelled",
        }
        if self.recurring_event_id is not None and self.original_start is not None:
            out["recurringEventId"] = self.recurring_event_id
            out["originalStartTime"] = self.original_start.render(self.calendar_zone)
        return out

    def full_json(self) -> bytes:
        if self._full is None:
            self._full = json.dumps(
                self.resource(), ensure_ascii=False, separators=_COMPACT
            ).encode()
        return self._full

    def listed_json(self) -> bytes:
        """How a listing shows it: the full resource, or the minimal form once cancelled."""
        if not self.cancelled:
            return self.full_json()
        if self._listed is None:
            self._listed = json.dumps(
                self.minimal(), ensure_ascii=False, separators=_COMPACT
            ).encode()
        return self._listed

    def searchable(self) -> str:
        return " ".join(str(self.fields.get(name, "")) for name in TEXT_FIELDS).lower()


def order_key(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


def _text(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"Invalid value for: {name}")
    if len(value) > MAX_TEXT:
        raise bad_request(f"The value of {name} is too long.")
    return value


def _attendees(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > MAX_ATTENDEES:
        raise bad_request("Invalid attendee list.")
    out: list[dict[str, Any]] = []
    for item in value:
        if not isinstance(item, Mapping):
            raise bad_request("Invalid attendee.")
        email = item.get("email")
        if not isinstance(email, str) or "@" not in email or len(email) > 320:
            raise bad_request("Invalid attendee email.", reason="invalid")
        attendee: dict[str, Any] = {
            "email": email,
            "responseStatus": str(item.get("responseStatus") or "needsAction"),
        }
        if isinstance(item.get("displayName"), str):
            attendee["displayName"] = item["displayName"][:MAX_TEXT]
        if item.get("optional") is True:
            attendee["optional"] = True
        if item.get("organizer") is True:
            attendee["organizer"] = True
        out.append(attendee)
    return out


@dataclass(slots=True)
class EventInput:
    """A validated request body (insert, update, or patch merged onto the current event)."""

    start: TimeValue
    end: TimeValue
    status: str
    fields: dict[str, Any]
    recurrence: list[str] | None
    parsed_recurrence: Recurrence | None
    sequence: int | None
    organizer: dict[str, Any] | None


def validate_body(
    body: Mapping[str, Any], calendar_zone: str, *, allow_organizer: bool
) -> EventInput:
    """Check an event body the way Google does; raises GoogleError (400) and changes nothing."""
    start = parse_time(body.get("start"), field="start", calendar_zone=calendar_zone)
    end = parse_time(body.get("end"), field="end", calendar_zone=calendar_zone)
    if start.all_day != end.all_day:
        raise bad_request("Start and end times must either both be date or both be dateTime.")
    # Timed events may last no time at all; an all-day event lasts at least a day.
    empty = end.utc <= start.utc if start.all_day else end.utc < start.utc
    if empty:
        raise GoogleError(400, "timeRangeEmpty", "The specified time range is empty.")
    status = body.get("status", "confirmed") or "confirmed"
    if status not in STATUSES:
        raise bad_request(f"Invalid value for: status ({str(status)[:40]!r})")
    fields: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        text = _text(body, name)
        if text:
            fields[name] = text
    transparency = body.get("transparency", "opaque") or "opaque"
    if transparency not in ("opaque", "transparent"):
        raise bad_request("Invalid value for: transparency")
    fields["transparency"] = transparency
    visibility = body.get("visibility")
    if visibility is not None:
        if visibility not in ("default", "public", "private", "confidential"):
            raise bad_request("Invalid value for: visibility")
        fields["visibility"] = visibility
    color = body.get("colorId")
    if color is not None:
        if not isinstance(color, str) or not color.isdigit() or not 1 <= int(color) <= 11:
            raise bad_request("Invalid value for: colorId")
        fields["colorId"] = color
    if body.get("attendees") is not None:
        fields["attendees"] = _attendees(body["attendees"])
    extended = body.get("extendedProperties")
    if extended is not None:
        fields["extendedProperties"] = _extended(extended)
    recurrence: list[str] | None = None
    parsed: Recurrence | None = None
    if body.get("recurrence") not in (None, []):
        if start.zone_name is None and not start.all_day:
            raise bad_request("Missing time zone definition for start time.")
        parsed = parse_recurrence(body["recurrence"], start, calendar_zone)
        recurrence = [str(line).strip() for line in body["recurrence"]]
    sequence = body.get("sequence")
    if sequence is not None and (
        not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0
    ):
        raise bad_request("Invalid value for: sequence")
    organizer: dict[str, Any] | None = None
    if allow_organizer and body.get("organizer") is not None:
        given = body["organizer"]
        if not isinstance(given, Mapping) or not isinstance(given.get("email"), str):
            raise bad_request("Invalid value for: organizer")
        organizer = {"email": given["email"]}
        if isinstance(given.get("displayName"), str):
            organizer["displayName"] = given["displayName"][:MAX_TEXT]
    return EventInput(start, end, status, fields, recurrence, parsed, sequence, organizer)


def _extended(value: Any) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping):
        raise bad_request("Invalid value for: extendedProperties")
    out: dict[str, dict[str, str]] = {}
    for scope in ("private", "shared"):
        props = value.get(scope)
        if props is None:
            continue
        if not isinstance(props, Mapping) or len(props) > 300:
            raise bad_request("Invalid value for: extendedProperties")
        clean: dict[str, str] = {}
        for key, val in props.items():
            if not isinstance(key, str) or not isinstance(val, str) or len(val) > 1024:
                raise bad_request("Invalid value for: extendedProperties")
            clean[key] = val
        out[scope] = clean
    return out
