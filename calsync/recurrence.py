"""The one reading of an RRULE value, shared by the window check and the store's expansion.

Two places interpret a series' rule: the extractors compute `series_end` (the end of the last
occurrence, or None when open-ended or too costly to know), which lets a range query skip a
series without expanding it; and the store's expansion (`calsync.store.expand`) turns a stored
master into the instances of a range. Both read the rule here, so a query never skips a series
that its expansion would have shown:

- `rule_parts` splits a rule ("RRULE:" prefix allowed) into upper-case keys and values.
- `until_local` reads UNTIL on the series' wall clock: a UTC date-time (`Z` or `z`) is moved to
  the series' zone; a floating date-time is wall time already; a DATE (common in the wild even
  on timed series, though RFC 5545 wants the types to match) is midnight UTC of that date,
  inclusive, which is how recurring-ical-events (the store's expander of iCalendar text) reads
  it: a daily 09:00 Berlin series "until 2025-03-10" ends on the 9th, an all-day one on the
  10th. Anything else raises ValueError.
- `check_interval` refuses an INTERVAL that is no positive integer (ValueError): INTERVAL=0
  repeats the first instance forever in dateutil, so every expansion of it would hang.
- `dateutil_rule` is the rule as a dateutil `rrule` on naive wall-clock times with that UNTIL
  (dateutil insists that UNTIL and DTSTART agree on having a zone, which stored rules often do
  not; naive wall-clock times also keep 09:00 at 09:00 across DST changes).
- `last_start` is the start (UTC) of the last occurrence for `series_end`: an upper bound from
  UNTIL (never expanded), or for COUNT the exact last occurrence, by arithmetic for the plain
  rules and else with dateutil when that is bounded; None when unbounded or too costly (COUNT
  above `MAX_COUNT_EXPANSION`, sparse BY-rules that could make dateutil search to the year 9999).

The store expands iCalendar text with recurring-ical-events; this module reads UNTIL as that
library does, so its fallback (JSON resources, and iCalendar text the library refuses, such as
a lower-case "z" in UNTIL) gives the same instances.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from dateutil.rrule import rrule

__all__ = [
    "MAX_COUNT_EXPANSION",
    "MAX_OVERLAP",
    "PERIODS",
    "Unbounded",
    "bounded_rule",
    "check_interval",
    "dateutil_rule",
    "last_start",
    "most_instances",
    "rule_parts",
    "rule_step",
    "until_local",
    "walk_step",
]

UTC: Final = dt.UTC
MAX_COUNT_EXPANSION: Final = 5_000  # COUNT above this: series_end stays open (None)

_SUBDAILY: Final = frozenset({"SECONDLY", "MINUTELY", "HOURLY"})
_FREQS: Final = frozenset({"DAILY", "WEEKLY", "MONTHLY", "YEARLY"}) | _SUBDAILY
# BY-parts that can make a rule match rarely or never (dateutil would then search to the year
# 9999, which takes seconds); such COUNT rules keep an open series_end.
_SPARSE: Final = frozenset({"BYYEARDAY", "BYWEEKNO", "BYSETPOS", "BYMONTHDAY"})
_UNTIL: Final = re.compile(r"([0-9]{8})(?:[Tt]([0-9]{6})([Zz])?)?", re.ASCII)


def _body(rule: str) -> str:
    body = rule.strip()
    return body[6:] if body[:6].upper() == "RRULE:" else body


def rule_parts(rule: str) -> dict[str, str]:
    """KEY -> value of a rule; keys upper-case, values stripped."""
    parts: dict[str, str] = {}
    for part in _body(rule).split(";"):
        key, _, value = part.partition("=")
        parts[key.strip().upper()] = value.strip()
    return parts


def _until(value: str) -> tuple[dt.datetime, str]:
    """UNTIL as (naive datetime, "date" | "utc" | "floating"); ValueError when unreadable."""
    match = _UNTIL.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a DATE or DATE-TIME: {value[:40]!r}")
    day, time, utc = match.groups()
    if time is None:
        return dt.datetime.strptime(day, "%Y%m%d"), "date"
    moment = dt.datetime.strptime(day + time, "%Y%m%d%H%M%S")
    return moment, "utc" if utc else "floating"


def until_local(value: str, zone: dt.tzinfo | None) -> dt.datetime:
    """UNTIL on the series' wall clock (naive); a DATE is midnight UTC of that date."""
    moment, kind = _until(value)
    if kind != "floating" and zone is not None:
        return moment.replace(tzinfo=UTC).astimezone(zone).replace(tzinfo=None)
    return moment


