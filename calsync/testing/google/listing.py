"""Which events a listing shows, and recurring masters expanded into instances.

`events.list` without `singleEvents` shows the stored resources: single events, recurring
masters with their `recurrence` lines, and exceptions with `recurringEventId` and
`originalStartTime`. Cancelled events are left out unless `showDeleted` is set, except that
cancelled instances of a live series still appear, as Google documents ("cancelled instances of
recurring events (but not the underlying recurring event) will still be included if showDeleted
and singleEvents are both False").

With `singleEvents=true` masters are expanded into instances (id `<master>_<start stamp>`,
`recurringEventId`, `originalStartTime`, no `recurrence`) and exceptions take the place of the
instance they replace. Open-ended series are expanded up to `timeMax`, or up to a horizon
(by default two years after now) when there is none, and at most `MAX_INSTANCES` instances.

Time filters follow Google's definitions: `timeMin` bounds an event's end (exclusive) and
`timeMax` its start (exclusive); a master passes when any of its instances does.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from calsync.testing.google.errors import GoogleError, bad_request, invalid_parameter
from calsync.testing.google.events import StoredEvent
from calsync.testing.google.model import PALETTE, ROLES, CalendarData, ListEntry, User
from calsync.testing.google.paging import Pager, PageState, Params, SyncState
from calsync.testing.google.times import (
    TimeValue,
    first_after,
    from_epoch,
    occurrences,
    parse_rfc3339,
    rfc3339_utc,
)

EVENTS_DEFAULT_PAGE: Final = 250
EVENTS_MAX_PAGE: Final = 2500
LIST_DEFAULT_PAGE: Final = 100
LIST_MAX_PAGE: Final = 250
SYNC_FORBIDDEN: Final = (
    "iCalUID",
    "orderBy",
    "privateExtendedProperty",
    "q",
    "sharedExtendedProperty",
    "timeMin",
    "timeMax",
    "updatedMin",
)
SYNC_BOUND: Final = ("singleEvents", "showDeleted", "showHiddenInvitations")
FREE_BUSY_FIELDS: Final = ("kind", "etag", "id", "status", "start", "end", "updated")
MAX_INSTANCES: Final = 2500
LATEST_START: Final = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


def shifted(value: TimeValue, delta: dt.timedelta) -> TimeValue:
    if value.day is not None:
        return TimeValue(value.day + dt.timedelta(days=delta.days), None, None)
    assert value.instant is not None
    return TimeValue(None, value.instant + delta, value.zone_name)


def duration(event: StoredEvent) -> dt.timedelta:
    if event.start is None or event.end is None:
        return dt.timedelta(0)
    return event.end.utc - event.start.utc


def overlaps(
    event: StoredEvent, time_min: dt.datetime | None, time_max: dt.datetime | None
) -> bool:
    """Whether the event (for a master: any instance) ends after timeMin and starts before
    timeMax."""
    start = event.start or event.original_start
    if start is None:
        return True
    if time_min is None and time_max is None:
        return True
    length = duration(event)
    if event.is_master and event.parsed_recurrence is not None:
        lower = (time_min - length) if time_min is not None else None
        if lower is None or start.utc > lower:
            first = start.utc
        else:
            found = first_after(event.parsed_recurrence, start, event.calendar_zone, lower)
            if found is None:
                return False
            first = found
        return time_max is None or first < time_max
    end = start.utc + length
    if time_max is not None and start.utc >= time_max:
        return False
    if time_min is not None:
        return end > time_min or (length == dt.timedelta(0) and start.utc >= time_min)
    return True


def instance_resource(
    master: StoredEvent, base: dict[str, Any], original: TimeValue, length: dt.timedelta
) -> dict[str, Any]:
    zone = master.calendar_zone
    out = dict(base)
    out.pop("recurrence", None)
    out["id"] = f"{master.id}_{original.stamp()}"
    out["start"] = original.render(zone)
    out["end"] = shifted(original, length).render(zone)
    out["recurringEventId"] = master.id
    out["originalStartTime"] = original.render(zone)
    return out


def expand(
    master: StoredEvent,
    exceptions: dict[str, StoredEvent],
    *,
    time_min: dt.datetime | None,
    time_max: dt.datetime | None,
    horizon: dt.datetime,
    show_deleted: bool,
) -> Iterator[tuple[dt.datetime, str, bytes]]:
    """(start, id, JSON) of a master's instances in the filters; exceptions replace theirs."""
    assert master.start is not None and master.parsed_recurrence is not None
    length = duration(master)
    base = master.resource()
    until = time_max if time_max is not None else horizon
    for original in occurrences(
        master.parsed_recurrence,
        master.start,
        master.calendar_zone,
        until=until,
        limit=MAX_INSTANCES,
    ):
        instance_id = f"{master.id}_{original.stamp()}"
        replaced = exceptions.get(instance_id)
        if replaced is not None:
            if replaced.cancelled and not show_deleted:
                continue
            if overlaps(replaced, time_min, time_max):
                start = (replaced.start or original).utc
                yield start, instance_id, replaced.listed_json()
            continue
        end = original.utc + length
        if time_min is not None and end <= time_min and (length or original.utc < time_min):
            continue
        resource = instance_resource(master, base, original, length)
        yield original.utc, instance_id, json.dumps(resource, separators=(",", ":")).encode()


