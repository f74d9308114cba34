"""The one time-zone resolver: what a zone name written by a calendar source means.

Every reader of times uses this module: the CalDAV extractor (`calsync.providers.ical`), the
Google and Graph converters, and the store's recurrence expansion (`calsync.store.expand`). It
is a leaf (standard library, dateutil and icalendar's Windows table only), so providers and
store, which may not import each other, both can.

A name resolves, in this order, to
1. UTC for the spellings of UTC that are no IANA key or mean UTC (Graph's "tzone://Microsoft/Utc",
   "Coordinated Universal Time", "UTC", "GMT", "Z", "Etc/UTC"): reported as "UTC";
2. the IANA zone of that exact key (`zoneinfo`);
3. the IANA zone of a Windows zone name (Outlook, Graph: "W. Europe Standard Time"), by
   icalendar's Windows-to-Olson table;
4. the IANA zone that ends a vendor path ("/freeassociation.sourceforge.net/Europe/Berlin",
   as libical writes TZIDs).
Surrounding blanks and double quotes are ignored. Names longer than `MAX_NAME`, with control
characters or with ".." resolve to nothing without touching the file system. Results are
cached per name (bounded), so the hot paths pay one dictionary lookup per distinct name.

An iCalendar object's own VTIMEZONE definition is the next step for a TZID that resolves to
nothing here: `defined_zone` turns one into a tzinfo (through dateutil, without icalendar's
process-wide cache of custom definitions, which a hostile server could grow without bound), and
refuses definitions whose transition rules are anything but plain yearly ones.

Unknown zones (nothing above applies): `resolve` answers None, and every reader then does the
same thing (docs/decisions/0012-one-path-for-zones-recurrence-retry-after.md): wall-clock times
in that zone are read as UTC, the item is kept, and its `timezone` is the name as written
(`zone_name`), so the odd name is visible; the store expands such a series in UTC too, which
is the reading the extractor stored.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "MAX_NAME",
    "ObjectZones",
    "defined_zone",
    "resolve",
    "split_vtimezones",
    "zone_key",
    "zone_name",
]

MAX_NAME: Final = 256  # characters of a zone name worth looking at
_MAX_KEY: Final = 64  # the longest IANA key is 32 characters
_UTC_NAMES: Final = frozenset(
    {
        "utc",
        "z",
        "gmt",
        "etc/utc",
        "etc/gmt",
        "tzone://microsoft/utc",
        "coordinated universal time",
    }
)
_DAY: Final = dt.timedelta(days=1)  # what datetime accepts as an offset is less than this
_VTZ_RULE_PARTS: Final = frozenset({"FREQ", "BYMONTH", "BYDAY", "BYMONTHDAY", "UNTIL", "COUNT"})


def _zoneinfo(key: str) -> ZoneInfo | None:
    if not 0 < len(key) <= _MAX_KEY or ".." in key or key.startswith("/"):
        return None
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def resolve(name: str) -> ZoneInfo | None:
    """The IANA zone a zone name stands for (see the module docstring), or None when unknown."""
    if not name or len(name) > MAX_NAME:
        return None  # checked before the cache, which must not keep huge hostile keys
    return _resolve(name)


@lru_cache(maxsize=4096)
def _resolve(name: str) -> ZoneInfo | None:
    cleaned = name.strip().strip('"').strip()
    if not cleaned or not cleaned.isprintable():
        return None
    if cleaned.lower() in _UTC_NAMES:
        return ZoneInfo("UTC")
    zone = _zoneinfo(cleaned)
    if zone is not None:
        return zone
    from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

    olson = WINDOWS_TO_OLSON.get(cleaned)
    if olson is not None:
        return _zoneinfo(str(olson))
    if cleaned.startswith("/"):
        parts = cleaned.strip("/").split("/")
        for begin in range(1, len(parts)):
            zone = _zoneinfo("/".join(parts[begin:]))
            if zone is not None:
                return zone
    return None


def zone_key(name: str | None) -> str | None:
    """The IANA key a zone name resolves to ("UTC" for UTC), or None when unknown."""
    zone = resolve(name) if name else None
    return zone.key if zone is not None else None


def zone_name(name: str) -> str:
    """The name to report for a zone: its IANA key when it has one, else the name as written."""
    zone = resolve(name)
    return zone.key if zone is not None else name


def defined_zone(tzid: str, block: Iterable[str]) -> dt.tzinfo | None:
    """A VTIMEZONE definition (its unfolded lines) as a tzinfo for `tzid`; None when unusable.

    Only yearly transition rules are accepted: an adversarial RRULE in a VTIMEZONE would make
    every offset lookup walk dateutil's recurrence to the year 9999. Offsets of a day or more
    ("+9999", which dateutil reads as 4 days) are refused too: datetime rejects them.
    """
    from dateutil.tz import tzical

    # dateutil cuts the TZID line at its first colon: one quoted in a parameter would give
    # the zone another name. It gets the name as `property_value` read it, without parameters.
    lines = [
        f"TZID:{tzid}" if line[:4].upper() == "TZID" and line[4:5] in (":", ";") else line
        for line in block
    ]
    for line in lines:
        if line[:5].upper() == "RRULE" and not _safe_rule(line.partition(":")[2]):
            return None
    try:
        zone = tzical(io.StringIO("\n".join(lines) + "\n")).get(tzid)
        if zone is None:
            return None
        zone.utcoffset(dt.datetime(2000, 1, 1))  # fail here, not later, on a broken one
        offsets = [(c.tzoffsetfrom, c.tzoffsetto) for c in getattr(zone, "_comps", ())]
    except Exception:  # dateutil raises assorted types on bad definitions
        return None
    if any(abs(offset) >= _DAY for pair in offsets for offset in pair):
        return None  # "+9999": every datetime in that zone would raise ValueError
    return zone


def _safe_rule(rule: str) -> bool:
    parts: dict[str, str] = {}
    for part in rule.upper().split(";"):
        key, _, value = part.partition("=")
        parts[key.strip()] = value.strip()
    return parts.get("FREQ") == "YEARLY" and set(parts) <= _VTZ_RULE_PARTS


def property_value(line: str) -> str | None:
    """The value of an unfolded content line: what follows the first colon outside a quoted
    parameter value (`TZID;X-A="a:b":Europe/Berlin` -> `Europe/Berlin`); None without one."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == ":" and not quoted:
            return line[index + 1 :]
    return None


