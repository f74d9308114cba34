"""Changing events: insert, patch, replace, delete, and exceptions of recurring series.

Google addresses an instance of a series by an id of its own (`<master id>_<start stamp>`)
whether or not it was ever changed; writing to such an id creates the exception for that
instance, and deleting it creates a cancelled exception. Deleting a master cancels its
exceptions too, each reported as cancelled. A deleted event stays as a tombstone: reading it
answers it with `status: "cancelled"`, and changing or deleting it again answers 410 `deleted`.
`sequence` goes up when the times or the recurrence change, as iCalendar's SEQUENCE does.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from calsync.testing.google import listing
from calsync.testing.google.errors import GoogleError, bad_request, not_found
from calsync.testing.google.events import (
    EVENT_ID,
    INSTANCE_ID,
    StoredEvent,
    order_key,
    validate_body,
)
from calsync.testing.google.model import CalendarData
from calsync.testing.google.times import TimeValue, is_occurrence, parse_time

_ALPHABET = "abcdefghijklmnopqrstuv0123456789"  # base32hex, as Google's event ids


def random_event_id(length: int = 26) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _deleted() -> GoogleError:
    return GoogleError(410, "deleted", "Resource has been deleted")


def _from_stamp(stamp: str, like: TimeValue) -> TimeValue | None:
    try:
        if len(stamp) == 8:
            return TimeValue(dt.datetime.strptime(stamp, "%Y%m%d").date(), None, None)
        moment = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return TimeValue(None, moment, like.zone_name)


class EventWriter:
    """The write operations; every change takes a new change number from `next_seq`."""

    def __init__(self, clock: Callable[[], float], next_seq: Callable[[], int]) -> None:
        self._clock = clock
        self._next_seq = next_seq

    def insert(
        self, calendar: CalendarData, body: Mapping[str, Any], *, admin: bool
    ) -> StoredEvent:
        """A new event. Admin inserts may also set `organizer` and `iCalUID`."""
        if not isinstance(body, Mapping):
            raise bad_request("Invalid event body.", reason="parseError")
        given = validate_body(body, calendar.time_zone, allow_organizer=admin)
        event_id = body.get("id")
        if event_id is not None:
            if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
                raise bad_request("Invalid resource id value.")
            if event_id in calendar.events:
                raise GoogleError(409, "duplicate", "The requested identifier already exists.")
        else:
            event_id = random_event_id()
        ical_uid = f"{event_id}@google.com"
        if admin and isinstance(body.get("iCalUID"), str) and body["iCalUID"]:
            ical_uid = body["iCalUID"][:1024]
        now = self._clock()
        event = StoredEvent(
            id=event_id,
            calendar_id=calendar.id,
            calendar_zone=calendar.time_zone,
            owner=calendar.owner,
            status="confirmed" if given.status == "cancelled" else given.status,
            ical_uid=ical_uid,
            created=now,
            updated=now,
            seq=self._next_seq(),
            sequence=given.sequence or 0,
            start=given.start,
            end=given.end,
            recurrence=given.recurrence,
            parsed_recurrence=given.parsed_recurrence,
            fields=given.fields,
            organizer=given.organizer,
            order=order_key(event_id),
        )
        calendar.events[event_id] = event
        return event

    def exception(self, calendar: CalendarData, body: Mapping[str, Any]) -> StoredEvent:
        """An exception given as `recurringEventId` + `originalStartTime` (admin)."""
        master = calendar.events.get(str(body.get("recurringEventId")))
        if master is None or not master.is_master or master.cancelled:
            raise bad_request("recurringEventId does not name a live recurring event.")
        original = self.original(master, body.get("originalStartTime"))
        patch = {
            k: v
            for k, v in body.items()
            if k not in ("recurringEventId", "originalStartTime", "id")
        }
        if patch.get("status") == "cancelled":
            return self._instance(calendar, master, original, {}, admin=True, cancel=True)
        return self._instance(calendar, master, original, patch, admin=True)

    def original(self, master: StoredEvent, value: Any) -> TimeValue:
        """An `originalStartTime` checked to be one of the master's instance starts."""
        assert master.start is not None and master.parsed_recurrence is not None
        original = parse_time(value, field="originalStartTime", calendar_zone=master.calendar_zone)
        if original.instant is not None and original.zone_name is None:
            original = TimeValue(None, original.instant, master.start.zone_name)
        if not is_occurrence(
            master.parsed_recurrence, master.start, master.calendar_zone, original
        ):
            raise bad_request("originalStartTime is not an instance of the recurring event.")
        return original

    def _instance(
        self,
        calendar: CalendarData,
        master: StoredEvent,
        original: TimeValue,
        patch: Mapping[str, Any],
        *,
        admin: bool,
        cancel: bool = False,
    ) -> StoredEvent:
        """Create or change the exception standing for one instance of `master`."""
        instance_id = f"{master.id}_{original.stamp()}"
        current = calendar.events.get(instance_id)
        if current is not None:
            if current.cancelled:
                raise _deleted()
            base = current.resource()
        else:
            base = listing.instance_resource(
                master, master.resource(), original, listing.duration(master)
            )
        base.pop("sequence", None)  # only an explicit sequence in the patch counts
        merged = {**base, **patch}
        merged.pop("recurrence", None)
        given = validate_body(merged, calendar.time_zone, allow_organizer=admin)
        seq = self._next_seq()
        now = self._clock()
        if current is None:
            event = StoredEvent(
                id=instance_id,
                calendar_id=calendar.id,
                calendar_zone=calendar.time_zone,
                owner=calendar.owner,
                status="confirmed",
                ical_uid=master.ical_uid,
                created=now,
                updated=now,
                seq=seq,
                sequence=master.sequence,
                recurring_event_id=master.id,
                original_start=original,
                order=order_key(instance_id),
            )
            calendar.events[instance_id] = event
        else:
            event = current
            event.touch(seq, now)
        moved = current is not None and (event.start, event.end) != (given.start, given.end)
        event.status = "cancelled" if cancel else given.status
        event.start, event.end = given.start, given.end
        event.fields = given.fields
        event.organizer = given.organizer or master.organizer
        if given.sequence is not None:
            event.sequence = given.sequence
        elif moved:
            event.sequence += 1
        return event

    def find(
        self, calendar: CalendarData, event_id: str
    ) -> tuple[StoredEvent | None, StoredEvent | None, TimeValue | None]:
        """(stored event, None, None), or (None, master, original start) for an instance of a
        series that has no exception yet; 404 for anything else."""
        event = calendar.events.get(event_id)
        if event is not None:
            return event, None, None
        match = INSTANCE_ID.fullmatch(event_id)
        if match is not None:
            master = calendar.events.get(match.group(1))
            if master is not None and master.is_master and not master.cancelled:
                assert master.start is not None and master.parsed_recurrence is not None
                original = _from_stamp(match.group(2), master.start)
                if original is not None and is_occurrence(
                    master.parsed_recurrence, master.start, master.calendar_zone, original
                ):
                    return None, master, original
        raise not_found()

    def patch(
        self,
        calendar: CalendarData,
        event_id: str,
        patch: Any,
        *,
        admin: bool,
        replace_all: bool,
    ) -> StoredEvent:
        """PATCH (merge) or PUT (`replace_all`) of an event, exception or instance id."""
        if not isinstance(patch, Mapping):
            raise bad_request("Invalid event body.", reason="parseError")
        event, master, original = self.find(calendar, event_id)
        cancel = patch.get("status") == "cancelled"
        if event is None:
            assert master is not None and original is not None
            return self._instance(
                calendar, master, original, {} if cancel else patch, admin=admin, cancel=cancel
            )
        if event.cancelled:
            raise _deleted()
        if cancel:
            self.cancel(calendar, event)
            return event
        if event.recurring_event_id is not None:
            assert event.original_start is not None
            owner = calendar.events[event.recurring_event_id]
            return self._instance(calendar, owner, event.original_start, patch, admin=admin)
        if replace_all:
            body = dict(patch)
        else:
            body = event.resource()
            body.pop("sequence", None)
            body.update(patch)
        given = validate_body(body, calendar.time_zone, allow_organizer=admin)
        moved = (event.start, event.end, event.recurrence) != (
            given.start,
            given.end,
            given.recurrence,
        )
        event.touch(self._next_seq(), self._clock())
        event.start, event.end = given.start, given.end
        event.recurrence, event.parsed_recurrence = given.recurrence, given.parsed_recurrence
        event.fields = given.fields
        event.status = given.status
        if given.organizer is not None:
            event.organizer = given.organizer
        if given.sequence is not None and given.sequence >= event.sequence:
            event.sequence = given.sequence
        elif moved:
            event.sequence += 1
        return event

    def cancel(self, calendar: CalendarData, event: StoredEvent) -> None:
        seq = self._next_seq()
        now = self._clock()
        event.status = "cancelled"
        event.touch(seq, now)
        if event.is_master:
            for other in calendar.events.values():
                if other.recurring_event_id == event.id and not other.cancelled:
                    other.status = "cancelled"
                    other.touch(seq, now)

    def delete(self, calendar: CalendarData, event_id: str) -> StoredEvent:
        event, master, original = self.find(calendar, event_id)
        if event is None:
            assert master is not None and original is not None
            return self._instance(calendar, master, original, {}, admin=True, cancel=True)
        if event.cancelled:
            raise _deleted()
        self.cancel(calendar, event)
        return event

    def cancel_instance(
        self, calendar: CalendarData, master_id: str, original_start: Any
    ) -> StoredEvent:
        master = calendar.events.get(master_id)
        if master is None or not master.is_master or master.cancelled:
            raise not_found()
        original = self.original(master, original_start)
        return self._instance(calendar, master, original, {}, admin=True, cancel=True)