def exceptions_of(events: Iterable[StoredEvent]) -> dict[str, dict[str, StoredEvent]]:
    """master id -> {exception id -> exception}."""
    found: dict[str, dict[str, StoredEvent]] = {}
    for event in events:
        if event.recurring_event_id is not None:
            found.setdefault(event.recurring_event_id, {})[event.id] = event
    return found


# --- request parameters -----------------------------------------------------------------------


def flag(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name)
    if not value:
        return False
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid_parameter(name, value)


def page_size(query: Mapping[str, str], default: int, maximum: int) -> int:
    """`maxResults`: above the maximum is lowered to it (as Google does); below 1 is a 400."""
    value = query.get("maxResults")
    if not value:
        return default
    try:
        size = int(value)
    except ValueError:
        raise invalid_parameter("maxResults", value) from None
    if size < 1:
        raise invalid_parameter("maxResults", value)
    return min(size, maximum)


def _params(query: Mapping[str, str], multi: Mapping[str, list[str]]) -> Params:
    """What a page token is bound to: every parameter but the paging ones."""
    pairs = [(k, v) for k, v in query.items() if k not in ("pageToken", "maxResults")]
    pairs += [(k, v) for k, values in multi.items() for v in values]
    return tuple(sorted(pairs))


def gone() -> GoogleError:
    return GoogleError(
        410, "fullSyncRequired", "Sync token is no longer valid, a full sync is required."
    )


# --- calendarList.list ------------------------------------------------------------------------


def entry_resource(
    user: User, entry: ListEntry, calendars: Mapping[str, CalendarData]
) -> dict[str, Any]:
    if entry.deleted:
        return {
            "kind": "calendar#calendarListEntry",
            "etag": f'"{1_700_000_000_000_000 + entry.seq}"',
            "id": entry.calendar_id,
            "deleted": True,
        }
    calendar = calendars[entry.calendar_id]
    background, foreground = PALETTE[entry.color_id]
    out: dict[str, Any] = {
        "kind": "calendar#calendarListEntry",
        "etag": f'"{1_700_000_000_000_000 + entry.seq}"',
        "id": calendar.id,
        "summary": calendar.summary,
        "timeZone": calendar.time_zone,
        "colorId": entry.color_id,
        "backgroundColor": background,
        "foregroundColor": foreground,
        "selected": True,
        "accessRole": entry.role,
        "defaultReminders": [],
    }
    if calendar.description:
        out["description"] = calendar.description
    if entry.summary_override:
        out["summaryOverride"] = entry.summary_override
    if entry.hidden:
        out["hidden"] = True
    if calendar.primary and calendar.id == user.email:
        out["primary"] = True
    return out