def split_vtimezones(lines: Iterable[str]) -> tuple[list[str], dict[str, list[str]]]:
    """An object's unfolded lines without its VTIMEZONE blocks, and TZID -> the block's lines.

    The first definition of a TZID wins; a VTIMEZONE left open runs to the end of the text.
    """
    outside: list[str] = []
    blocks: dict[str, list[str]] = {}
    current: list[str] = []
    tzid: str | None = None
    depth = 0
    for line in lines:
        upper = line[:16].upper()
        if upper.startswith("BEGIN:VTIMEZONE"):
            depth += 1
            if depth == 1:
                current, tzid = [], None
        if not depth:
            outside.append(line)
            continue
        current.append(line)
        if depth == 1 and tzid is None and upper.startswith("TZID"):
            tzid = property_value(line)
        elif upper.startswith("END:VTIMEZONE"):
            depth -= 1
            if not depth and tzid is not None:
                blocks.setdefault(tzid, current)
    return outside, blocks


class ObjectZones:
    """TZID resolution scoped to one iCalendar object: `resolve`, then the object's own VTIMEZONE
    (`defined_zone`); None for an unknown zone, which readers read as UTC."""

    __slots__ = ("_blocks", "_found")

    def __init__(self, blocks: dict[str, list[str]]) -> None:
        self._blocks = blocks
        self._found: dict[str, dt.tzinfo | None] = {}

    def get(self, tzid: str) -> dt.tzinfo | None:
        if tzid not in self._found:
            zone: dt.tzinfo | None = resolve(tzid)
            if zone is None and tzid in self._blocks:
                zone = defined_zone(tzid, self._blocks[tzid])
            self._found[tzid] = zone
        return self._found[tzid]