def check_interval(rule: str) -> None:
    """ValueError unless INTERVAL, when given, is a positive integer (RFC 5545 3.3.10).

    INTERVAL=0 makes dateutil repeat the first instance forever: any expansion of it hangs.
    """
    interval = rule_parts(rule).get("INTERVAL")
    if interval is not None and not (interval.isascii() and interval.isdigit() and int(interval)):
        raise ValueError(f"RRULE INTERVAL is not a positive integer: {interval[:20]!r}")


def dateutil_rule(rule: str, dtstart: dt.datetime, zone: dt.tzinfo | None) -> rrule:
    """The rule as a dateutil rule on naive wall-clock times from `dtstart` (naive, local).

    ValueError when the rule cannot be read.
    """
    from dateutil.rrule import rrule as single
    from dateutil.rrule import rrulestr

    check_interval(rule)
    parts = [p for p in _body(rule).split(";") if p]
    until = next((p.split("=", 1)[1] for p in parts if p.upper().startswith("UNTIL=")), None)
    kept = ";".join(p for p in parts if not p.upper().startswith("UNTIL="))
    parsed = rrulestr(kept, dtstart=dtstart)
    if not isinstance(parsed, single):
        raise ValueError(f"not a single recurrence rule: {rule[:60]!r}")
    if until is None:
        return parsed
    return parsed.replace(until=until_local(until, zone))


def _utc(local: dt.datetime, zone: dt.tzinfo | None) -> dt.datetime:
    if zone is None:
        return local.replace(tzinfo=UTC)
    return local.replace(tzinfo=zone).astimezone(UTC)


def last_start(rule: str, local: dt.datetime, zone: dt.tzinfo | None) -> dt.datetime | None:
    """Start (UTC) of a rule's last occurrence (a bound for UNTIL), or None when unbounded.

    `local` is DTSTART on the series' wall clock (naive), `zone` its zone (None: UTC or
    floating). An unreadable UNTIL raises ValueError.
    """
    parts = rule_parts(rule)
    until = parts.get("UNTIL")
    if until:
        moment, kind = _until(until)
        return _utc(moment, None if kind != "floating" else zone)
    count_text = parts.get("COUNT")
    if not count_text:
        return None
    try:
        count = int(count_text)
    except ValueError:
        return None
    freq = parts.get("FREQ", "")
    if count < 1 or count > MAX_COUNT_EXPANSION or freq not in _FREQS:
        return None
    by_parts = {k for k in parts if k.startswith("BY")}
    if freq in _SUBDAILY and by_parts:
        return None
    if by_parts & _SPARSE and not _plain_monthday(parts):
        return None
    try:
        interval = int(parts.get("INTERVAL") or 1)
    except ValueError:
        return None
    if interval < 1:
        return None
    try:
        last = _last_by_arithmetic(freq, parts, by_parts, count, interval, local)
    except (ValueError, OverflowError):
        return None
    if last is _EXPAND:
        last = _last_by_dateutil(rule, local, zone)
    if last is None:
        return None
    assert isinstance(last, dt.datetime)
    return _utc(last, zone)


_EXPAND: Final = object()
_WEEKDAYS: Final = {"MO": 0, "TU": 1, "WE": 2, "TH": 3, "FR": 4, "SA": 5, "SU": 6}