def list_calendars(
    user: User,
    calendars: Mapping[str, CalendarData],
    query: Mapping[str, str],
    pager: Pager,
    *,
    seq: int,
) -> bytes:
    """calendarList.list: paged; with syncToken the entries changed since, deleted included."""
    size = page_size(query, LIST_DEFAULT_PAGE, LIST_MAX_PAGE)
    params = _params(query, {})
    page_token = query.get("pageToken")
    if page_token:
        return pager.next_page(
            page_token,
            kind="calendarList",
            scope=user.email,
            user=user.email,
            params=params,
            size=size,
        )
    show_deleted = flag(query, "showDeleted")
    show_hidden = flag(query, "showHidden")
    role = query.get("minAccessRole")
    if role is not None and role not in ROLES:
        raise invalid_parameter("minAccessRole", role)
    sync_token = query.get("syncToken")
    if sync_token:
        if role is not None:
            raise bad_request("minAccessRole is not allowed together with syncToken.")
        state = pager.sync_state(sync_token)
        if state is None:
            raise gone()
        if state.kind != "calendarList" or state.scope != user.email:
            raise bad_request("The syncToken does not belong to this calendar list.")
        entries = [e for e in user.entries.values() if e.seq > state.seq]
    else:
        rank = {name: index for index, name in enumerate(ROLES)}
        entries = [
            e
            for e in user.entries.values()
            if (show_deleted or not e.deleted)
            and (show_hidden or not e.hidden)
            and (role is None or rank[e.role] <= rank[role])
        ]
    entries.sort(key=lambda e: e.seq)
    items = [
        json.dumps(entry_resource(user, e, calendars), separators=(",", ":")).encode()
        for e in entries
    ]
    token = pager.issue(SyncState("calendarList", user.email, seq, 0, ()))
    head = {"kind": "calendar#calendarList", "etag": f'"p{seq}"'}
    page = PageState("calendarList", user.email, user.email, params, items, 0, head, token)
    return pager.first_page(page, size)


# --- events.list ------------------------------------------------------------------------------


def shown(calendar: CalendarData, *, show_deleted: bool) -> list[StoredEvent]:
    """The stored events a listing without singleEvents starts from.

    Cancelled events only with showDeleted, except cancelled instances of a live series.
    """
    out: list[StoredEvent] = []
    events = calendar.events
    for event in events.values():
        if event.cancelled and not show_deleted:
            master = events.get(event.recurring_event_id or "")
            if master is None or master.cancelled:
                continue
        out.append(event)
    return out


def list_events(
    calendar: CalendarData,
    role: str,
    user: str,
    query: Mapping[str, str],
    multi: Mapping[str, list[str]],
    pager: Pager,
    *,
    seq: int,
    now: float,
    horizon_days: int,
) -> bytes:
    """events.list, with Google's paging, sync tokens, filters and their restrictions."""
    size = page_size(query, EVENTS_DEFAULT_PAGE, EVENTS_MAX_PAGE)
    params = _params(query, multi)
    single = flag(query, "singleEvents")
    show_deleted = flag(query, "showDeleted")
    flag(query, "showHiddenInvitations")
    page_token = query.get("pageToken")
    if page_token:
        return pager.next_page(
            page_token, kind="events", scope=calendar.id, user=user, params=params, size=size
        )
    order_by = query.get("orderBy")
    if order_by is not None and order_by not in ("startTime", "updated"):
        raise invalid_parameter("orderBy", order_by)
    if order_by == "startTime" and not single:
        raise bad_request(
            "The requested ordering is not available for the particular query.",
            reason="badRequest",
        )
    bound = tuple((name, query.get(name, "").lower()) for name in SYNC_BOUND)
    horizon = from_epoch(now) + dt.timedelta(days=horizon_days)
    sync_token = query.get("syncToken")
    if sync_token:
        for name in SYNC_FORBIDDEN:
            if name in query or name in multi:
                raise bad_request(f"The parameter {name} is not allowed together with syncToken.")
        state = pager.sync_state(sync_token)
        if state is None:
            raise gone()
        if state.kind != "events" or state.scope != calendar.id:
            raise bad_request("The syncToken was issued for a different calendar.")
        if state.epoch != calendar.epoch:
            raise gone()
        if state.bound != bound:
            raise bad_request(
                "The syncToken was issued for different parameters (singleEvents, "
                "showDeleted, showHiddenInvitations must match the initial request)."
            )
        changed = sorted(
            (e for e in calendar.events.values() if e.seq > state.seq), key=lambda e: e.seq
        )
        items = _render(calendar, changed, single, True, None, None, horizon, None)
    else:
        time_min = parse_rfc3339(query["timeMin"], what="timeMin") if "timeMin" in query else None
        time_max = parse_rfc3339(query["timeMax"], what="timeMax") if "timeMax" in query else None
        if time_min is not None and time_max is not None and time_max <= time_min:
            raise GoogleError(400, "timeRangeEmpty", "The specified time range is empty.")
        updated_min = (
            parse_rfc3339(query["updatedMin"], what="updatedMin").timestamp()
            if "updatedMin" in query
            else None
        )
        # updatedMin shows deletions too, as the documentation says.
        events = shown(calendar, show_deleted=show_deleted or updated_min is not None)
        events = _filter(events, query, multi, updated_min)
        if order_by == "updated":
            events.sort(key=lambda e: (e.updated, e.seq))
        else:
            events.sort(key=lambda e: e.order)
        items = _render(
            calendar, events, single, show_deleted, time_min, time_max, horizon, order_by
        )
    if role == "freeBusyReader":
        items = [_free_busy(item) for item in items]
    token = pager.issue(SyncState("events", calendar.id, seq, calendar.epoch, bound))
    return pager.first_page(
        PageState("events", calendar.id, user, params, items, 0, _head(calendar, role), token),
        size,
    )


