"""Deterministic, realistic calendar objects for tests, the demo and benchmarks.

`generate_events(count, seed=...)` returns `filename -> VCALENDAR text`, one UID per object, in
the shapes real clients write: timed events in several time zones (each with its VTIMEZONE),
all-day events, recurring series ended by COUNT or UNTIL or open-ended, with EXDATEs, RDATEs and
RECURRENCE-ID overrides (moved and cancelled occurrences) in the same object, meetings with an
organizer and attendees, alarms, escaped and non-ASCII text, folded long lines. The same
arguments always give the same text, so a test can regenerate what it loaded into a server and
a benchmark run is comparable with the previous one.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections.abc import Iterator
from functools import cache

from dateutil.rrule import rrulestr

__all__ = ["DEFAULT_START", "fold", "generate_events", "vtimezone"]

UTC = dt.UTC
DEFAULT_START = dt.datetime(2025, 1, 6, tzinfo=UTC)
DEFAULT_TZIDS = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC")

# Hand-written definitions with the RRULE shape Thunderbird, Apple and Outlook send. Other zones
# are generated from zoneinfo by icalendar (explicit transition dates).
_VTIMEZONES = {
    "Europe/Berlin": (
        ("DAYLIGHT", "+0100", "+0200", "CEST", "19700329T020000", "BYMONTH=3;BYDAY=-1SU"),
        ("STANDARD", "+0200", "+0100", "CET", "19701025T030000", "BYMONTH=10;BYDAY=-1SU"),
    ),
    "Europe/London": (
        ("DAYLIGHT", "+0000", "+0100", "BST", "19810329T010000", "BYMONTH=3;BYDAY=-1SU"),
        ("STANDARD", "+0100", "+0000", "GMT", "19961027T020000", "BYMONTH=10;BYDAY=-1SU"),
    ),
    "America/New_York": (
        ("DAYLIGHT", "-0500", "-0400", "EDT", "20070311T020000", "BYMONTH=3;BYDAY=2SU"),
        ("STANDARD", "-0400", "-0500", "EST", "20071104T020000", "BYMONTH=11;BYDAY=1SU"),
    ),
    "America/Los_Angeles": (
        ("DAYLIGHT", "-0800", "-0700", "PDT", "20070311T020000", "BYMONTH=3;BYDAY=2SU"),
        ("STANDARD", "-0700", "-0800", "PST", "20071104T020000", "BYMONTH=11;BYDAY=1SU"),
    ),
    "Australia/Sydney": (
        ("STANDARD", "+1100", "+1000", "AEST", "20080406T030000", "BYMONTH=4;BYDAY=1SU"),
        ("DAYLIGHT", "+1000", "+1100", "AEDT", "20081005T020000", "BYMONTH=10;BYDAY=1SU"),
    ),
    "Asia/Tokyo": (("STANDARD", "+0900", "+0900", "JST", "19700101T000000", ""),),
    "Asia/Kolkata": (("STANDARD", "+0530", "+0530", "IST", "19700101T000000", ""),),
}


@cache
def vtimezone(tzid: str) -> str:
    """A VTIMEZONE block (CRLF lines) for an IANA zone."""
    rules = _VTIMEZONES.get(tzid)
    if rules is None:
        import icalendar

        text: str = (
            icalendar.Timezone.from_tzid(
                tzid, first_date=dt.date(2015, 1, 1), last_date=dt.date(2035, 1, 1)
            )
            .to_ical()
            .decode()
        )
        return text.replace("\r\n", "\n").replace("\n", "\r\n")
    lines = ["BEGIN:VTIMEZONE", f"TZID:{tzid}"]
    for kind, offset_from, offset_to, name, start, rule in rules:
        lines += [
            f"BEGIN:{kind}",
            f"TZOFFSETFROM:{offset_from}",
            f"TZOFFSETTO:{offset_to}",
            f"TZNAME:{name}",
            f"DTSTART:{start}",
        ]
        if rule:
            lines.append(f"RRULE:FREQ=YEARLY;{rule}")
        lines.append(f"END:{kind}")
    lines.append("END:VTIMEZONE")
    return "".join(line + "\r\n" for line in lines)


def fold(line: str) -> str:
    """Fold a content line at 75 octets (RFC 5545 3.1) without splitting a UTF-8 sequence."""
    data = line.encode()
    if len(data) <= 75:
        return line + "\r\n"
    parts: list[str] = []
    begin, limit = 0, 75
    while begin < len(data):
        end = min(begin + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:
            end -= 1
        parts.append(data[begin:end].decode())
        begin, limit = end, 74  # continuation lines start with a space
    return "\r\n ".join(parts) + "\r\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")


_WORDS = (
    "Planning", "Review", "Standup", "Sync", "Budget", "Design", "Retro", "Offsite", "Lunch",
    "Dentist", "Workshop", "Demo", "Interview", "Roadmap", "Onboarding", "Quarterly", "Hiring",
    "Security", "Launch", "Training", "Yoga", "Football",
)  # fmt: skip
_PLACES = (
    "Room 4.01",
    "Main St 12, Springfield",
    "Café Müller; 2nd floor",
    "https://meet.example.com/abc-defg-hij",
    "東京オフィス 会議室B",
    "Zoom",
)
_PEOPLE = (
    ("Alice Example", "alice@example.com"),
    ("Bob O'Neil", "bob@example.org"),
    ("Doe, Jane", "jane.doe@example.net"),
    ("Zoë Ünal", "zoe@example.com"),
    ("Team: Ops", "ops@example.com"),
    ("Carlos Ruiz", "carlos@example.es"),
)


class _Gen:
    def __init__(self, rng: random.Random, start: dt.datetime, tzids: tuple[str, ...]) -> None:
        self.rng = rng
        self.start = start.astimezone(UTC)
        self.tzids = tzids

    # -- values --------------------------------------------------------------------------------

    def local_start(self) -> dt.datetime:
        rng = self.rng
        day = self.start.date() + dt.timedelta(days=rng.randint(-120, 300))
        return dt.datetime.combine(day, dt.time(rng.randint(7, 19), rng.choice((0, 15, 30, 45))))

    def stamp(self, name: str, local: dt.datetime, tzid: str | None) -> str:
        """A DTSTART-style line for a naive wall-clock time in `tzid` (None/"UTC": UTC)."""
        if tzid is None or tzid == "UTC":
            return f"{name}:{local:%Y%m%dT%H%M%S}Z"
        return f"{name};TZID={tzid}:{local:%Y%m%dT%H%M%S}"

    def stamps(self, name: str, values: list[dt.datetime], tzid: str | None) -> str:
        if tzid is None or tzid == "UTC":
            return f"{name}:" + ",".join(f"{v:%Y%m%dT%H%M%S}Z" for v in values)
        return f"{name};TZID={tzid}:" + ",".join(f"{v:%Y%m%dT%H%M%S}" for v in values)

    def summary(self) -> str:
        rng = self.rng
        words = rng.sample(_WORDS, rng.randint(1, 3))
        text = " ".join(words)
        roll = rng.random()
        if roll < 0.1:
            text += ", part 2; with notes"
        elif roll < 0.15:
            text += " \\ backslash"
        elif roll < 0.2:
            text = "Überprüfung \u2013 " + text + " 🎉"
        elif roll < 0.25:
            text += "\nsecond line"
        elif roll < 0.3:
            text = (text + " ") * 12  # long: folded
        return text

    def common(self, uid: str, *, status: bool = True) -> list[str]:
        rng = self.rng
        created = self.start - dt.timedelta(days=rng.randint(1, 400), seconds=rng.randint(0, 86399))
        modified = created + dt.timedelta(days=rng.randint(0, 30), seconds=rng.randint(0, 86399))
        lines = [
            f"UID:{uid}",
            f"DTSTAMP:{self.start:%Y%m%dT%H%M%S}Z",
            f"CREATED:{created:%Y%m%dT%H%M%S}Z",
            f"LAST-MODIFIED:{modified:%Y%m%dT%H%M%S}Z",
            f"SUMMARY:{_escape(self.summary())}",
        ]
        if rng.random() < 0.5:
            lines.append(f"SEQUENCE:{rng.randint(0, 4)}")
        if rng.random() < 0.4:
            lines.append(f"LOCATION:{_escape(rng.choice(_PLACES))}")
        if rng.random() < 0.2:
            body = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 60)))
            lines.append(f"DESCRIPTION:{_escape(body + chr(10) + 'Agenda: 1) a, 2) b; done')}")
        if rng.random() < 0.3:
            lines.append("TRANSP:" + rng.choice(("OPAQUE", "TRANSPARENT")))
        if status and rng.random() < 0.4:
            lines.append("STATUS:" + rng.choice(("CONFIRMED", "TENTATIVE", "CANCELLED")))
        if rng.random() < 0.1:
            lines.append("X-MICROSOFT-CDO-BUSYSTATUS:BUSY")
            lines.append('X-ALT-DESC;FMTTYPE="text/html":<p>Hello: <b>there</b></p>')
        if rng.random() < 0.1:
            lines.append("CATEGORIES:Work,Important")
        return lines

    def meeting(self) -> list[str]:
        rng = self.rng
        people = rng.sample(_PEOPLE, rng.randint(2, 5))
        organizer, *attendees = people
        lines = [f'ORGANIZER;CN="{organizer[0]}":mailto:{organizer[1]}']
        for name, email in attendees:
            partstat = rng.choice(("ACCEPTED", "NEEDS-ACTION", "DECLINED", "TENTATIVE"))
            lines.append(
                "ATTENDEE;CUTYPE=INDIVIDUAL;ROLE=REQ-PARTICIPANT;"
                f'PARTSTAT={partstat};RSVP=TRUE;CN="{name}":mailto:{email}'
            )
        return lines

    def alarm(self) -> list[str]:
        minutes = self.rng.choice((5, 10, 15, 30, 60))
        return [
            "BEGIN:VALARM",
            "ACTION:DISPLAY",
            "DESCRIPTION:Reminder",
            f"TRIGGER:-PT{minutes}M",
            "END:VALARM",
        ]

    def timing(self, local: dt.datetime, tzid: str) -> tuple[list[str], dt.timedelta]:
        length = dt.timedelta(minutes=self.rng.choice((15, 30, 45, 60, 90, 120, 240)))
        lines = [self.stamp("DTSTART", local, tzid)]
        if self.rng.random() < 0.2:
            hours, minutes = divmod(int(length.total_seconds()) // 60, 60)
            text = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
            lines.append(f"DURATION:PT{text}")
        else:
            lines.append(self.stamp("DTEND", local + length, tzid))
        return lines, length

    # -- objects -------------------------------------------------------------------------------

    def single(self, uid: str, tzid: str, meeting: bool) -> list[list[str]]:
        local = self.local_start()
        timing, _ = self.timing(local, tzid)
        body = self.common(uid) + timing
        if meeting:
            body += self.meeting()
        if self.rng.random() < 0.3:
            body += self.alarm()
        return [body]

    def all_day(self, uid: str) -> list[list[str]]:
        day = self.local_start().date()
        days = self.rng.choice((1, 1, 1, 2, 3, 7))
        body = [
            *self.common(uid),
            f"DTSTART;VALUE=DATE:{day:%Y%m%d}",
            f"DTEND;VALUE=DATE:{day + dt.timedelta(days=days):%Y%m%d}",
        ]
        if self.rng.random() < 0.5 and not any(line.startswith("TRANSP:") for line in body):
            body.append("TRANSP:TRANSPARENT")
        return [body]

    def series(self, uid: str, tzid: str, all_day: bool) -> list[list[str]]:
        rng = self.rng
        local = self.local_start()
        if all_day:
            local = dt.datetime.combine(local.date(), dt.time())
            rule = rng.choice(("FREQ=YEARLY", "FREQ=WEEKLY;COUNT=6", "FREQ=MONTHLY;COUNT=12"))
            timing = [
                f"DTSTART;VALUE=DATE:{local:%Y%m%d}",
                f"DTEND;VALUE=DATE:{local + dt.timedelta(days=1):%Y%m%d}",
            ]
            length = dt.timedelta(days=1)
        else:
            rule = rng.choice(
                (
                    f"FREQ=WEEKLY;COUNT={rng.randint(3, 30)}",
                    f"FREQ=DAILY;INTERVAL=2;COUNT={rng.randint(2, 20)}",
                    f"FREQ=WEEKLY;BYDAY=MO,WE,FR;COUNT={rng.randint(3, 40)}",
                    f"FREQ=MONTHLY;BYMONTHDAY={rng.randint(1, 28)};COUNT={rng.randint(2, 12)}",
                    f"FREQ=MONTHLY;BYDAY=2TU;COUNT={rng.randint(2, 12)}",
                    "UNTIL",
                    "UNTIL",
                    "FREQ=WEEKLY;BYDAY=" + rng.choice(("MO", "TU", "WE", "TH", "FR")),
                    "FREQ=WEEKLY;INTERVAL=2",
                    "FREQ=MONTHLY;BYDAY=-1FR",
                    "FREQ=DAILY",
                )
            )
            if rule != "UNTIL":
                # DTSTART on an occurrence of its own rule (RFC 5545 leaves the rest undefined).
                local = next(iter(rrulestr(rule.split(";COUNT=")[0], dtstart=local)))
            timing, length = self.timing(local, tzid)
        if rule == "UNTIL":
            # UNTIL as clients write it: the UTC start of the intended last occurrence.
            occurrences = list(itertools.islice(rrulestr("FREQ=WEEKLY", dtstart=local), 30))
            last = occurrences[rng.randint(1, len(occurrences) - 1)]
            rule = f"FREQ=WEEKLY;UNTIL={_to_utc(last, tzid):%Y%m%dT%H%M%S}Z"
            occurrences = occurrences[: occurrences.index(last) + 1]
        else:
            occurrences = list(itertools.islice(rrulestr(rule, dtstart=local), 60))
        master = self.common(uid, status=False) + timing + [f"RRULE:{rule}"]
        if rng.random() < 0.5:
            master += self.meeting()
        if rng.random() < 0.3:
            master += self.alarm()
        later = occurrences[1:]
        excluded = rng.sample(later, min(len(later), rng.choice((0, 0, 1, 2))))
        if excluded:
            excluded.sort()
            if all_day:
                master.append("EXDATE;VALUE=DATE:" + ",".join(f"{v:%Y%m%d}" for v in excluded))
            elif rng.random() < 0.5:
                master.append(self.stamps("EXDATE", excluded, tzid))
            else:
                master += [self.stamps("EXDATE", [v], tzid) for v in excluded]
        if not all_day and rng.random() < 0.15:
            extra = occurrences[-1] + dt.timedelta(days=rng.randint(1, 10), hours=1)
            master.append(self.stamps("RDATE", [extra], tzid))
        components = [master]
        candidates = [v for v in later if v not in excluded]
        for moment in rng.sample(candidates, min(len(candidates), rng.choice((0, 0, 1, 2)))):
            components.append(self.override(uid, moment, tzid, all_day, length))
        if len(components) > 1 and rng.random() < 0.3:
            components.reverse()  # some servers store overrides first
        return components

    def override(
        self, uid: str, moment: dt.datetime, tzid: str, all_day: bool, length: dt.timedelta
    ) -> list[str]:
        rng = self.rng
        if all_day:
            rid = f"RECURRENCE-ID;VALUE=DATE:{moment:%Y%m%d}"
        else:
            rid = self.stamp("RECURRENCE-ID", moment, tzid)
        body = [line for line in self.common(uid, status=False) if not line.startswith("SEQUENCE")]
        body += [rid, "SEQUENCE:1"]
        if rng.random() < 0.4:
            # A cancelled occurrence, the way Apple and Google write it.
            body.append("STATUS:CANCELLED")
            moved = moment
        else:
            moved = moment + rng.choice(
                (dt.timedelta(hours=1), dt.timedelta(days=1), dt.timedelta(hours=-2))
            )
        if all_day:
            day = moved.date()
            body += [
                f"DTSTART;VALUE=DATE:{day:%Y%m%d}",
                f"DTEND;VALUE=DATE:{day + dt.timedelta(days=1):%Y%m%d}",
            ]
        else:
            body += [self.stamp("DTSTART", moved, tzid), self.stamp("DTEND", moved + length, tzid)]
        return body


def _to_utc(local: dt.datetime, tzid: str) -> dt.datetime:
    if tzid == "UTC":
        return local
    from zoneinfo import ZoneInfo

    return local.replace(tzinfo=ZoneInfo(tzid)).astimezone(UTC).replace(tzinfo=None)


def _calendar(components: list[list[str]], tzids: set[str]) -> str:
    out = ["BEGIN:VCALENDAR\r\n", "VERSION:2.0\r\n", "PRODID:-//calsync//icalgen//EN\r\n"]
    out += [vtimezone(tzid) for tzid in sorted(tzids)]
    for body in components:
        out.append("BEGIN:VEVENT\r\n")
        out += [fold(line) for line in body]
        out.append("END:VEVENT\r\n")
    out.append("END:VCALENDAR\r\n")
    return "".join(out)


def _kinds(rng: random.Random) -> Iterator[str]:
    kinds = ("timed", "meeting", "all_day", "series", "series_all_day")
    weights = (35, 15, 15, 30, 5)
    while True:
        yield rng.choices(kinds, weights)[0]


def generate_events(
    count: int,
    *,
    seed: int = 0,
    start: dt.datetime = DEFAULT_START,
    tzids: tuple[str, ...] = DEFAULT_TZIDS,
    prefix: str = "evt",
) -> dict[str, str]:
    """`count` calendar objects, `filename -> VCALENDAR text`, the same for the same arguments.

    Events fall between about 4 months before and 10 months after `start`; series may extend
    beyond. Filenames are `<prefix>-<seed>-<n>.ics`; UIDs are unique across seeds and prefixes.
    """
    rng = random.Random(seed)  # noqa: S311  # test data, not secrets
    gen = _Gen(rng, start, tzids)
    objects: dict[str, str] = {}
    kinds = _kinds(rng)
    for n in range(count):
        name = f"{prefix}-{seed}-{n:06d}"
        uid = f"{name}-{rng.getrandbits(32):08x}@calsync.test"
        kind = next(kinds)
        tzid = rng.choice(tzids)
        if kind == "timed":
            components = gen.single(uid, tzid, meeting=False)
        elif kind == "meeting":
            components = gen.single(uid, tzid, meeting=True)
        elif kind == "all_day":
            components = gen.all_day(uid)
        elif kind == "series":
            components = gen.series(uid, tzid, all_day=False)
        else:
            components = gen.series(uid, tzid, all_day=True)
        used = {tzid} if tzid != "UTC" and not kind.endswith("all_day") else set()
        objects[f"{name}.ics"] = _calendar(components, used)
    return objects
