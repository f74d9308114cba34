"""All of the simulator's state, in memory, and the operations on it.

`GraphSimulator` holds users (mailboxes), their calendars and events, the identity platform's
clients and tokens, subscriptions, delta tokens and the request controls. Tests may drive it
directly from Python (create events, advance the clock, invalidate delta tokens) while the
HTTP app serves it; the admin API (`admin.py`) exposes the same operations over HTTP for tests
that run the simulator as a process.

Every change to an event bumps its calendar's sequence number and is logged with it, which is
what delta rounds use to find changes to events outside their window, and is handed to the
notifier, which queues change notifications for matching subscriptions.
"""

from __future__ import annotations

import bisect
import datetime as dt
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from calsync.testing.microsoft import events as ev
from calsync.testing.microsoft.clock import UTC, SimClock, format_local
from calsync.testing.microsoft.delta import (
    DeltaCache,
    DeltaToken,
    Entry,
    Round,
    diff,
    new_token_id,
    parse_skiptoken,
)
from calsync.testing.microsoft.errors import GraphError, bad_request, not_found
from calsync.testing.microsoft.identity import IdentityState
from calsync.testing.microsoft.notify import Notifier
from calsync.testing.microsoft.throttle import RequestControl

DEFAULT_CALENDAR_NAME = "Calendar"
COLORS = (
    "auto",
    "lightBlue",
    "lightGreen",
    "lightOrange",
    "lightGray",
    "lightYellow",
    "lightTeal",
    "lightPink",
    "lightBrown",
    "lightRed",
    "maxColor",
)
SYNC_RESET_MESSAGES = {
    "syncstatenotfound": "The sync state generation is not found. The delta token is expired "
    "and data must be synchronized again.",
    "resyncrequired": "The delta token is no longer valid; the client must reset its sync "
    "state and synchronize again.",
}


def seeded_uuid(seed: str) -> str:
    """A UUID that is the same for the same seed (ids of users and tenants in test data)."""
    return str(uuid.UUID(int=random.Random(seed).getrandbits(128)))  # noqa: S311


class SyncReset(GraphError):
    """A delta token the server no longer accepts; carries what the Location header needs."""

    def __init__(
        self, status: int, code: str, calendar: str | None, window: tuple[dt.datetime, ...] | None
    ) -> None:
        message = SYNC_RESET_MESSAGES.get(code.lower(), "The delta token is no longer valid.")
        super().__init__(status, code, message)
        self.calendar = calendar
        self.window = window


@dataclass
class User:
    id: str
    address: str
    name: str
    default_calendar: str = ""


@dataclass
class CalendarRecord:
    id: str
    owner: str
    name: str
    color: str = "auto"
    hex_color: str = ""
    is_default: bool = False
    change_key: str = ""
    shares: dict[str, bool] = field(default_factory=dict)  # user id -> can edit
    events: dict[str, ev.StoredEvent] = field(default_factory=dict)
    seq: int = 0
    log: list[tuple[int, str]] = field(default_factory=list)  # (seq, event id), ascending