def _head(calendar: CalendarData, role: str) -> dict[str, Any]:
    head: dict[str, Any] = {
        "kind": "calendar#events",
        "etag": f'"p{calendar.seq or 1}"',
        "summary": calendar.summary,
    }
    if calendar.description:
        head["description"] = calendar.description
    latest = max((e.updated for e in calendar.events.values()), default=calendar.created)
    head.update(
        updated=rfc3339_utc(from_epoch(latest)),
        timeZone=calendar.time_zone,
        accessRole=role,
        defaultReminders=[],
    )
    return head


def _filter(
    events: list[StoredEvent],
    query: Mapping[str, str],
    multi: Mapping[str, list[str]],
    updated_min: float | None,
) -> list[StoredEvent]:
    uid = query.get("iCalUID")
    text = (query.get("q") or "").lower().strip()
    private = [p.partition("=") for p in multi.get("privateExtendedProperty", [])]
    shared = [p.partition("=") for p in multi.get("sharedExtendedProperty", [])]
    out = []
    for event in events:
        if uid is not None and event.ical_uid != uid:
            continue
        if updated_min is not None and event.updated < updated_min:
            continue
        if text and (event.cancelled or text not in event.searchable()):
            continue
        props = event.fields.get("extendedProperties") or {}
        if any(props.get("private", {}).get(k) != v for k, _, v in private):
            continue
        if any(props.get("shared", {}).get(k) != v for k, _, v in shared):
            continue
        out.append(event)
    return out


def _render(
    calendar: CalendarData,
    events: list[StoredEvent],
    single: bool,
    show_deleted: bool,
    time_min: dt.datetime | None,
    time_max: dt.datetime | None,
    horizon: dt.datetime,
    order_by: str | None,
) -> list[bytes]:
    if not single:
        return [e.listed_json() for e in events if overlaps(e, time_min, time_max)]
    exceptions = exceptions_of(calendar.events.values())
    rows: list[tuple[dt.datetime, bytes]] = []
    emitted: set[str] = set()
    for event in events:
        if event.is_master and not event.cancelled:
            for start, instance_id, item in expand(
                event,
                exceptions.get(event.id, {}),
                time_min=time_min,
                time_max=time_max,
                horizon=horizon,
                show_deleted=show_deleted,
            ):
                if instance_id not in emitted:
                    emitted.add(instance_id)
                    rows.append((start, item))
            continue
        if event.id in emitted or (event.cancelled and not show_deleted):
            continue
        if overlaps(event, time_min, time_max):
            emitted.add(event.id)
            begin = event.start or event.original_start
            rows.append((begin.utc if begin else LATEST_START, event.listed_json()))
    if order_by == "startTime":
        rows.sort(key=lambda row: row[0])
    return [item for _, item in rows]


def _free_busy(item: bytes) -> bytes:
    data = json.loads(item)
    kept = {k: v for k, v in data.items() if k in FREE_BUSY_FIELDS}
    return json.dumps(kept, separators=(",", ":")).encode()
