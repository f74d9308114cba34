"""Events as the simulated mailbox keeps them, expanded into calendar-view instances, rendered.

A stored event is immutable: every change replaces the object. Instances computed from it keep
a reference to the version they came from, so a delta round that was computed before a change
still renders what it saw then.

A calendar view (and its delta) holds single instances, occurrences and exceptions, never the
series master, which is how Graph documents `calendarView`: "The returned events may include
single instances or occurrences and exceptions of a recurring series." An occurrence has an id
of its own that stays the same when it becomes an exception (it is changed on its own); an
occurrence deleted from the series (the organizer cancelled it) disappears from the view; an
occurrence "cancelled" from an attendee's point of view stays, as an exception with
`isCancelled: true`.

`iCalUId` follows Outlook's GlobalObjectId: a hex string whose bytes 16-19 carry the date of an
occurrence (zero for the series and for single events), which is why Graph says it "is
different for each occurrence in a recurring series".
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from calsync.testing.microsoft import recurrence as rec
from calsync.testing.microsoft.clock import (
    UTC,
    format_local,
    format_timestamp,
    parse_local,
    resolve_zone,
)
from calsync.testing.microsoft.errors import GraphError, bad_request

SHOW_AS = ("free", "tentative", "busy", "oof", "workingElsewhere", "unknown")
IMPORTANCE = ("low", "normal", "high")
SENSITIVITY = ("normal", "personal", "private", "confidential")
GLOBAL_OBJECT_CLASS = "040000008200E00074C5B7101A82E008"
_DAY = dt.timedelta(days=1)
_OVERRIDABLE = ("subject", "body", "location", "showAs", "start", "end", "isCancelled")


def opaque_id(*parts: str, prefix: str = "AAMkAG") -> str:
    """A Graph-looking id (base64 with padding), derived deterministically from `parts`."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:31]
    return prefix + base64.urlsafe_b64encode(digest).decode()


def change_key(*parts: str) -> str:
    digest = hashlib.sha256("\x1f".join(("ck", *parts)).encode()).digest()[:16]
    return base64.b64encode(digest).decode()


def global_object_id(*parts: str, created: dt.datetime) -> str:
    """An Outlook GlobalObjectId: class id, instance date (zero), creation time, data."""
    filetime = int((created - dt.datetime(1601, 1, 1, tzinfo=UTC)).total_seconds() * 10**7)
    data = hashlib.sha256("\x1f".join(("uid", *parts)).encode()).hexdigest()[:32].upper()
    stamp = filetime.to_bytes(8, "little").hex().upper()
    return f"{GLOBAL_OBJECT_CLASS}00000000{stamp}{'0' * 16}10000000{data}"


def instance_ical_uid(series_uid: str, day: dt.date) -> str:
    if not series_uid.startswith(GLOBAL_OBJECT_CLASS) or len(series_uid) < 40:
        return f"{series_uid}-{day:%Y%m%d}"
    stamp = f"{day.year >> 8:02X}{day.year & 0xFF:02X}{day.month:02X}{day.day:02X}"
    return series_uid[:32] + stamp + series_uid[40:]


@dataclass(frozen=True, slots=True)
class When:
    """A Graph dateTimeTimeZone: naive wall-clock time and the zone name as given."""

    local: dt.datetime
    zone: str

    @property
    def tz(self) -> dt.tzinfo:
        return resolve_zone(self.zone) or UTC

    def instant(self) -> dt.datetime:
        return self.local.replace(tzinfo=self.tz).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Override:
    """One changed occurrence of a series (an exception): the fields it sets, its own version."""

    key: str  # the original start, UTC ISO 8601
    change_key: str
    created: dt.datetime
    modified: dt.datetime
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: str
    calendar_id: str
    ical_uid: str
    created: dt.datetime
    modified: dt.datetime
    change_key: str
    subject: str
    body: str
    body_type: str
    location: str
    show_as: str
    importance: str
    sensitivity: str
    is_all_day: bool
    is_cancelled: bool
    start: When
    end: When
    organizer: tuple[str, str]  # (name, address)
    attendees: tuple[tuple[str, str, str, str], ...]  # (name, address, type, response)
    categories: tuple[str, ...] = ()
    recurrence: Mapping[str, Any] | None = None
    overrides: Mapping[str, Override] = field(default_factory=dict)
    deleted: frozenset[str] = frozenset()

    @property
    def duration(self) -> dt.timedelta:
        return self.end.instant() - self.start.instant()


