"""The normalised calendar data every provider produces and the store keeps.

A provider object (a CalDAV calendar object resource, a Google event, a Graph event) becomes one
`Resource`: its provider id, etag, the raw original payload (kept byte for byte for lossless
export) and the `Event` components extracted from it. A CalDAV resource holds one UID: a
recurring master plus its RECURRENCE-ID overrides, so one resource can carry several events.

Times are timezone-aware UTC datetimes; the original time zone is kept beside them. All-day
events carry midnight UTC of their dates and `all_day=True`.

This module imports nothing of ours: providers, the store and the engine all depend on it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

RawFormat = Literal["ical", "json"]
EventStatus = Literal["confirmed", "tentative", "cancelled"]


@dataclass(slots=True)
class Event:
    """One VEVENT (or provider event): a single event, a recurring master, or an override."""

    uid: str
    recurrence_id: str | None = None  # UTC ISO 8601 of the overridden occurrence; None = master
    status: EventStatus = "confirmed"
    start: dt.datetime | None = None  # UTC
    end: dt.datetime | None = None  # UTC
    timezone: str | None = None  # original TZID of DTSTART ("UTC", "Europe/Berlin", None=floating)
    all_day: bool = False
    summary: str = ""
    location: str = ""
    transparency: Literal["opaque", "transparent"] = "opaque"
    organizer: str | None = None
    attendees: list[str] = field(default_factory=list)
    rrule: str | None = None  # the RRULE value, e.g. "FREQ=WEEKLY;COUNT=10"
    rdates: list[str] = field(default_factory=list)  # UTC ISO 8601
    exdates: list[str] = field(default_factory=list)  # UTC ISO 8601
    series_end: dt.datetime | None = None  # recurring: end of the last occurrence, None = open
    last_modified: dt.datetime | None = None
    sequence: int = 0

    @property
    def recurring(self) -> bool:
        return bool(self.rrule or self.rdates)


@dataclass(slots=True)
class Resource:
    """One provider object: what is created, replaced and deleted as a unit."""

    provider_id: str  # CalDAV: the resource href; Google/Graph: the event id
    etag: str | None
    raw: str  # the original payload
    raw_format: RawFormat
    events: list[Event]


@dataclass(slots=True)
class Calendar:
    """A calendar (collection) as the provider lists it."""

    id: str  # CalDAV: the collection href; Google/Graph: the calendar id
    name: str
    color: str | None = None
    components: tuple[str, ...] = ("VEVENT",)
    ctag: str | None = None
    sync_token: str | None = None
    supports_sync_collection: bool = True
    read_only: bool = False


@dataclass(slots=True)
class ChangePage:
    """One page of changes, applied to the store atomically together with `cursor`.

    `cursor` is the position to resume from once this page is committed; None means the page is
    not a resumable point (Google hands out its sync token only with the last page), so the
    previous cursor stays and a rerun replays from there, which is harmless.
    `complete` marks the last page of this run. On a full listing (`full=True` on the pages),
    anything the store holds for the calendar that no page of the run mentioned is deleted when
    the complete page is committed.
    """

    upserts: list[Resource] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)  # provider ids
    cursor: str | None = None
    complete: bool = False
    full: bool = False


@dataclass(frozen=True, slots=True)
class Window:
    """The time range a connection mirrors; events wholly outside it are not stored."""

    start: dt.datetime
    end: dt.datetime

    @classmethod
    def around(cls, now: dt.datetime, past_days: int, future_days: int) -> Window:
        return cls(now - dt.timedelta(days=past_days), now + dt.timedelta(days=future_days))

    def admits(self, event: Event) -> bool:
        """True when the event, or for a series any of its occurrences, may overlap the window."""
        if event.start is None:
            return True
        if event.recurring:
            return event.start < self.end and (
                event.series_end is None or event.series_end >= self.start
            )
        end = event.end or event.start
        return event.start < self.end and end >= self.start

    def admits_resource(self, resource: Resource) -> bool:
        """A resource is kept when any of its components (master or override) may overlap."""
        return not resource.events or any(self.admits(e) for e in resource.events)
