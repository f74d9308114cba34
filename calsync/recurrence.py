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
import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from dateutil.rrule import rrule

__all__ = ["MAX_COUNT_EXPANSION", "dateutil_rule", "last_start", "rule_parts", "until_local"]

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


def dateutil_rule(rule: str, dtstart: dt.datetime, zone: dt.tzinfo | None) -> rrule:
    """The rule as a dateutil rule on naive wall-clock times from `dtstart` (naive, local).

    ValueError when the rule cannot be read.
    """
    from dateutil.rrule import rrule as single
    from dateutil.rrule import rrulestr

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