@dataclass(frozen=True, slots=True)
class Instance:
    """One item of a calendar view: a single event, an occurrence or an exception."""

    id: str
    kind: str  # singleInstance | occurrence | exception
    event: StoredEvent
    start: dt.datetime  # UTC
    end: dt.datetime  # UTC
    original_key: str | None = None
    override: Override | None = None

    @property
    def etag(self) -> str:
        if self.override is None:
            return self.event.change_key
        return change_key(self.event.change_key, self.override.change_key)

    def field(self, name: str, default: Any) -> Any:
        if self.override is not None and name in self.override.fields:
            return self.override.fields[name]
        return default


def occurrence_id(master_id: str, key: str) -> str:
    raw = f"{master_id}\x00{key}".encode()
    return "AAMkAGOcc" + base64.urlsafe_b64encode(raw).decode()


def split_occurrence_id(value: str) -> tuple[str, str] | None:
    if not value.startswith("AAMkAGOcc"):
        return None
    try:
        raw = base64.urlsafe_b64decode(value[len("AAMkAGOcc") :].encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    master, sep, key = raw.partition("\x00")
    return (master, key) if sep else None


# -- input ---------------------------------------------------------------------------------------


def _text(body: Mapping[str, Any], name: str, default: str = "") -> str:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_request(f"Property '{name}' must be a string.", "BadRequest")
    return value


def _choice(body: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(name, default)
    if value is None:
        return default
    if value not in allowed:
        raise bad_request(
            f"Cannot convert the literal '{value}' to the expected type for '{name}'.",
            "BadRequest",
        )
    return str(value)


def parse_when(value: Any, name: str) -> When:
    if not isinstance(value, Mapping) or not isinstance(value.get("dateTime"), str):
        raise bad_request(f"'{name}' must be an object with dateTime and timeZone.")
    zone = value.get("timeZone") or "UTC"
    if not isinstance(zone, str) or resolve_zone(zone) is None:
        raise GraphError(
            400,
            "TimeZoneNotSupportedException",
            "A valid TimeZone value must be specified. The following TimeZone value is not "
            f"supported: '{zone}'.",
        )
    try:
        local = parse_local(value["dateTime"])
    except ValueError:
        raise bad_request(f"'{name}.dateTime' is not a valid date and time.") from None
    if local.tzinfo is not None:  # an offset given: keep the wall time in the named zone
        local = local.astimezone(resolve_zone(zone) or UTC).replace(tzinfo=None)
    return When(local, zone)


def _address(value: Any, what: str) -> tuple[str, str]:
    email = value.get("emailAddress") if isinstance(value, Mapping) else None
    if not isinstance(email, Mapping) or not isinstance(email.get("address", ""), str):
        raise bad_request(f"'{what}' needs emailAddress.address.")
    return str(email.get("name") or ""), str(email.get("address") or "")


def _attendees(value: Any) -> tuple[tuple[str, str, str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad_request("'attendees' must be an array.")
    found = []
    for item in value:
        name, address = _address(item, "attendees")
        kind = item.get("type") or "required"
        if kind not in ("required", "optional", "resource"):
            raise bad_request(f"Attendee type '{kind}' is not valid.")
        status = item.get("status") or {}
        response = status.get("response", "none") if isinstance(status, Mapping) else "none"
        found.append((name, address, str(kind), str(response or "none")))
    return tuple(found)


def check_times(start: When, end: When, all_day: bool) -> None:
    if all_day:
        if start.local.time() != dt.time() or end.local.time() != dt.time():
            raise bad_request(
                "Your request can't be completed. If the event is an all-day event, the start "
                "and end times must be set at midnight and must be in the same time zone."
            )
        if end.local.date() <= start.local.date():
            raise bad_request("An all-day event must last at least one day.")
    elif end.instant() < start.instant():
        raise bad_request("The end time of the event is before its start time.")


def build_event(
    body: Mapping[str, Any],
    *,
    event_id: str,
    calendar_id: str,
    ical_uid: str,
    owner: tuple[str, str],
    now: dt.datetime,
    version: str,
    admin: bool,
) -> StoredEvent:
    """A new event from Graph's JSON (the body of `POST /me/events`)."""
    if not isinstance(body, Mapping):
        raise bad_request("The request body must be a JSON object.", "BadRequest")
    if "start" not in body or "end" not in body:
        raise bad_request("An event needs both 'start' and 'end'.")
    start = parse_when(body["start"], "start")
    end = parse_when(body["end"], "end")
    all_day = bool(body.get("isAllDay", False))
    check_times(start, end, all_day)
    content = body.get("body") or {}
    if not isinstance(content, Mapping):
        raise bad_request("'body' must be an object.")
    location = body.get("location") or {}
    if not isinstance(location, Mapping):
        raise bad_request("'location' must be an object.")
    organizer = owner
    if admin and body.get("organizer") is not None:
        organizer = _address(body["organizer"], "organizer")
    recurrence = None
    if body.get("recurrence") is not None:
        try:
            recurrence = rec.normalise(body["recurrence"])
        except rec.RecurrenceError as exc:
            raise bad_request(f"The recurrence is not valid: {exc}.") from None
    categories = body.get("categories") or []
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise bad_request("'categories' must be an array of strings.")
    return StoredEvent(
        id=event_id,
        calendar_id=calendar_id,
        ical_uid=ical_uid,
        created=now,
        modified=now,
        change_key=change_key(event_id, version),
        subject=_text(body, "subject"),
        body=_text(content, "content"),
        body_type=_choice(content, "contentType", ("html", "text"), "html"),
        location=_text(location, "displayName"),
        show_as=_choice(body, "showAs", SHOW_AS, "busy"),
        importance=_choice(body, "importance", IMPORTANCE, "normal"),
        sensitivity=_choice(body, "sensitivity", SENSITIVITY, "normal"),
        is_all_day=all_day,
        is_cancelled=bool(body.get("isCancelled", False)) if admin else False,
        start=start,
        end=end,
        organizer=organizer,
        attendees=_attendees(body.get("attendees")),
        categories=tuple(categories),
        recurrence=recurrence,
    )


def to_input(event: StoredEvent) -> dict[str, Any]:
    """The event back as the JSON `build_event` reads (for PATCH: merge, then rebuild)."""
    return {
        "subject": event.subject,
        "body": {"contentType": event.body_type, "content": event.body},
        "location": {"displayName": event.location},
        "showAs": event.show_as,
        "importance": event.importance,
        "sensitivity": event.sensitivity,
        "isAllDay": event.is_all_day,
        "isCancelled": event.is_cancelled,
        "start": {"dateTime": format_local(event.start.local), "timeZone": event.start.zone},
        "end": {"dateTime": format_local(event.end.local), "timeZone": event.end.zone},
        "organizer": {"emailAddress": {"name": event.organizer[0], "address": event.organizer[1]}},
        "attendees": [
            {
                "type": kind,
                "status": {"response": response},
                "emailAddress": {"name": name, "address": address},
            }
            for name, address, kind, response in event.attendees
        ],
        "categories": list(event.categories),
        "recurrence": dict(event.recurrence) if event.recurrence else None,
    }


def override_fields(body: Mapping[str, Any], admin: bool) -> dict[str, Any]:
    """The fields a PATCH of one occurrence sets, checked."""
    if not isinstance(body, Mapping):
        raise bad_request("The request body must be a JSON object.", "BadRequest")
    unknown = [k for k in body if k not in _OVERRIDABLE and not k.startswith("@")]
    if unknown:
        raise bad_request(f"These properties cannot be changed on one occurrence: {unknown}.")
    fields: dict[str, Any] = {}
    for name in ("start", "end"):
        if name in body:
            fields[name] = parse_when(body[name], name)
    if "subject" in body:
        fields["subject"] = _text(body, "subject")
    if "body" in body:
        content = body["body"] if isinstance(body["body"], Mapping) else {}
        fields["body"] = _text(content, "content")
    if "location" in body:
        place = body["location"] if isinstance(body["location"], Mapping) else {}
        fields["location"] = _text(place, "displayName")
    if "showAs" in body:
        fields["showAs"] = _choice(body, "showAs", SHOW_AS, "busy")
    if "isCancelled" in body:
        if not admin:
            raise bad_request("'isCancelled' is read-only; cancel the occurrence instead.")
        fields["isCancelled"] = bool(body["isCancelled"])
    return fields


# -- expansion -----------------------------------------------------------------------------------


def overlaps(start: dt.datetime, end: dt.datetime, lo: dt.datetime, hi: dt.datetime) -> bool:
    if start >= hi:
        return False
    return end > lo or start >= lo


def _span(event: StoredEvent, local_start: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    zone = event.start.tz
    begin = local_start.replace(tzinfo=zone).astimezone(UTC)
    if event.is_all_day:
        days = (event.end.local.date() - event.start.local.date()).days
        finish_local = local_start + dt.timedelta(days=days)
        return begin, finish_local.replace(tzinfo=zone).astimezone(UTC)
    return begin, begin + event.duration


def instances(event: StoredEvent, lo: dt.datetime, hi: dt.datetime) -> Iterator[Instance]:
    """The instances of `event` that overlap [lo, hi), by start (overrides placed where moved)."""
    if event.recurrence is None:
        begin, finish = event.start.instant(), event.end.instant()
        if event.is_all_day:
            begin, finish = _span(event, event.start.local)
        if overlaps(begin, finish, lo, hi):
            yield Instance(event.id, "singleInstance", event, begin, finish)
        return
    zone = event.start.tz
    length = event.duration
    after = (lo - length - _DAY).astimezone(zone).replace(tzinfo=None)
    before = (hi + _DAY).astimezone(zone).replace(tzinfo=None)
    found: list[Instance] = []
    for local in rec.local_starts(
        event.recurrence, event.start.local.time(), after=after, before=before
    ):
        begin, finish = _span(event, local)
        key = begin.isoformat()
        if key in event.deleted or key in event.overrides:
            continue
        if overlaps(begin, finish, lo, hi):
            found.append(
                Instance(occurrence_id(event.id, key), "occurrence", event, begin, finish, key)
            )
    for key, override in event.overrides.items():
        if key in event.deleted:
            continue
        original = dt.datetime.fromisoformat(key)
        begin, finish = _span(event, original.astimezone(zone).replace(tzinfo=None))
        if "start" in override.fields:
            begin = override.fields["start"].instant()
            if event.is_all_day:
                begin = override.fields["start"].local.replace(tzinfo=zone).astimezone(UTC)
        if "end" in override.fields:
            finish = override.fields["end"].instant()
            if event.is_all_day:
                finish = override.fields["end"].local.replace(tzinfo=zone).astimezone(UTC)
        elif "start" in override.fields:
            finish = begin + (event.duration if not event.is_all_day else _DAY)
        if overlaps(begin, finish, lo, hi):
            found.append(
                Instance(
                    occurrence_id(event.id, key), "exception", event, begin, finish, key, override
                )
            )
    found.sort(key=lambda i: (i.start, i.id))
    yield from found


def is_occurrence_of(event: StoredEvent, key: str) -> bool:
    """Whether `key` (UTC ISO start) is one of the series' regular occurrence starts."""
    if event.recurrence is None:
        return False
    try:
        original = dt.datetime.fromisoformat(key)
    except ValueError:
        return False
    local = original.astimezone(event.start.tz).replace(tzinfo=None)
    return any(
        s == local
        for s in rec.local_starts(
            event.recurrence,
            event.start.local.time(),
            after=local,
            before=local + dt.timedelta(seconds=1),
        )
    )


# -- rendering -----------------------------------------------------------------------------------


def _render_time(
    value: dt.datetime, all_day: bool, zone: dt.tzinfo, label: str, event_zone: dt.tzinfo
) -> dict[str, str]:
    if all_day:
        local_day = value.astimezone(event_zone).replace(tzinfo=None)
        return {"dateTime": format_local(local_day), "timeZone": label}
    local = value.astimezone(zone).replace(tzinfo=None)
    return {"dateTime": format_local(local), "timeZone": label}


def _preview(text: str) -> str:
    plain = text
    if "<" in plain:
        out, inside = [], False
        for char in plain:
            if char == "<":
                inside = True
            elif char == ">":
                inside = False
            elif not inside:
                out.append(char)
        plain = "".join(out)
    return " ".join(plain.split())[:255]


def render_instance(
    item: Instance, *, zone: dt.tzinfo, zone_label: str, base_url: str, owner_address: str
) -> dict[str, Any]:
    """An event resource the way Graph's calendarView returns it."""
    event = item.event
    override = item.override
    modified = override.modified if override is not None else event.modified
    is_cancelled = bool(item.field("isCancelled", event.is_cancelled))
    body = str(item.field("body", event.body))
    ical_uid = event.ical_uid
    original_start = None
    if item.original_key is not None:
        original = dt.datetime.fromisoformat(item.original_key)
        ical_uid = instance_ical_uid(event.ical_uid, original.astimezone(event.start.tz).date())
        original_start = format_timestamp(original)
    etag = item.etag
    organizer_is_owner = event.organizer[1].lower() == owner_address.lower()
    rendered: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.event",
        "@odata.etag": f'W/"{etag}"',
        "id": item.id,
        "createdDateTime": format_timestamp(
            override.created if override is not None else event.created
        ),
        "lastModifiedDateTime": format_timestamp(modified),
        "changeKey": etag,
        "categories": list(event.categories),
        "transactionId": None,
        "originalStartTimeZone": event.start.zone,
        "originalEndTimeZone": event.end.zone,
        "iCalUId": ical_uid,
        "reminderMinutesBeforeStart": 15,
        "isReminderOn": not event.is_all_day,
        "hasAttachments": False,
        "subject": str(item.field("subject", event.subject)),
        "bodyPreview": _preview(body),
        "importance": event.importance,
        "sensitivity": event.sensitivity,
        "isAllDay": event.is_all_day,
        "isCancelled": is_cancelled,
        "isOrganizer": organizer_is_owner,
        "responseRequested": True,
        "seriesMasterId": event.id if item.kind != "singleInstance" else None,
        "showAs": str(item.field("showAs", event.show_as)),
        "type": item.kind,
        "webLink": f"{base_url}/owa/?itemid={item.id}&exvsurl=1&path=/calendar/item",
        "onlineMeetingUrl": None,
        "isOnlineMeeting": False,
        "onlineMeetingProvider": "unknown",
        "allowNewTimeProposals": True,
        "isDraft": False,
        "hideAttendees": False,
        "responseStatus": {
            "response": "organizer" if organizer_is_owner else "notResponded",
            "time": "0001-01-01T00:00:00Z",
        },
        "body": {"contentType": event.body_type, "content": body},
        "start": _render_time(item.start, event.is_all_day, zone, zone_label, event.start.tz),
        "end": _render_time(item.end, event.is_all_day, zone, zone_label, event.start.tz),
        "location": {
            "displayName": str(item.field("location", event.location)),
            "locationType": "default",
            "uniqueIdType": "unknown",
            "address": {},
            "coordinates": {},
        },
        "locations": [],
        "recurrence": None,
        "attendees": [
            {
                "type": kind,
                "status": {"response": response, "time": "0001-01-01T00:00:00Z"},
                "emailAddress": {"name": name, "address": address},
            }
            for name, address, kind, response in event.attendees
        ],
        "organizer": {"emailAddress": {"name": event.organizer[0], "address": event.organizer[1]}},
        "onlineMeeting": None,
    }
    if original_start is not None:
        rendered["originalStart"] = original_start
    return rendered


def render_master(
    event: StoredEvent, *, zone: dt.tzinfo, zone_label: str, base_url: str, owner_address: str
) -> dict[str, Any]:
    """A stored event as `GET /me/events/{id}` returns it (a series master with its pattern)."""
    kind = "seriesMaster" if event.recurrence is not None else "singleInstance"
    start, end = event.start.instant(), event.end.instant()
    if event.is_all_day:
        start, end = _span(event, event.start.local)
    item = Instance(event.id, kind, event, start, end)
    rendered = render_instance(
        item, zone=zone, zone_label=zone_label, base_url=base_url, owner_address=owner_address
    )
    rendered["seriesMasterId"] = None
    rendered["recurrence"] = dict(event.recurrence) if event.recurrence else None
    return rendered


def replaced(event: StoredEvent, **changes: Any) -> StoredEvent:
    return dataclasses.replace(event, **changes)
