"""Event times and recurrences the way the Calendar API reads and writes them.

An event's `start` / `end` is either `{"date": "2025-03-01"}` (all-day; the end date is
exclusive) or `{"dateTime": RFC 3339, "timeZone": IANA name}`, where the offset may be left out
when `timeZone` says how to read the wall time. Responses carry `dateTime` with an offset, in
the event's `timeZone` when it has one and otherwise in the calendar's zone, and echo
`timeZone` only when the event was given one, as Google does.

Recurring masters carry RFC 5545 lines in `recurrence` (`RRULE:`, `EXRULE:`, `RDATE`,
`EXDATE`, with `TZID=` or `VALUE=DATE` parameters); they are expanded here with dateutil on
the wall clock of the master's start zone, so 09:00 Berlin stays 09:00 across DST. This is the
simulator's own reading of the rules, deliberately independent of the provider's parser: the
simulator is what the provider is tested against.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from dateutil.rrule import rrule, rruleset, rrulestr

from calsync.testing.google.errors import bad_request

UTC: Final = dt.UTC
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})?"
)
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_RECURRENCE_LINES: Final = 100
MAX_LINE: Final = 2048


@lru_cache(maxsize=512)
def zone(name: str) -> zoneinfo.ZoneInfo | None:
    """An IANA zone by name, or None for names zoneinfo does not know."""
    if not name or len(name) > 64 or ".." in name or not name.isprintable():
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def rfc3339_utc(moment: dt.datetime) -> str:
    """'2025-03-01T09:00:00.000Z', the form of `created` / `updated`."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def from_epoch(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, UTC)


def parse_rfc3339(text: str, *, what: str) -> dt.datetime:
    """An RFC 3339 timestamp with an offset (query parameters like timeMin), as aware UTC."""
    if not isinstance(text, str) or not _RFC3339.fullmatch(text.strip()):
        raise bad_request(f"Bad Request: {what} is not an RFC 3339 timestamp")
    value = dt.datetime.fromisoformat(text.strip().replace("z", "Z"))
    if value.tzinfo is None:
        raise bad_request(f"Bad Request: {what} needs a time zone offset")
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class TimeValue:
    """One `start` / `end` / `originalStartTime`: a date, or an instant with its zone."""

    day: dt.date | None  # all-day
    instant: dt.datetime | None  # aware UTC
    zone_name: str | None  # the `timeZone` the client gave (echoed back)

    @property
    def all_day(self) -> bool:
        return self.day is not None

    @property
    def utc(self) -> dt.datetime:
        """The instant; midnight UTC for a date (how the simulator orders and filters)."""
        if self.day is not None:
            return dt.datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC)
        assert self.instant is not None
        return self.instant

    def tz(self, calendar_zone: str) -> dt.tzinfo:
        """The zone the wall time of this value is read in (its own, else the calendar's)."""
        return zone(self.zone_name or calendar_zone) or UTC

    def render(self, calendar_zone: str) -> dict[str, str]:
        if self.day is not None:
            return {"date": self.day.isoformat()}
        assert self.instant is not None
        local = self.instant.astimezone(self.tz(calendar_zone))
        out = {"dateTime": local.isoformat(timespec="seconds").replace("+00:00", "Z")}
        if self.zone_name:
            out["timeZone"] = self.zone_name
        return out

    def stamp(self) -> str:
        """The suffix of an instance id: 20250301T080000Z, or 20250301 for a date."""
        if self.day is not None:
            return self.day.strftime("%Y%m%d")
        assert self.instant is not None
        return self.instant.strftime("%Y%m%dT%H%M%SZ")


