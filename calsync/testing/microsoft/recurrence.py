"""Graph's `patternedRecurrence` (pattern + range), checked and expanded into occurrence starts.

A series is expanded on naive wall-clock times in its own time zone, so a 09:00 meeting in
Berlin stays at 09:00 across daylight-saving changes, then each start is placed in the zone.
The six pattern types map onto RFC 5545 rules (dateutil): `daily`, `weekly` (daysOfWeek,
firstDayOfWeek), `absoluteMonthly` (dayOfMonth), `relativeMonthly` (daysOfWeek + index),
`absoluteYearly` (month + dayOfMonth), `relativeYearly` (month + daysOfWeek + index). The range
is `endDate` (inclusive, to the end of that day), `numbered` (numberOfOccurrences) or `noEnd`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

from dateutil import rrule as du

WEEKDAYS = {
    "monday": du.MO,
    "tuesday": du.TU,
    "wednesday": du.WE,
    "thursday": du.TH,
    "friday": du.FR,
    "saturday": du.SA,
    "sunday": du.SU,
}
INDEXES = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
PATTERNS = (
    "daily",
    "weekly",
    "absoluteMonthly",
    "relativeMonthly",
    "absoluteYearly",
    "relativeYearly",
)
RANGES = ("endDate", "noEnd", "numbered")
MAX_OCCURRENCES = 20_000  # per series and per expansion: a bound for hostile rules


class RecurrenceError(ValueError):
    """The recurrence JSON is not one Graph would accept."""


def _date(value: Any, what: str) -> dt.date:
    if not isinstance(value, str):
        raise RecurrenceError(f"{what} must be a date (YYYY-MM-DD)")
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        raise RecurrenceError(f"{what} is not a date: {value!r}") from None


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RecurrenceError(f"{what} must be an integer from {low} to {high}")
    return value


def normalise(recurrence: Any) -> dict[str, Any]:
    """The recurrence as Graph echoes it back (every field present), or RecurrenceError."""
    if not isinstance(recurrence, Mapping):
        raise RecurrenceError("recurrence must be an object with pattern and range")
    pattern = recurrence.get("pattern")
    span = recurrence.get("range")
    if not isinstance(pattern, Mapping) or not isinstance(span, Mapping):
        raise RecurrenceError("recurrence needs both pattern and range")
    kind = pattern.get("type")
    if kind not in PATTERNS:
        raise RecurrenceError(f"pattern.type must be one of {', '.join(PATTERNS)}")
    interval = _int(pattern.get("interval", 1), "pattern.interval", 1, 99)
    days = pattern.get("daysOfWeek") or []
    if not isinstance(days, list) or any(d not in WEEKDAYS for d in days):
        raise RecurrenceError("pattern.daysOfWeek must list weekday names")
    first_day = pattern.get("firstDayOfWeek") or "sunday"
    if first_day not in WEEKDAYS:
        raise RecurrenceError("pattern.firstDayOfWeek must be a weekday name")
    index = pattern.get("index") or "first"
    if index not in INDEXES:
        raise RecurrenceError(f"pattern.index must be one of {', '.join(INDEXES)}")
    day_of_month = pattern.get("dayOfMonth", 0) or 0
    month = pattern.get("month", 0) or 0
    if kind in ("weekly", "relativeMonthly", "relativeYearly") and not days:
        raise RecurrenceError(f"a {kind} pattern needs daysOfWeek")
    if kind in ("absoluteMonthly", "absoluteYearly"):
        _int(day_of_month, "pattern.dayOfMonth", 1, 31)
    if kind in ("absoluteYearly", "relativeYearly"):
        _int(month, "pattern.month", 1, 12)
    range_kind = span.get("type")
    if range_kind not in RANGES:
        raise RecurrenceError(f"range.type must be one of {', '.join(RANGES)}")
    start_date = _date(span.get("startDate"), "range.startDate")
    end_date = None
    count = 0
    if range_kind == "endDate":
        end_date = _date(span.get("endDate"), "range.endDate")
        if end_date < start_date:
            raise RecurrenceError("range.endDate is before range.startDate")
    elif range_kind == "numbered":
        count = _int(span.get("numberOfOccurrences"), "range.numberOfOccurrences", 1, 999)
    zone = span.get("recurrenceTimeZone") or ""
    if not isinstance(zone, str):
        raise RecurrenceError("range.recurrenceTimeZone must be a string")
    return {
        "pattern": {
            "type": kind,
            "interval": interval,
            "month": month,
            "dayOfMonth": day_of_month,
            "daysOfWeek": list(days),
            "firstDayOfWeek": first_day,
            "index": index,
        },
        "range": {
            "type": range_kind,
            "startDate": start_date.isoformat(),
            "endDate": end_date.isoformat() if end_date else "0001-01-01",
            "recurrenceTimeZone": zone,
            "numberOfOccurrences": count,
        },
    }


def rule(recurrence: Mapping[str, Any], time_of_day: dt.time) -> du.rrule:
    """The dateutil rule of a normalised recurrence, on naive wall-clock times."""
    pattern, span = recurrence["pattern"], recurrence["range"]
    kind = pattern["type"]
    start = dt.datetime.combine(dt.date.fromisoformat(span["startDate"]), time_of_day)
    days = [WEEKDAYS[d] for d in pattern["daysOfWeek"]]
    options: dict[str, Any] = {"dtstart": start, "interval": pattern["interval"]}
    if span["type"] == "endDate":
        options["until"] = dt.datetime.combine(
            dt.date.fromisoformat(span["endDate"]), dt.time(23, 59, 59)
        )
    elif span["type"] == "numbered":
        options["count"] = span["numberOfOccurrences"]
    if kind == "daily":
        return du.rrule(du.DAILY, **options)
    if kind == "weekly":
        return du.rrule(
            du.WEEKLY, byweekday=days, wkst=WEEKDAYS[pattern["firstDayOfWeek"]], **options
        )
    setpos = INDEXES[pattern["index"]]
    if kind == "absoluteMonthly":
        return du.rrule(du.MONTHLY, bymonthday=pattern["dayOfMonth"], **options)
    if kind == "relativeMonthly":
        return du.rrule(du.MONTHLY, byweekday=days, bysetpos=setpos, **options)
    if kind == "absoluteYearly":
        return du.rrule(
            du.YEARLY, bymonth=pattern["month"], bymonthday=pattern["dayOfMonth"], **options
        )
    return du.rrule(du.YEARLY, bymonth=pattern["month"], byweekday=days, bysetpos=setpos, **options)


def local_starts(
    recurrence: Mapping[str, Any],
    time_of_day: dt.time,
    *,
    after: dt.datetime | None,
    before: dt.datetime,
) -> Iterator[dt.datetime]:
    """Naive local starts from `after` (inclusive; None = the first) until `before` (exclusive)."""
    generated = rule(recurrence, time_of_day)
    source = generated.xafter(after, inc=True) if after is not None else iter(generated)
    for count, start in enumerate(source):
        if start >= before or count >= MAX_OCCURRENCES:
            return
        yield start