def _last_by_arithmetic(
    freq: str, parts: dict[str, str], by_parts: set[str], count: int, interval: int, s: dt.datetime
) -> dt.datetime | object:
    """The last occurrence of the common simple rules without expanding them; else _EXPAND.

    Like dateutil (and unlike RFC 5545's "DTSTART is always the first instance"), a DTSTART
    that does not match its rule is not counted; well-formed data never has one.
    """
    if not by_parts or by_parts == {"BYDAY"} or by_parts == {"BYMONTHDAY"}:
        pass
    else:
        return _EXPAND
    if freq == "DAILY" and not by_parts:
        return s + dt.timedelta(days=interval * (count - 1))
    if freq == "WEEKLY" and parts.get("WKST", "MO") == "MO" and "BYMONTHDAY" not in by_parts:
        tokens = parts["BYDAY"].split(",") if by_parts else []
        if any(t not in _WEEKDAYS for t in tokens):
            return _EXPAND  # ordinals are meaningless in WEEKLY; let dateutil judge
        days = sorted({_WEEKDAYS[t] for t in tokens}) or [s.weekday()]
        monday = s - dt.timedelta(days=s.weekday())
        first_week = [d for d in days if d >= s.weekday()]
        if count <= len(first_week):
            return monday + dt.timedelta(days=first_week[count - 1])
        weeks, index = divmod(count - len(first_week) - 1, len(days))
        return monday + dt.timedelta(weeks=interval * (weeks + 1), days=days[index])
    if freq == "MONTHLY" and "BYDAY" not in by_parts:
        days = sorted({int(d) for d in parts["BYMONTHDAY"].split(",")}) if by_parts else [s.day]
        if not all(1 <= d <= 28 for d in days):
            return _EXPAND
        first_month = [d for d in days if d >= s.day]
        if count <= len(first_month):
            return s.replace(day=first_month[count - 1])
        months, index = divmod(count - len(first_month) - 1, len(days))
        year, month = divmod(s.year * 12 + s.month - 1 + interval * (months + 1), 12)
        return s.replace(year=year, month=month + 1, day=days[index])
    if freq == "YEARLY" and not by_parts and (s.month, s.day) != (2, 29):
        return s.replace(year=s.year + interval * (count - 1))
    return _EXPAND


def _last_by_dateutil(rule: str, local: dt.datetime, zone: dt.tzinfo | None) -> dt.datetime | None:
    try:
        last = None
        for last in dateutil_rule(rule, local, zone):  # noqa: B007  # only the final value matters
            pass
    except (ValueError, TypeError, OverflowError):
        return None
    return last if isinstance(last, dt.datetime) else None


def _plain_monthday(parts: dict[str, str]) -> bool:
    """BYMONTHDAY 1..28 (alone among the sparse parts) matches every month: cheap to expand."""
    if {k for k in parts if k in _SPARSE} != {"BYMONTHDAY"} or "BYMONTH" in parts:
        return False
    try:
        days = [int(d) for d in parts["BYMONTHDAY"].split(",")]
    except ValueError:
        return False
    return all(1 <= d <= 28 for d in days)


# --- bounded expansion ------------------------------------------------------------------------

# The shortest length of one period of each frequency (a month is at least 28 days).
PERIODS: Final = {
    "SECONDLY": dt.timedelta(seconds=1),
    "MINUTELY": dt.timedelta(minutes=1),
    "HOURLY": dt.timedelta(hours=1),
    "DAILY": dt.timedelta(days=1),
    "WEEKLY": dt.timedelta(weeks=1),
    "MONTHLY": dt.timedelta(days=28),
    "YEARLY": dt.timedelta(days=365),
}
# Frequencies whose periods have a fixed wall-clock length: a series of these may start later by
# whole periods and keep every instance after the new start.
_FIXED: Final = frozenset({"SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY"})


# A series whose instances last longer than this many of its periods has that many instances
# in progress at any moment, all of which an expansion must build for every window it reads.
MAX_OVERLAP: Final = 1000


class Unbounded(ValueError):
    """A rule whose expansion could cost without bound (a sparse COUNT rule): not expanded."""


_LONGEST_STEP: Final = dt.timedelta(days=3650)


def rule_step(rule: str) -> dt.timedelta | None:
    """The shortest time between two periods of the rule (FREQ times INTERVAL); None if unread.

    None too for a step longer than `_LONGEST_STEP`: such a rule has few instances in any range,
    and the budgets multiply the step by their periods, which would overflow a timedelta
    (FREQ=MONTHLY;INTERVAL=1000 crashed every range query of its connection).
    """
    parts = rule_parts(rule)
    period = PERIODS.get(parts.get("FREQ", ""))
    try:
        interval = int(parts.get("INTERVAL") or 1)
    except ValueError:
        return None
    if period is None or not 1 <= interval <= _LONGEST_STEP // period:
        return None
    return period * interval


