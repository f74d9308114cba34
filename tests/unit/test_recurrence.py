"""One recurrence interpretation: the window check (the extractor's `series_end`, which lets a
range query skip a series) and the store's expansion read RRULE the same way, so a query never
skips a series that has an occurrence in its range. The copies disagreed on a date UNTIL of a
timed series (the window check ended the series at midnight UTC of that date, as
recurring-ical-events does, while the stored-rule expansion kept that day's occurrence, after
series_end) and on a lower-case UTC designator (the stored-rule expansion refused it)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from calsync import recurrence
from calsync.model import Event
from calsync.providers.ical import extract_events
from calsync.store.expand import Truncation, ical_occurrences, master_occurrences

pytestmark = pytest.mark.unit

UTC = dt.UTC


def ics(*lines: str) -> str:
    body = "\r\n".join(lines)
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\nUID:u\r\n"
        f"{body}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def row(event: Event) -> dict[str, Any]:
    return {
        "uid": event.uid,
        "recurrence_id": "",
        "calendar_id": "cal",
        "provider_id": "p",
        "status": event.status,
        "start_utc": event.start,
        "end_utc": event.end,
        "timezone": event.timezone,
        "all_day": event.all_day,
        "summary": "",
        "location": "",
        "transparency": "opaque",
        "organizer": None,
        "attendees": "[]",
        "rrule": event.rrule,
        "rdates": json.dumps(event.rdates),
        "exdates": json.dumps(event.exdates),
    }


def from_stored_rule(event: Event) -> list[tuple[dt.datetime | None, dt.datetime | None]]:
    found = master_occurrences(
        row(event),
        overridden=set(),
        start=None,
        end=None,
        cap=1000,
        include_cancelled=False,
        truncation=Truncation(),
    )
    return [(o.start, o.end) for o in found]


def from_ical(raw: str) -> list[tuple[dt.datetime | None, dt.datetime | None]]:
    found = ical_occurrences(
        raw,
        calendar_id="cal",
        provider_id="p",
        lower=dt.datetime(2025, 1, 1, tzinfo=UTC),
        upper=dt.datetime(2026, 1, 1, tzinfo=UTC),
        start=None,
        end=None,
        cap=1000,
        include_cancelled=False,
        truncation=Truncation(),
    )
    return [(o.start, o.end) for o in found]


SERIES = [
    # A date UNTIL on a timed series (common in the wild): the UNTIL day's instance counts.
    (
        "DTSTART;TZID=Europe/Berlin:20250301T090000",
        "DTEND;TZID=Europe/Berlin:20250301T100000",
        "RRULE:FREQ=DAILY;UNTIL=20250310",
    ),
    # A lower-case UTC designator.
    (
        "DTSTART;TZID=Europe/Berlin:20250301T090000",
        "DTEND;TZID=Europe/Berlin:20250301T100000",
        "RRULE:FREQ=DAILY;UNTIL=20250310T080000z",
    ),
    ("DTSTART:20250301T090000Z", "DURATION:PT1H", "RRULE:FREQ=WEEKLY;UNTIL=20250329T090000Z"),
    ("DTSTART;VALUE=DATE:20250301", "RRULE:FREQ=DAILY;UNTIL=20250310"),
]


@pytest.mark.parametrize("lines", SERIES)
def test_the_window_check_bounds_every_occurrence_the_store_expands(lines: tuple[str]) -> None:
    raw = ics(*lines)
    (event,) = extract_events(raw)
    assert event.series_end is not None
    stored = from_stored_rule(event)
    assert stored
    assert all(end is not None and end <= event.series_end for _, end in stored)
    try:
        text = from_ical(raw)
    except Exception:  # the store then expands the stored rule (calsync.store.expand)
        assert "z" in lines[-1]
    else:
        assert text == stored  # both of the store's expansions give the same instances


def test_a_date_until_is_midnight_utc_of_that_date() -> None:
    (event,) = extract_events(ics(*SERIES[0]))
    starts = [start for start, _ in from_stored_rule(event)]
    assert starts[-1] == dt.datetime(2025, 3, 9, 8, tzinfo=UTC)  # 09:00 Berlin on the 9th
    assert event.series_end == dt.datetime(2025, 3, 10, 1, tzinfo=UTC)  # UNTIL + 1 h, a bound


def test_until_is_read_one_way() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert recurrence.until_local("20250310", berlin) == dt.datetime(2025, 3, 10, 1)
    assert recurrence.until_local("20250310", None) == dt.datetime(2025, 3, 10)
    assert recurrence.until_local("20250310T080000Z", berlin) == dt.datetime(2025, 3, 10, 9)
    assert recurrence.until_local("20250310t080000z", berlin) == dt.datetime(2025, 3, 10, 9)
    assert recurrence.until_local("20250310T090000", berlin) == dt.datetime(2025, 3, 10, 9)
    with pytest.raises(ValueError):
        recurrence.until_local("soon", berlin)
    assert recurrence.rule_parts("RRULE:freq=daily;COUNT=3") == {"FREQ": "daily", "COUNT": "3"}
    start = dt.datetime(2025, 3, 1, 9)
    assert recurrence.last_start("RRULE:FREQ=DAILY;COUNT=3", start, None) == dt.datetime(
        2025, 3, 3, 9, tzinfo=UTC
    )
