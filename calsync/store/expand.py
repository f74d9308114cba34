"""Recurring series turned into the occurrences that fall in a time range, with caps.

For iCalendar resources the raw original is authoritative: recurring-ical-events expands it,
honouring RRULE, RDATE, EXDATE, RECURRENCE-ID overrides (moved, changed, cancelled) and
RANGE=THISANDFUTURE, in the series' own time zone (so 09:00 Berlin stays 09:00 across DST).

The library's own range iteration (`after`) probes in steps of a day and is slow for long
ranges, and `between` materialises a whole range at once, which a minutely rule turns into
millions of instances. So each series is walked here in windows that start at one day and double
while they come back nearly empty; the walk stops as soon as the per-series cap is reached.
Within a window the instances are sorted; an instance new in a later window starts at or after
that window's start, so the walk yields a series' instances in start order, and the cap keeps
the earliest ones.

JSON resources (Google, Graph) keep no iCalendar text. Their masters are expanded from the
stored RRULE, RDATE and EXDATE with dateutil in the event's zone as the one resolver,
`calsync.timezones`, reads its name (UTC when it resolves to nothing, which is how the readers
read wall times in such a zone); instances that have an override row elsewhere in the calendar
(same UID, recurrence id = the instance start) are left to that row. This fallback also serves an
iCalendar resource whose raw text the library cannot expand. It knows nothing of
RANGE=THISANDFUTURE or per-instance durations.

Floating times (no zone) are read as UTC: the store has no user time zone to apply.
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import math
from collections.abc import Iterator, Mapping, Set
from typing import Any

import icalendar
import recurring_ical_events  # type: ignore[import-untyped]
from dateutil.rrule import rruleset

from calsync import timezones
from calsync.model import Resource
from calsync.recurrence import (
    Unbounded,
    bounded_rule,
    dateutil_rule,
    most_instances,
    rule_parts,
    walk_step,
)
from calsync.store.ical_zones import parse_zoned
from calsync.store.results import Occurrence
from calsync.store.rows import json_list, occurrence_from_row

log = logging.getLogger(__name__)

UTC = dt.UTC
LOWEST = dt.datetime(1000, 1, 1, tzinfo=UTC)
HIGHEST = dt.datetime(9000, 1, 1, tzinfo=UTC)
_FIRST_WINDOW = dt.timedelta(days=1)
_SPARSE = 32  # a window with fewer new instances than this doubles the next one
# Rule periods (FREQ times INTERVAL) one series, and all series of one query, may walk: the
# bound on the time a rule that matches rarely (FREQ=SECONDLY;BYHOUR=9;BYMINUTE=0) can take.
# dateutil takes 0.1 to 5 us per period, depending on the rule.
SERIES_PERIODS = 200_000
QUERY_PERIODS = 2_000_000


class Truncation:
    """Set by an expansion that stopped at its cap (or on an error) before the range ended.

    It also carries what is left of the query's budget of rule periods (`QUERY_PERIODS`), and
    the provider ids of the series that were cut off.
    """

    __slots__ = ("cut", "periods", "series", "series_cap")

    def __init__(self, periods: int = QUERY_PERIODS, series_cap: int = 0) -> None:
        self.cut = False
        self.periods = periods
        self.series: dict[str, str] = {}  # provider id -> why its expansion stopped short
        self.series_cap = series_cap  # the per-series cap of the query, when it has one

    def stop(self, provider_id: str, why: str = "too costly to expand in full") -> None:
        """A series stopped before the range ended (its budget, a rule not expanded)."""
        self.cut = True
        self.series.setdefault(provider_id, why)

    def capped(self, provider_id: str, count: int) -> None:
        """A series reached the cap it was given: named when that is the per-series cap (not
        the query's total, which the query reports by itself)."""
        self.cut = True
        if count >= self.series_cap:
            self.series.setdefault(provider_id, f"more than {count} occurrences")


def start_key(occurrence: Occurrence) -> dt.datetime:
    return occurrence.start if occurrence.start is not None else HIGHEST


def overlaps(
    start: dt.datetime | None,
    end: dt.datetime | None,
    range_start: dt.datetime | None,
    range_end: dt.datetime | None,
) -> bool:
    """Overlap with [range_start, range_end); an instant event counts when it lies inside."""
    if start is None:
        return range_start is None and range_end is None
    if range_end is not None and start >= range_end:
        return False
    if range_start is None:
        return True
    return (end if end is not None else start) > range_start or start >= range_start


def as_utc(value: dt.date | dt.datetime) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return dt.datetime(value.year, value.month, value.day, tzinfo=UTC)


def parse_utc(text: str) -> dt.datetime | None:
    """A stored ISO 8601 instant (recurrence id, RDATE, EXDATE) as aware UTC; None if unreadable."""
    try:
        return as_utc(dt.datetime.fromisoformat(text))
    except ValueError:
        return None


def ical_occurrences(
    raw: str,
    *,
    calendar_id: str,
    provider_id: str,
    lower: dt.datetime,
    upper: dt.datetime,
    start: dt.datetime | None,
    end: dt.datetime | None,
    cap: int,
    include_cancelled: bool,
    truncation: Truncation,
) -> Iterator[Occurrence]:
    """Occurrences of every series in an iCalendar text overlapping [start, end), by start.

    `lower` and `upper` bound the walk (the range, or the resource's envelope where the range is
    open). The text is parsed now, so unusable text raises here (whatever icalendar or
    recurring-ical-events raise); the occurrences are produced lazily.
    """
    calendar = parse_zoned(raw)
    lower = max(lower, _earliest(calendar, lower))  # no walking (and paying) before the series
    step = _bound_rules(calendar, lower, upper, provider_id, truncation)
    query = recurring_ical_events.of(calendar)
    streams = [
        _series_occurrences(
            series,
            step=step,
            calendar_id=calendar_id,
            provider_id=provider_id,
            lower=lower,
            upper=upper,
            start=start,
            end=end,
            cap=cap,
            include_cancelled=include_cancelled,
            truncation=truncation,
        )
        for series in query.series
    ]
    return heapq.merge(*streams, key=start_key)


def _bound_rules(
    calendar: Any,
    lower: dt.datetime,
    upper: dt.datetime,
    provider_id: str,
    truncation: Truncation,
) -> dt.timedelta | None:
    """Rewrite each master's rule for [lower, upper) (`calsync.recurrence.bounded_rule`): the
    same instances there, at a cost independent of the series' age. A rule too costly to
    expand at all is removed (its series keeps DTSTART and RDATEs) and the answer is marked cut.
    Returns the shortest period of the calendar's rules (None without rules)."""
    step: dt.timedelta | None = None
    for component in calendar.walk("VEVENT"):
        rules = component.get("RRULE")
        if rules is None or "RECURRENCE-ID" in component:
            continue
        rules = rules if isinstance(rules, list) else [rules]
        texts = [rule.to_ical().decode() for rule in rules]
        start_prop = component.get("DTSTART")
        if start_prop is None or len(texts) != 1:
            for text in texts:
                step = _shorter(step, walk_step(text))
            continue
        begin = start_prop.dt
        all_day = not isinstance(begin, dt.datetime)
        zone = None if all_day else begin.tzinfo
        local = (
            dt.datetime(begin.year, begin.month, begin.day)
            if all_day
            else begin.replace(tzinfo=None)
        )
        duration = _duration(component, begin)
        rule_period = walk_step(texts[0])
        reach = _reach(lower, upper, rule_period)  # the walk stops there anyway
        try:
            text, moved = bounded_rule(
                texts[0],
                local,
                zone,
                lower=lower,
                upper=reach,
                margin=duration,
                all_day=all_day,
            )
        except Unbounded as exc:
            log.warning("not expanding a series of %s: %s", provider_id, exc)
            truncation.stop(provider_id, f"not expanded: {exc}")
            del component["RRULE"]
            continue
        except (ValueError, TypeError, OverflowError):
            step = _shorter(step, rule_period)
            continue  # the expander judges what this cannot read
        if text is None:  # nothing of the rule falls in the range
            del component["RRULE"]
            continue
        step = _shorter(step, rule_period)
        if text != texts[0]:
            component["RRULE"] = icalendar.vRecur.from_ical(text)
        if moved != local:
            shift = moved - local
            start_prop.dt = begin + shift
            end_prop = component.get("DTEND")
            if end_prop is not None:
                end_prop.dt = end_prop.dt + shift
    return step


def _earliest(calendar: Any, fallback: dt.datetime) -> dt.datetime:
    """The earliest start any VEVENT of the text can have (DTSTART, RDATE) minus its duration;
    `fallback` when something cannot be read."""
    earliest: dt.datetime | None = None
    try:
        for component in calendar.walk("VEVENT"):
            prop = component.get("DTSTART")
            if prop is None:
                return fallback
            begin = prop.dt
            starts = [as_utc(begin)]
            rdates = component.get("RDATE")
            for listed in rdates if isinstance(rdates, list) else [rdates] if rdates else []:
                for item in listed.dts:
                    value = item.dt[0] if isinstance(item.dt, tuple) else item.dt
                    starts.append(as_utc(value))
            first = min(starts) - _duration(component, begin)
            earliest = first if earliest is None else min(earliest, first)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return fallback
    return earliest if earliest is not None else fallback


def _reach(lower: dt.datetime, upper: dt.datetime, step: dt.timedelta | None) -> dt.datetime:
    """How far a series' budget of rule periods goes from `lower` (`upper` at the most)."""
    if step is None:
        return upper
    try:
        budget = step * SERIES_PERIODS
        return lower + budget if upper - lower > budget else upper
    except OverflowError:  # periods of centuries: the budget outlasts any range
        return upper


def _shorter(step: dt.timedelta | None, other: dt.timedelta | None) -> dt.timedelta | None:
    return other if step is None else step if other is None else min(step, other)


def _duration(component: Any, begin: dt.date | dt.datetime) -> dt.timedelta:
    end = component.get("DTEND")
    if end is not None:
        try:
            return max(as_utc(end.dt) - as_utc(begin), dt.timedelta(0))
        except (TypeError, ValueError):
            return dt.timedelta(days=1)
    duration = component.get("DURATION")
    if duration is not None and isinstance(duration.dt, dt.timedelta):
        return max(duration.dt, dt.timedelta(0))
    return dt.timedelta(days=1) if not isinstance(begin, dt.datetime) else dt.timedelta(0)


def _series_occurrences(
    series: Any,
    *,
    step: dt.timedelta | None,
    calendar_id: str,
    provider_id: str,
    lower: dt.datetime,
    upper: dt.datetime,
    start: dt.datetime | None,
    end: dt.datetime | None,
    cap: int,
    include_cancelled: bool,
    truncation: Truncation,
) -> Iterator[Occurrence]:
    count = 0
    for occurrence in _walk(series, lower, upper, provider_id, truncation, step):
        found = _from_component(
            occurrence.as_component(False), occurrence, calendar_id, provider_id
        )
        if found.status == "cancelled" and not include_cancelled:
            continue
        if not overlaps(found.start, found.end, start, end):
            continue
        if count >= cap:
            truncation.capped(provider_id, count)
            return
        count += 1
        yield found


def _walk(
    series: Any,
    lower: dt.datetime,
    upper: dt.datetime,
    provider_id: str,
    truncation: Truncation,
    step: dt.timedelta | None = None,
) -> Iterator[Any]:
    """The series' instances in [lower, upper), window by window.

    The first window holds about `_SPARSE` periods of the rule (at most a day), so a dense rule
    never materialises more than that at once; windows that come back nearly empty double.
    Each window costs its length in rule periods, taken from the series' and the query's
    budgets; a series whose budget is spent stops there, marked cut.
    """
    span = _FIRST_WINDOW if step is None else min(_FIRST_WINDOW, max(step * _SPARSE, step))
    budget = SERIES_PERIODS
    window_start = lower
    seen: set[Any] = set()
    while window_start < upper:
        window_end = upper if upper - window_start <= span else window_start + span
        if step is not None:
            allowed = min(budget, truncation.periods)
            if allowed <= 0:
                log.warning(
                    "expansion of a series of %s stopped at %s: its budget of rule periods "
                    "is spent",
                    provider_id,
                    window_start,
                )
                truncation.stop(provider_id)
                return
            cost = math.ceil((window_end - window_start) / step)
            if cost > allowed:
                window_end, cost = window_start + step * allowed, allowed
            budget -= cost
            truncation.periods -= cost
        try:
            batch = [o for o in series.between(window_start, window_end) if o.id not in seen]
        except Exception:
            log.warning("cannot expand a series of %s past %s", provider_id, window_start)
            truncation.stop(provider_id)
            return
        seen.update(o.id for o in batch)
        batch.sort(key=lambda o: as_utc(o.start))
        yield from batch
        if len(batch) < _SPARSE:
            span *= 2
        window_start = window_end


def _address(value: Any) -> str:
    text = str(value).strip()
    return text[7:] if text[:7].lower() == "mailto:" else text


def _zone_name(component: Any, start: dt.date | dt.datetime) -> str | None:
    prop = component.get("DTSTART")
    tzid = prop.params.get("TZID") if prop is not None else None
    if tzid:
        return timezones.zone_name(str(tzid))
    if isinstance(start, dt.datetime) and start.tzinfo is not None:
        return str(getattr(start.tzinfo, "key", None) or "UTC")
    return None


def _from_component(
    component: Any, occurrence: Any, calendar_id: str, provider_id: str
) -> Occurrence:
    start, end = occurrence.start, occurrence.end
    recurrence = component.get("RECURRENCE-ID")
    status = str(component.get("STATUS", "CONFIRMED")).lower()
    attendees = component.get("ATTENDEE", [])
    if not isinstance(attendees, list):
        attendees = [attendees]
    organizer = component.get("ORGANIZER")
    return Occurrence(
        uid=str(component.get("UID", "")),
        recurrence_id=as_utc(recurrence.dt).isoformat() if recurrence is not None else None,
        calendar_id=calendar_id,
        provider_id=provider_id,
        start=as_utc(start),
        end=as_utc(end) if end is not None else as_utc(start),
        all_day=not isinstance(start, dt.datetime),
        timezone=_zone_name(component, start),
        summary=str(component.get("SUMMARY", "")),
        location=str(component.get("LOCATION", "")),
        status=status if status in ("confirmed", "tentative", "cancelled") else "confirmed",
        transparency=(
            "transparent"
            if str(component.get("TRANSP", "OPAQUE")).upper() == "TRANSPARENT"
            else "opaque"
        ),
        organizer=_address(organizer) if organizer is not None else None,
        attendees=tuple(_address(a) for a in attendees),
    )


def master_occurrences(
    master: Mapping[Any, Any],
    *,
    overridden: Set[dt.datetime],
    start: dt.datetime | None,
    end: dt.datetime | None,
    cap: int,
    include_cancelled: bool,
    truncation: Truncation,
) -> Iterator[Occurrence]:
    """The dateutil fallback: instances of a stored master row overlapping [start, end).

    `overridden` holds the original starts (UTC) of instances that an override row replaces.
    The rule is parsed now (a bad RRULE raises ValueError here); instances come lazily.
    """
    first: dt.datetime | None = master["start_utc"]
    if first is None or (master["status"] == "cancelled" and not include_cancelled):
        return iter(())
    duration = (master["end_utc"] or first) - first
    zone = _zone(master["timezone"]) if not master["all_day"] else UTC

    def local(value: dt.datetime) -> dt.datetime:
        return value.astimezone(zone).replace(tzinfo=None)

    lower = start if start is not None else first
    upper = min(end, HIGHEST) if end is not None else HIGHEST
    rule: str | None = master["rrule"] or None
    step = walk_step(rule) if rule else None
    if step is not None:
        # The series' budget of rule periods bounds the walk: UNTIL goes no further.
        reach = _reach(lower, upper, step)
        rule, moved = bounded_rule(
            rule or "",
            local(first),
            zone,
            lower=lower,
            upper=reach,
            margin=duration,
            all_day=bool(master["all_day"]),
        )
        if rule is None:  # nothing of the rule falls in the range
            step, reach = None, upper
    else:
        reach, moved = upper, local(first)
    rules = rruleset()
    rules.rdate(local(first))
    if rule:  # None: no instance of the rule falls in the range
        rules.rrule(dateutil_rule(rule, moved, zone))
    for text in json_list(master["rdates"]):
        instant = parse_utc(text)
        if instant is not None:
            rules.rdate(local(instant))
    for text in json_list(master["exdates"]):
        instant = parse_utc(text)
        if instant is not None:
            rules.exdate(local(instant))
    instances = rules.xafter(local(start - duration), inc=True) if start is not None else rules
    provider_id = str(master["provider_id"])

    def generate() -> Iterator[Occurrence]:
        count = 0
        walked = lower
        try:
            if step is not None and truncation.periods <= 0:
                truncation.stop(provider_id)
                return
            for naive in instances:
                begin = naive.replace(tzinfo=zone).astimezone(UTC)
                if end is not None and begin >= end:
                    return
                if step is not None and begin > walked:
                    truncation.periods -= math.ceil((begin - walked) / step)
                    walked = begin
                    if truncation.periods <= 0:
                        truncation.stop(provider_id)
                        return
                finish = begin + duration
                if begin in overridden or not overlaps(begin, finish, start, end):
                    continue
                if count >= cap:
                    truncation.capped(provider_id, count)
                    return
                count += 1
                yield occurrence_from_row(
                    master, start=begin, end=finish, recurrence_id=begin.isoformat()
                )
            if reach < upper:  # the rule may go on past what its budget let it walk
                truncation.stop(provider_id)
        finally:
            if step is not None and reach > walked and count < cap:
                truncation.periods -= math.ceil((reach - walked) / step)

    return generate()


def _zone(name: str | None) -> dt.tzinfo:
    """The zone a stored name stands for (`calsync.timezones`); UTC when unknown or absent."""
    zone = timezones.resolve(name) if name else None
    return zone if zone is not None else UTC


def capped_series(resource: Resource, start: dt.datetime, end: dt.datetime, cap: int) -> str | None:
    """Why a range query over [start, end) would cut the resource's series short (more than
    `cap` occurrences, or too costly to expand); None when it would not.

    Run at sync time over the connection's window. A cheap bound (`most_instances`) clears
    nearly every series; only the rest are expanded, through the query's own path, up to the
    cap."""
    suspects = []
    for event in resource.events:
        if event.recurrence_id or event.start is None or not event.recurring:
            continue
        last = min(end, event.series_end) if event.series_end is not None else end
        span = last - max(start, event.start)
        if span < dt.timedelta(0):
            continue
        most = most_instances(event.rrule, span) if event.rrule else 0
        if most is None or most + len(event.rdates) + 1 > cap:
            least = _fewest_instances(event.rrule or "", span) - len(event.exdates)
            if least > cap:  # a plain rule: over the cap by arithmetic alone
                return f"more than {cap} occurrences"
            suspects.append(event)
    if not suspects:
        return None
    truncation = Truncation(series_cap=cap)
    pid = resource.provider_id
    try:
        if resource.raw_format == "ical":
            found = ical_occurrences(
                resource.raw,
                calendar_id="",
                provider_id=pid,
                lower=start,
                upper=end,
                start=start,
                end=end,
                cap=cap,
                include_cancelled=True,
                truncation=truncation,
            )
            for _ in found:
                pass
        else:
            for event in suspects:
                for _ in master_occurrences(
                    _master_row(pid, event),
                    overridden=set(),
                    start=start,
                    end=end,
                    cap=cap,
                    include_cancelled=True,
                    truncation=truncation,
                ):
                    pass
    except Exception as exc:  # what a query cannot expand, it reads another way or cuts
        return f"cannot be expanded: {exc}"
    return truncation.series.get(pid)


def _fewest_instances(rule: str, span: dt.timedelta) -> int:
    """A lower bound on the instances a rule without BY-parts or COUNT has in `span` (0 for
    any other rule): one per step, but for the periods at either end."""
    parts = rule_parts(rule) if rule else {}
    if not parts or "COUNT" in parts or any(k.startswith("BY") for k in parts):
        return 0
    step = walk_step(rule)
    return max(0, span // step - 1) if step is not None else 0


def _master_row(provider_id: str, event: Any) -> dict[str, Any]:
    """The fields of a stored event row that `master_occurrences` reads, from an `Event`."""
    import json

    return {
        "uid": event.uid,
        "recurrence_id": "",
        "calendar_id": "",
        "provider_id": provider_id,
        "start_utc": event.start,
        "end_utc": event.end,
        "all_day": event.all_day,
        "timezone": event.timezone,
        "summary": event.summary,
        "location": event.location,
        "status": event.status,
        "transparency": event.transparency,
        "organizer": event.organizer,
        "attendees": json.dumps(event.attendees),
        "rrule": event.rrule,
        "rdates": json.dumps(event.rdates),
        "exdates": json.dumps(event.exdates),
    }