def bounded_rule(
    rule: str,
    first: dt.datetime,
    zone: dt.tzinfo | None,
    *,
    lower: dt.datetime,
    upper: dt.datetime,
    margin: dt.timedelta,
    all_day: bool = False,
) -> tuple[str | None, dt.datetime]:
    """The rule and DTSTART (naive wall clock) to expand for instances starting in
    [lower - margin, upper), at a cost that does not depend on how old the series is or how
    rarely its rule matches.

    dateutil walks a rule from its DTSTART, period by period, and searches to the year 9999 for
    an instance a rule never produces. So:
    - COUNT becomes the UNTIL of its last instance when `last_start` knows it; a COUNT rule
      whose end is too costly to know (sub-daily with BY-parts, sparse BY-parts) raises
      `Unbounded`;
    - UNTIL is lowered to `upper` (a DATE for all-day series, else UTC);
    - a rule of fixed-length periods (SECONDLY to WEEKLY) whose day filters (BYMONTH,
      BYMONTHDAY, BYYEARDAY, BYWEEKNO, BYDAY) let no day of the range through gives None: no
      instances there (BYSETPOS beside them raises `Unbounded`);
    - such a rule starts over on its own grid, by whole multiples of FREQ times INTERVAL, at
      the last period before `lower - margin`.
    Anything this does not understand is returned unchanged (the expander then judges it).
    A rule whose instances last longer than `MAX_OVERLAP` of its periods, or with more than
    `MAX_OVERLAP` instances in one period, raises `Unbounded`.
    `lower` and `upper` are aware; `margin` is the series' duration.
    """
    parts = rule_parts(rule)
    freq = parts.get("FREQ", "")
    step = rule_step(rule)
    if step is None or "FREQ" not in parts:
        return rule, first
    if margin > step * MAX_OVERLAP:
        raise Unbounded(
            f"each instance overlaps more than {MAX_OVERLAP} others ({freq} lasting {margin})"
        )
    per_period = _times_of_day(parts, freq)
    if freq in _FIXED:
        per_period = most_instances(rule, dt.timedelta(0)) or per_period
    if per_period > MAX_OVERLAP:
        # dateutil builds (and caches) a period's instances at once: 86,400 for a DAILY rule
        # listing every hour, minute and second, and every window reads its cache again.
        raise Unbounded(f"more than {MAX_OVERLAP} instances in one {freq} period")
    if "COUNT" in parts:
        last = last_start(rule, first, zone)
        by_parts = {k for k in parts if k.startswith("BY")}
        if last is None:
            if freq in _SUBDAILY or by_parts & _SPARSE:
                raise Unbounded(f"COUNT rule too costly to expand: {rule[:80]!r}")
            return rule, first  # a plain DAILY+ rule: its walk costs what its span holds
        del parts["COUNT"]
        parts["UNTIL"] = _format_until(last, all_day)
    until = last_start(";".join(f"{k}={v}" for k, v in parts.items()), first, zone)
    if until is None or until > upper:
        parts["UNTIL"] = _format_until(upper, all_day)
        until = upper
    if freq in _FIXED and parts.keys() & _DAY_FILTERS:
        # dateutil checks UNTIL only against instances it finds: a rule whose days never come
        # (the 30th of February) is searched to the year 9999, day by day.
        if "BYSETPOS" in parts:
            raise Unbounded(f"BYSETPOS on a {freq} rule with day filters: {rule[:80]!r}")
        days = ";".join(
            f"{k}={_ORDINAL.sub('', parts[k])}" for k in sorted(_DAY_FILTERS) if k in parts
        )
        found = _first_day(days, (lower - margin - _ZONE_SLACK).date())
        if found is None or found > (until + _ZONE_SLACK).date():
            return None, first
    if freq in _FIXED and until >= lower - margin:
        first = _rebased(first, zone, step, lower - margin - step)
    return ";".join(f"{k}={v}" for k, v in parts.items()), first


_DAY_FILTERS: Final = frozenset({"BYMONTH", "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO", "BYDAY"})
_ORDINAL: Final = re.compile(r"[+-]?[0-9]+(?=[A-Za-z]{2})")
_ZONE_SLACK: Final = dt.timedelta(days=1)  # wall-clock dates versus UTC dates