def parse_time(value: Any, *, field: str, calendar_zone: str) -> TimeValue:
    """A `start`-shaped object from a request body; GoogleError 400 when unusable."""
    if not isinstance(value, Mapping):
        raise bad_request(f"Missing {field} time.", reason="required")
    date_text = value.get("date")
    stamp = value.get("dateTime")
    zone_name = value.get("timeZone")
    if zone_name is not None and (not isinstance(zone_name, str) or zone(zone_name) is None):
        raise bad_request(f"Invalid time zone definition for {field} time.")
    if date_text is not None and stamp is not None:
        raise bad_request(f"Invalid {field} time: date and dateTime are exclusive.")
    if date_text is not None:
        if not isinstance(date_text, str) or not _DATE.fullmatch(date_text):
            raise bad_request(f"Invalid {field} time.")
        try:
            return TimeValue(dt.date.fromisoformat(date_text), None, None)
        except ValueError:
            raise bad_request(f"Invalid {field} time.") from None
    if not isinstance(stamp, str) or not _RFC3339.fullmatch(stamp.strip()):
        raise bad_request(f"Missing {field} time." if stamp is None else f"Invalid {field} time.")
    try:
        parsed = dt.datetime.fromisoformat(stamp.strip().replace("z", "Z"))
    except ValueError:
        raise bad_request(f"Invalid {field} time.") from None
    if parsed.tzinfo is None:
        if not zone_name:
            raise bad_request(f"Missing time zone definition for {field} time.")
        parsed = parsed.replace(tzinfo=zone(zone_name))
    return TimeValue(None, parsed.astimezone(UTC), zone_name or None)


def time_from_local(local: dt.datetime, like: TimeValue, tz: dt.tzinfo) -> TimeValue:
    """A TimeValue of the same kind as `like` for a naive wall time in `tz`."""
    if like.all_day:
        return TimeValue(local.date(), None, None)
    return TimeValue(None, local.replace(tzinfo=tz).astimezone(UTC), like.zone_name)


# --- recurrence -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recurrence:
    """The parsed `recurrence` lines of a master, ready to expand on naive local times."""

    rules: tuple[str, ...]  # RRULE values
    exrules: tuple[str, ...]
    rdates: tuple[dt.datetime, ...]  # naive local
    exdates: tuple[dt.datetime, ...]  # naive local


def _content_line(line: str) -> tuple[str, dict[str, str], str]:
    head, sep, value = line.partition(":")
    if not sep:
        raise bad_request("Invalid recurrence rule.")
    name, *params = head.split(";")
    parsed: dict[str, str] = {}
    for param in params:
        key, eq, val = param.partition("=")
        if not eq:
            raise bad_request("Invalid recurrence rule.")
        parsed[key.strip().upper()] = val.strip().strip('"')
    return name.strip().upper(), parsed, value.strip()


