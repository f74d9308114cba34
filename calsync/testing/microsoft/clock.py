"""The simulator's clock, and the date/time and time zone conventions of Microsoft Graph.

Everything in the simulator that expires (access tokens, authorization codes, subscriptions,
refresh-token inactivity, the sustained request window) reads `SimClock.now()`, which is the
wall clock plus an offset that tests move forward with `advance` (or `POST /_admin/clock`), so
an expiry can be tested without sleeping.

Graph writes a `dateTimeTimeZone` as a local wall-clock time with seven fractional digits and
a zone name beside it (`{"dateTime": "2025-01-06T09:00:00.0000000", "timeZone": "UTC"}`); the
zone may be an IANA name or a Windows name such as "Pacific Standard Time". Timestamps
(`createdDateTime`, `originalStart`, subscription expirations) are UTC with a `Z`.
"""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo
from functools import lru_cache

UTC = dt.UTC


class SimClock:
    """Wall-clock time plus an adjustable offset (seconds)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time(), UTC)

    def advance(self, seconds: float) -> dt.datetime:
        self.offset += float(seconds)
        return self.now()


@lru_cache(maxsize=512)
def resolve_zone(name: str | None) -> dt.tzinfo | None:
    """An IANA or Windows zone name as a tzinfo; None when the name means nothing."""
    if not name:
        return None
    cleaned = name.strip()
    if cleaned.lower() in ("utc", "tzone://microsoft/utc", "coordinated universal time", "gmt"):
        return UTC
    try:
        return zoneinfo.ZoneInfo(cleaned)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

    olson = WINDOWS_TO_OLSON.get(cleaned)
    if olson is None:
        return None
    try:
        return zoneinfo.ZoneInfo(olson)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def format_local(value: dt.datetime) -> str:
    """A naive wall-clock time the way Graph writes `dateTime`: seven fractional digits."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}0"


def format_timestamp(value: dt.datetime) -> str:
    """An aware instant as Graph's UTC timestamp (`2025-01-06T09:00:00Z`)."""
    utc = value.astimezone(UTC)
    if utc.microsecond:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond:06d}0Z"
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_local(text: str) -> dt.datetime:
    """A `dateTime` string (up to seven fractional digits, an offset or Z tolerated)."""
    value = text.strip()
    if not value:
        raise ValueError("empty dateTime")
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    head, dot, tail = value.partition(".")
    if dot:
        digits = ""
        rest = ""
        for index, char in enumerate(tail):
            if not char.isdigit():
                rest = tail[index:]
                break
            digits += char
        value = f"{head}.{(digits + '000000')[:6]}{rest}"
    return dt.datetime.fromisoformat(value)


def parse_instant(text: str, default_zone: dt.tzinfo = UTC) -> dt.datetime:
    """An ISO 8601 date-time as an aware instant; a value without offset is in `default_zone`."""
    value = parse_local(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=default_zone)
    return value.astimezone(UTC)