@functools.lru_cache(maxsize=1024)
def _first_day(days: str, since: dt.date) -> dt.date | None:
    """The first date from `since` that day filters (SECONDLY to WEEKLY semantics) let through.

    The same filters on a YEARLY rule, where dateutil steps a year at a time: about 0.2 s to
    learn that nothing ever matches, instead of seconds.
    """
    from dateutil.rrule import rrulestr

    try:
        rule = rrulestr("FREQ=YEARLY;" + days, dtstart=dt.datetime.combine(since, dt.time()))
        found = rule.after(dt.datetime.combine(since, dt.time()), inc=True)
    except (ValueError, TypeError, OverflowError):
        return since  # dateutil refuses it: let the expander say so
    return found.date() if isinstance(found, dt.datetime) else None


def _format_until(moment: dt.datetime, all_day: bool) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment:%Y%m%d}" if all_day else f"{moment:%Y%m%dT%H%M%S}Z"


def _rebased(
    first: dt.datetime, zone: dt.tzinfo | None, step: dt.timedelta, before: dt.datetime
) -> dt.datetime:
    """The last start on `first`'s wall-clock grid (first + k * step) at or before `before`."""
    distance = before - _utc(first, zone)
    if distance <= step:
        return first
    k = distance // step
    moved = first + k * step
    over = _utc(moved, zone) - before  # the zone's offset may differ between the two
    if over > dt.timedelta(0):
        moved -= step * -(-over // step)
    return moved


_TIME_PARTS: Final = {  # the BY-parts that add instances within one period of each frequency
    "SECONDLY": (),
    "MINUTELY": ("BYSECOND",),
    "HOURLY": ("BYMINUTE", "BYSECOND"),
    "DAILY": ("BYHOUR", "BYMINUTE", "BYSECOND"),
    "WEEKLY": ("BYHOUR", "BYMINUTE", "BYSECOND"),
    "MONTHLY": ("BYHOUR", "BYMINUTE", "BYSECOND"),
    "YEARLY": ("BYHOUR", "BYMINUTE", "BYSECOND"),
}


def _times_of_day(parts: dict[str, str], freq: str) -> int:
    """The times of day the BY-parts add within one period of `freq` (at least 1)."""
    times = 1
    for name in _TIME_PARTS.get(freq, ()):
        if parts.get(name):
            times *= len(parts[name].split(","))
    return times


def most_instances(rule: str, span: dt.timedelta) -> int | None:
    """An upper bound on the instances of a rule that start within `span`, by arithmetic (no
    expansion): the periods the span can touch, times the days one period can hold (BYDAY in
    a WEEKLY rule, day parts in a MONTHLY or YEARLY one), times the times of day its BY-parts
    add. None when the rule cannot be read. COUNT and UNTIL are ignored (bounds only lower)."""
    parts = rule_parts(rule)
    freq = parts.get("FREQ", "")
    step = rule_step(rule)
    if step is None or freq not in _TIME_PARTS:
        return None
    periods = -(-span // step) + 1
    if freq == "WEEKLY":
        days = len(parts["BYDAY"].split(",")) if parts.get("BYDAY") else 1
    elif freq == "MONTHLY":
        days = 31 if parts.keys() & {"BYDAY", "BYMONTHDAY"} else 1
    elif freq == "YEARLY":
        day_parts = {"BYMONTH", "BYWEEKNO", "BYYEARDAY", "BYMONTHDAY", "BYDAY"}
        days = 366 if parts.keys() & day_parts else 1
    else:
        days = 1
    return periods * min(days, 366) * _times_of_day(parts, freq)


def walk_step(rule: str) -> dt.timedelta | None:
    """The rule's step divided by the instances one period can hold (`most_instances`): the
    unit in which an expansion sizes its windows and counts its cost. FREQ=DAILY with BYHOUR,
    BYMINUTE and BYSECOND lists holds up to 86,400 instances a period, so it is walked like a
    SECONDLY rule. None when the rule cannot be read."""
    step = rule_step(rule)
    if step is None:
        return None
    per_period = most_instances(rule, dt.timedelta(0)) or 1
    return max(step / per_period, dt.timedelta(microseconds=1))