class GraphSimulator:
    """An in-memory Microsoft 365 tenant: mailboxes, calendars, events, apps, tokens."""

    def __init__(
        self,
        *,
        seed: str = "calsync",
        tenant_id: str | None = None,
        default_page_size: int = 10,
        max_page_size: int = 1000,
    ) -> None:
        self.seed = seed
        self.tenant_id = tenant_id or seeded_uuid(seed)
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self.clock = SimClock()
        self.identity = IdentityState(self.clock)
        self.control = RequestControl(self.clock)
        self.delta = DeltaCache()
        self.notifier = Notifier(self)
        self.users: dict[str, User] = {}
        self.calendars: dict[str, CalendarRecord] = {}
        self.replay_rounds = 0
        self.base_url = ""  # set by `running`; used in webLink and links when known
        self._by_address: dict[str, str] = {}
        self._event_calendar: dict[str, str] = {}
        self._counter = 0
        self._version = 0

    # -- identities --------------------------------------------------------------------------

    def _next(self, kind: str) -> str:
        self._counter += 1
        return ev.opaque_id(self.seed, kind, str(self._counter))

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def add_user(
        self, address: str, name: str | None = None, *, user_id: str | None = None
    ) -> User:
        key = address.strip().lower()
        if not key or "@" not in key:
            raise bad_request(f"'{address}' is not an email address.")
        if key in self._by_address:
            raise GraphError(409, "ErrorUserExists", f"The user '{address}' already exists.")
        self._counter += 1
        uid = user_id or seeded_uuid(f"{self.seed}:{self._counter}")
        user = User(uid, address.strip(), name or address.split("@")[0].title())
        self.users[uid] = user
        self._by_address[key] = uid
        calendar = self._new_calendar(user, DEFAULT_CALENDAR_NAME, "auto", "", default=True)
        user.default_calendar = calendar.id
        return user

    def find_user(self, ref: str) -> User | None:
        if ref in self.users:
            return self.users[ref]
        uid = self._by_address.get(ref.strip().lower())
        return self.users.get(uid) if uid else None

    def user(self, ref: str) -> User:
        found = self.find_user(ref)
        if found is None:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{ref}' is invalid.")
        return found

    # -- calendars ---------------------------------------------------------------------------

    def _new_calendar(
        self, user: User, name: str, color: str, hex_color: str, *, default: bool = False
    ) -> CalendarRecord:
        cal_id = self._next("calendar")
        record = CalendarRecord(
            id=cal_id,
            owner=user.id,
            name=name,
            color=color,
            hex_color=hex_color,
            is_default=default,
            change_key=ev.change_key(cal_id, self._next_version()),
        )
        self.calendars[cal_id] = record
        return record

    def add_calendar(
        self, user_ref: str, name: str, *, color: str = "auto", hex_color: str = ""
    ) -> CalendarRecord:
        user = self.user(user_ref)
        if not isinstance(name, str) or not name.strip():
            raise bad_request("The calendar needs a name.")
        if color not in COLORS:
            raise bad_request(f"'{color}' is not a calendar color.", "BadRequest")
        if hex_color and (
            not hex_color.startswith("#")
            or len(hex_color) != 7
            or any(c not in "0123456789abcdefABCDEF" for c in hex_color[1:])
        ):
            raise bad_request(f"'{hex_color}' is not a hex color.", "BadRequest")
        taken = {c.name.lower() for c in self.calendars.values() if c.owner == user.id}
        if name.strip().lower() in taken:
            raise GraphError(
                409, "ErrorFolderExists", "A folder with the specified name already exists."
            )
        return self._new_calendar(user, name.strip(), color, hex_color)

    def remove_calendar(self, calendar_id: str) -> None:
        record = self.calendars.get(calendar_id)
        if record is None:
            raise not_found()
        if record.is_default:
            raise GraphError(
                400, "ErrorCannotDeleteObject", "The default calendar cannot be deleted."
            )
        for event_id in record.events:
            self._event_calendar.pop(event_id, None)
        del self.calendars[calendar_id]

    def share_calendar(self, calendar_id: str, with_user: str, *, can_edit: bool = False) -> None:
        record = self.calendars.get(calendar_id)
        if record is None:
            raise not_found()
        other = self.user(with_user)
        if other.id == record.owner:
            raise bad_request("A calendar cannot be shared with its owner.")
        record.shares[other.id] = can_edit

    def unshare_calendar(self, calendar_id: str, with_user: str) -> None:
        record = self.calendars.get(calendar_id)
        if record is None:
            raise not_found()
        record.shares.pop(self.user(with_user).id, None)

    def calendars_for(self, user_ref: str) -> list[CalendarRecord]:
        """What `GET /me/calendars` lists: own calendars (default first), then shared ones."""
        user = self.user(user_ref)
        own = [c for c in self.calendars.values() if c.owner == user.id]
        own.sort(key=lambda c: not c.is_default)
        shared = [c for c in self.calendars.values() if user.id in c.shares]
        return own + shared

    def calendar_for(self, user_ref: str, calendar_id: str | None) -> CalendarRecord:
        user = self.user(user_ref)
        if calendar_id is None:
            return self.calendars[user.default_calendar]
        record = self.calendars.get(calendar_id)
        if record is None or (record.owner != user.id and user.id not in record.shares):
            raise not_found()
        return record

    def can_edit(self, user_id: str, record: CalendarRecord) -> bool:
        return record.owner == user_id or record.shares.get(user_id, False)

    def render_calendar(self, record: CalendarRecord, user_id: str) -> dict[str, Any]:
        owner = self.users[record.owner]
        return {
            "id": record.id,
            "name": record.name,
            "color": record.color,
            "hexColor": record.hex_color,
            "isDefaultCalendar": record.is_default and record.owner == user_id,
            "changeKey": record.change_key,
            "canShare": record.owner == user_id,
            "canViewPrivateItems": record.owner == user_id,
            "canEdit": self.can_edit(user_id, record),
            "allowedOnlineMeetingProviders": ["teamsForBusiness"],
            "defaultOnlineMeetingProvider": "teamsForBusiness",
            "isTallyingResponses": True,
            "isRemovable": not record.is_default,
            "owner": {"name": owner.name, "address": owner.address},
        }

    # -- events ------------------------------------------------------------------------------

    def _editable(self, user_ref: str, calendar_id: str | None) -> tuple[User, CalendarRecord]:
        user = self.user(user_ref)
        record = self.calendar_for(user.id, calendar_id)
        if not self.can_edit(user.id, record):
            raise GraphError(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        return user, record

    def _commit(
        self,
        record: CalendarRecord,
        event: ev.StoredEvent | None,
        event_id: str,
        change: str,
        notify_id: str | None = None,
    ) -> None:
        if event is None:
            record.events.pop(event_id, None)
            self._event_calendar.pop(event_id, None)
        else:
            record.events[event_id] = event
            self._event_calendar[event_id] = record.id
        record.seq += 1
        record.log.append((record.seq, event_id))
        etag = event.change_key if event is not None else ""
        self.notifier.event_changed(record.id, notify_id or event_id, etag, change)

    def create_event(
        self, user_ref: str, calendar_id: str | None, body: Mapping[str, Any], *, admin: bool = True
    ) -> ev.StoredEvent:
        """A new event (single or series master) in a calendar (None: the default one)."""
        _, record = self._editable(user_ref, calendar_id)
        owner = self.users[record.owner]
        event_id = self._next("event")
        now = self.clock.now()
        event = ev.build_event(
            body,
            event_id=event_id,
            calendar_id=record.id,
            ical_uid=ev.global_object_id(self.seed, event_id, created=now),
            owner=(owner.name, owner.address),
            now=now,
            version=self._next_version(),
            admin=admin,
        )
        self._commit(record, event, event_id, "created")
        return event

    def _locate(
        self, user_ref: str, event_id: str
    ) -> tuple[User, CalendarRecord, ev.StoredEvent, str | None]:
        """(user, calendar, stored event, occurrence key or None) for an event or occurrence id."""
        user = self.user(user_ref)
        key = None
        master_id = event_id
        split = ev.split_occurrence_id(event_id)
        if split is not None:
            master_id, key = split
        calendar_id = self._event_calendar.get(master_id)
        if calendar_id is None:
            raise not_found()
        record = self.calendar_for(user.id, calendar_id)
        event = record.events[master_id]
        if key is not None and key not in event.overrides and not ev.is_occurrence_of(event, key):
            raise not_found()
        if key is not None and key in event.deleted:
            raise not_found()
        return user, record, event, key

    def get_event(self, user_ref: str, event_id: str) -> ev.StoredEvent | ev.Instance:
        _, _, event, key = self._locate(user_ref, event_id)
        if key is None:
            return event
        original = dt.datetime.fromisoformat(key)
        span = ev.instances(
            event, original - dt.timedelta(days=800), original + dt.timedelta(days=800)
        )
        for item in span:
            if item.original_key == key:
                return item
        raise not_found()

    def update_event(
        self, user_ref: str, event_id: str, body: Mapping[str, Any], *, admin: bool = True
    ) -> ev.StoredEvent:
        """PATCH an event; an occurrence id makes (or changes) an exception of its series."""
        user, record, event, key = self._locate(user_ref, event_id)
        if not self.can_edit(user.id, record):
            raise GraphError(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        now = self.clock.now()
        if key is not None:
            fields = ev.override_fields(body, admin)
            previous = event.overrides.get(key)
            merged = {**(previous.fields if previous else {}), **fields}
            override = ev.Override(
                key=key,
                change_key=ev.change_key(event_id, self._next_version()),
                created=previous.created if previous else now,
                modified=now,
                fields=merged,
            )
            updated = ev.replaced(event, overrides={**event.overrides, key: override})
            self._commit(record, updated, event.id, "updated", notify_id=event_id)
            return updated
        if not isinstance(body, Mapping):
            raise bad_request("The request body must be a JSON object.", "BadRequest")
        merged_input = {**ev.to_input(event), **body}
        rebuilt = ev.build_event(
            merged_input,
            event_id=event.id,
            calendar_id=record.id,
            ical_uid=event.ical_uid,
            owner=event.organizer,
            now=now,
            version=self._next_version(),
            admin=True,
        )
        keep_exceptions = (
            rebuilt.recurrence == event.recurrence
            and rebuilt.start == event.start
            and rebuilt.end == event.end
        )
        updated = ev.replaced(
            rebuilt,
            created=event.created,
            overrides=event.overrides if keep_exceptions else {},
            deleted=event.deleted if keep_exceptions else frozenset(),
            organizer=event.organizer
            if not admin or "organizer" not in body
            else rebuilt.organizer,
            is_cancelled=rebuilt.is_cancelled if admin else event.is_cancelled,
        )
        self._commit(record, updated, event.id, "updated")
        return updated

    def delete_event(self, user_ref: str, event_id: str, *, mark_cancelled: bool = False) -> None:
        """Delete an event, or one occurrence of a series (organizer cancels it).

        `mark_cancelled` keeps the occurrence (or single event) with `isCancelled: true`, the way
        an attendee's calendar shows a meeting the organizer cancelled.
        """
        user, record, event, key = self._locate(user_ref, event_id)
        if not self.can_edit(user.id, record):
            raise GraphError(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        if key is None:
            if mark_cancelled:
                updated = ev.replaced(
                    event,
                    is_cancelled=True,
                    modified=self.clock.now(),
                    change_key=ev.change_key(event.id, self._next_version()),
                )
                self._commit(record, updated, event.id, "updated")
            else:
                self._commit(record, None, event.id, "deleted")
            return
        if mark_cancelled:
            self.update_event(user.id, event_id, {"isCancelled": True}, admin=True)
            return
        overrides = {k: v for k, v in event.overrides.items() if k != key}
        updated = ev.replaced(event, overrides=overrides, deleted=event.deleted | {key})
        self._commit(record, updated, event.id, "deleted", notify_id=event_id)

    def generate_events(
        self,
        user_ref: str,
        calendar_id: str | None,
        count: int,
        *,
        seed: int = 1,
        start: dt.datetime | None = None,
        past_days: int = 300,
        future_days: int = 700,
        recurring_every: int = 10,
    ) -> dict[str, int]:
        """`count` events, the same ones for the same arguments: mostly single events in four
        zones, some all-day, and every `recurring_every`-th a weekly, daily or monthly series
        (some with a moved and a cancelled occurrence)."""
        if count < 0 or count > 200_000:
            raise bad_request("count must be between 0 and 200000.")
        rng = random.Random(seed)  # noqa: S311 - reproducible test data
        base = (
            (start or self.clock.now()).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        )
        zones = ("UTC", "Europe/Berlin", "Pacific Standard Time", "Asia/Tokyo")
        made = {"events": 0, "series": 0, "exceptions": 0, "cancelled": 0}
        for n in range(count):
            zone_name = zones[n % len(zones)]
            zone = ev.When(dt.datetime(2000, 1, 1), zone_name).tz
            offset = dt.timedelta(
                days=rng.randint(-past_days, future_days), hours=rng.randint(0, 10)
            )
            local = (base + offset).astimezone(zone).replace(tzinfo=None, minute=0)
            body: dict[str, Any] = {
                "subject": f"Event {n} · {rng.choice(['Review', 'Sync', 'Lunch', 'Call'])}",
                "body": {"contentType": "text", "content": f"Generated event number {n}."},
                "location": {"displayName": rng.choice(["", "Room 1", "Online", "Café"])},
                "showAs": rng.choice(["busy", "busy", "tentative", "free"]),
            }
            series = recurring_every > 0 and n % recurring_every == recurring_every - 1
            if not series and n % 7 == 3:
                day = local.date()
                body.update(
                    isAllDay=True,
                    start={"dateTime": f"{day}T00:00:00", "timeZone": zone_name},
                    end={
                        "dateTime": f"{day + dt.timedelta(days=1)}T00:00:00",
                        "timeZone": zone_name,
                    },
                )
            else:
                finish = local + dt.timedelta(minutes=rng.choice([30, 45, 60, 90]))
                body.update(
                    start={"dateTime": format_local(local), "timeZone": zone_name},
                    end={"dateTime": format_local(finish), "timeZone": zone_name},
                )
            if series:
                kind = rng.choice(["weekly", "daily", "absoluteMonthly"])
                pattern: dict[str, Any] = {"type": kind, "interval": 1}
                if kind == "weekly":
                    pattern["daysOfWeek"] = [local.strftime("%A").lower()]
                if kind == "absoluteMonthly":
                    pattern["dayOfMonth"] = local.day
                body["recurrence"] = {
                    "pattern": pattern,
                    "range": {
                        "type": "numbered",
                        "startDate": local.date().isoformat(),
                        "numberOfOccurrences": rng.choice([5, 10, 20]),
                    },
                }
                body["attendees"] = [
                    {
                        "type": "required",
                        "emailAddress": {"address": f"guest{n}@example.com", "name": f"Guest {n}"},
                    }
                ]
            event = self.create_event(user_ref, calendar_id, body)
            made["events"] += 1
            if series:
                made["series"] += 1
                far = dt.timedelta(days=3660)
                items = list(
                    ev.instances(event, event.start.instant() - far, event.start.instant() + far)
                )
                if len(items) >= 4 and n % 3 == 0:
                    moved = items[1]
                    when = moved.start + dt.timedelta(hours=2)
                    self.update_event(
                        user_ref,
                        moved.id,
                        {
                            "subject": "Moved occurrence",
                            "start": {
                                "dateTime": format_local(when.replace(tzinfo=None)),
                                "timeZone": "UTC",
                            },
                            "end": {
                                "dateTime": format_local(
                                    (when + (moved.end - moved.start)).replace(tzinfo=None)
                                ),
                                "timeZone": "UTC",
                            },
                        }
                        if not event.is_all_day
                        else {"subject": "Moved occurrence"},
                    )
                    self.delete_event(user_ref, items[2].id)
                    made["exceptions"] += 1
                    made["cancelled"] += 1
        return made

    def view(
        self, user_ref: str, calendar_id: str | None, lo: dt.datetime, hi: dt.datetime
    ) -> list[ev.Instance]:
        """The calendar view [lo, hi): what calendarView (and a full delta round) returns."""
        record = self.calendar_for(user_ref, calendar_id)
        found: list[ev.Instance] = []
        for event in record.events.values():
            found.extend(ev.instances(event, lo, hi))
        found.sort(key=lambda i: (i.start, i.id))
        return found

    # -- delta -------------------------------------------------------------------------------

    def _issue(
        self,
        user_id: str,
        record: CalendarRecord,
        window: tuple[dt.datetime, dt.datetime],
        current: list[ev.Instance],
        entries: list[Entry],
    ) -> Round:
        token = DeltaToken(
            id=new_token_id(),
            user=user_id,
            calendar=record.id,
            window=window,
            snapshot={i.id: (i.etag, i.event.id) for i in current},
            seq=record.seq,
            delivered=tuple(e if isinstance(e, str) else e.id for e in entries),
        )
        round_ = Round(new_token_id(), user_id, record.id, window, entries, token)
        self.delta.add_token(token)
        self.delta.add_round(round_)
        return round_

    def delta_start(
        self, user_ref: str, calendar_id: str | None, lo: dt.datetime, hi: dt.datetime
    ) -> Round:
        user = self.user(user_ref)
        record = self.calendar_for(user.id, calendar_id)
        current = self.view(user.id, record.id, lo, hi)
        return self._issue(user.id, record, (lo, hi), current, list(current))

    def delta_follow(self, user_ref: str, token_id: str) -> Round:
        user = self.user(user_ref)
        token = self.delta.token(token_id)
        if token is None or token.user != user.id:
            raise SyncReset(410, "syncStateNotFound", None, None)
        if token.invalid is not None:
            raise SyncReset(*token.invalid, token.calendar, token.window)
        record = self.calendar_for(user.id, token.calendar)
        lo, hi = token.window
        current = self.view(user.id, record.id, lo, hi)
        start = bisect.bisect_right(record.log, (token.seq, "\U0010ffff"))
        changed = {event_id for _, event_id in record.log[start:]}
        replay = self.replay_rounds > 0
        if replay:
            self.replay_rounds -= 1
        entries = diff(current, token, changed, replay)
        return self._issue(user.id, record, token.window, current, entries)

    def delta_page(self, user_ref: str, skip: str) -> tuple[Round, int]:
        user = self.user(user_ref)
        parsed = parse_skiptoken(skip)
        found = self.delta.round(parsed[0]) if parsed else None
        if parsed is None or found is None or found.user != user.id:
            raise SyncReset(410, "syncStateNotFound", None, None)
        if found.invalid is not None:
            raise SyncReset(*found.invalid, found.calendar, found.window)
        self.calendar_for(user.id, found.calendar)
        return found, parsed[1]

    def invalidate_delta_tokens(
        self,
        *,
        calendar_id: str | None = None,
        user_ref: str | None = None,
        status: int = 410,
        code: str = "syncStateNotFound",
    ) -> int:
        user_id = self.user(user_ref).id if user_ref else None
        return self.delta.invalidate(status, code, calendar=calendar_id, user=user_id)

    def replay_next(self, rounds: int = 1) -> None:
        """The next `rounds` delta rounds also repeat what the previous round delivered."""
        self.replay_rounds = max(0, rounds)

    # -- subscriptions -----------------------------------------------------------------------

    def subscription_target(self, resource: str, user_id: str) -> tuple[str, str]:
        """(calendar id, owner id) a subscription resource watches."""
        path = resource.strip().lstrip("/")
        parts = [p for p in path.replace("('", "/").replace("')", "").split("/") if p]
        lowered = [p.lower() for p in parts]
        user = self.user(user_id)
        if lowered[:1] == ["users"] and len(parts) >= 2:
            target = self.find_user(parts[1])
            if target is None:
                raise bad_request(f"Resource '{resource}' names an unknown user.", "InvalidRequest")
            if target.id != user.id:
                raise GraphError(
                    403, "ExtensionError", "Access is denied to the requested resource."
                )
            lowered, parts = ["me", *lowered[2:]], ["me", *parts[2:]]
        if lowered in (["me", "events"], ["me", "calendar", "events"]):
            return user.default_calendar, user.id
        if len(lowered) == 4 and lowered[:2] == ["me", "calendars"] and lowered[3] == "events":
            record = self.calendar_for(user.id, parts[2])
            return record.id, record.owner
        raise bad_request(
            f"Resource '{resource}' is not supported for subscriptions.", "InvalidRequest"
        )

    # -- admin -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything but the clock's offset (for reusing one process across tests)."""
        self.users.clear()
        self.calendars.clear()
        self._by_address.clear()
        self._event_calendar.clear()
        self.delta.clear()
        self.identity = IdentityState(self.clock)
        self.control = RequestControl(self.clock)
        self.notifier.subscriptions.clear()
        self.notifier.endpoints.clear()
        self.notifier.log.clear()
        self.replay_rounds = 0

    def summary(self) -> dict[str, Any]:
        return {
            "tenantId": self.tenant_id,
            "now": self.clock.now().isoformat(),
            "users": len(self.users),
            "calendars": len(self.calendars),
            "events": sum(len(c.events) for c in self.calendars.values()),
            "subscriptions": len(self.notifier.subscriptions),
            "deltaTokens": len(self.delta.tokens),
        }