def _local_stamp(text: str, params: Mapping[str, str], tz: dt.tzinfo) -> dt.datetime:
    """An RDATE/EXDATE value as a naive wall time in the series' zone."""
    value = text.strip().split("/")[0]  # a PERIOD's start
    try:
        if params.get("VALUE", "").upper() == "DATE" or (len(value) == 8 and value.isdigit()):
            return dt.datetime.strptime(value, "%Y%m%d")
        if value.upper().endswith("Z"):
            moment = dt.datetime.strptime(value[:-1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
            return moment.astimezone(tz).replace(tzinfo=None)
        naive = dt.datetime.strptime(value, "%Y%m%dT%H%M%S")
    except ValueError:
        raise bad_request("Invalid recurrence rule.") from None
    tzid = params.get("TZID")
    if tzid:
        own = zone(tzid)
        if own is None:
            raise bad_request("Invalid recurrence rule.")
        return naive.replace(tzinfo=own).astimezone(tz).replace(tzinfo=None)
    return naive


def parse_recurrence(lines: Any, start: TimeValue, calendar_zone: str) -> Recurrence:
    """Validate a `recurrence` list; GoogleError 400 for anything dateutil cannot expand."""
    if not isinstance(lines, list) or not lines or len(lines) > MAX_RECURRENCE_LINES:
        raise bad_request("Invalid recurrence rule.")
    tz = start.tz(calendar_zone)
    rules: list[str] = []
    exrules: list[str] = []
    rdates: list[dt.datetime] = []
    exdates: list[dt.datetime] = []
    for line in lines:
        if not isinstance(line, str) or not line.strip() or len(line) > MAX_LINE:
            raise bad_request("Invalid recurrence rule.")
        name, params, value = _content_line(line.strip())
        if name in ("RRULE", "EXRULE"):
            (rules if name == "RRULE" else exrules).append(value)
        elif name in ("RDATE", "EXDATE"):
            stamps = [_local_stamp(v, params, tz) for v in value.split(",") if v]
            (rdates if name == "RDATE" else exdates).extend(stamps)
        else:
            raise bad_request("Invalid recurrence rule.")
    parsed = Recurrence(tuple(rules), tuple(exrules), tuple(rdates), tuple(exdates))
    try:
        ruleset(parsed, _local_start(start, tz))
    except (ValueError, TypeError, OverflowError):
        raise bad_request("Invalid recurrence rule.") from None
    return parsed


def _local_start(start: TimeValue, tz: dt.tzinfo) -> dt.datetime:
    if start.day is not None:
        return dt.datetime(start.day.year, start.day.month, start.day.day)
    assert start.instant is not None
    return start.instant.astimezone(tz).replace(tzinfo=None)


def _rule(text: str, dtstart: dt.datetime, tz: dt.tzinfo) -> rrule:
    parts = [p for p in text.split(";") if p]
    if not parts or not any(p.upper().startswith("FREQ=") for p in parts):
        raise ValueError("a rule needs FREQ")
    until = next((p.split("=", 1)[1] for p in parts if p.upper().startswith("UNTIL=")), None)
    kept = ";".join(p for p in parts if not p.upper().startswith("UNTIL="))
    rule = rrulestr(kept, dtstart=dtstart)
    if not isinstance(rule, rrule):
        raise ValueError("not a single rule")
    if until is None:
        return rule
    until = until.strip()
    if len(until) == 8:
        limit = dt.datetime.strptime(until, "%Y%m%d").replace(hour=23, minute=59, second=59)
    elif until.upper().endswith("Z"):
        moment = dt.datetime.strptime(until[:-1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        limit = moment.astimezone(tz).replace(tzinfo=None)
    else:
        limit = dt.datetime.strptime(until, "%Y%m%dT%H%M%S")
    return rule.replace(until=limit)


def ruleset(recurrence: Recurrence, local_start: dt.datetime, tz: dt.tzinfo = UTC) -> rruleset:
    rules = rruleset()
    rules.rdate(local_start)  # the start is always an instance (RFC 5545), as in the store
    for text in recurrence.rules:
        rules.rrule(_rule(text, local_start, tz))
    for text in recurrence.exrules:
        rules.exrule(_rule(text, local_start, tz))
    for moment in recurrence.rdates:
        rules.rdate(moment)
    for moment in recurrence.exdates:
        rules.exdate(moment)
    return rules


def occurrences(
    recurrence: Recurrence,
    start: TimeValue,
    calendar_zone: str,
    *,
    until: dt.datetime,
    limit: int,
) -> Iterator[TimeValue]:
    """The instance starts of a series (EXDATEs removed), up to `until` (UTC) and `limit`."""
    tz = start.tz(calendar_zone)
    local_first = _local_start(start, tz)
    rules = ruleset(recurrence, local_first, tz)
    for count, local in enumerate(rules):
        value = time_from_local(local, start, tz)
        if value.utc >= until or count >= limit:
            return
        yield value


def is_occurrence(
    recurrence: Recurrence, start: TimeValue, calendar_zone: str, original: TimeValue
) -> bool:
    """Whether `original` is one of the series' instance starts."""
    if original.all_day != start.all_day:
        return False
    tz = start.tz(calendar_zone)
    rules = ruleset(recurrence, _local_start(start, tz), tz)
    wanted = _local_start(original, tz)
    found = rules.after(wanted, inc=True)
    return found == wanted


def first_after(
    recurrence: Recurrence, start: TimeValue, calendar_zone: str, moment: dt.datetime
) -> dt.datetime | None:
    """The UTC start of the first instance starting after `moment` (UTC), or None."""
    tz = start.tz(calendar_zone)
    rules = ruleset(recurrence, _local_start(start, tz), tz)
    local = moment.astimezone(tz).replace(tzinfo=None)
    found = rules.after(local, inc=False)
    if found is None:
        return None
    if start.all_day:
        return found.replace(tzinfo=UTC)
    return found.replace(tzinfo=tz).astimezone(UTC)
