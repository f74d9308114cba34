"""One time-zone resolver: the CalDAV extractor, the Google and Graph converters and the store's
expansion read a zone name the same way (there were four copies, which disagreed on Windows
names, vendor TZID paths, Microsoft's UTC names and unknown zones)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from calsync import timezones
from calsync.providers.google.convert import event_from_json
from calsync.providers.ical import extract_events
from calsync.providers.microsoft.convert import to_event
from calsync.store.expand import Truncation, ical_occurrences, master_occurrences

pytestmark = pytest.mark.unit

UTC = dt.UTC

# name -> (UTC start of 2025-07-01 09:00 on that zone's wall clock, the event's `timezone`)
NAMES = [
    ("Europe/Berlin", dt.datetime(2025, 7, 1, 7, tzinfo=UTC), "Europe/Berlin"),
    ("W. Europe Standard Time", dt.datetime(2025, 7, 1, 7, tzinfo=UTC), "Europe/Berlin"),
    (
        "/freeassociation.sourceforge.net/Europe/Berlin",
        dt.datetime(2025, 7, 1, 7, tzinfo=UTC),
        "Europe/Berlin",
    ),
    ('"Europe/Berlin"', dt.datetime(2025, 7, 1, 7, tzinfo=UTC), "Europe/Berlin"),
    ("Pacific Standard Time", dt.datetime(2025, 7, 1, 16, tzinfo=UTC), "America/Los_Angeles"),
    ("tzone://Microsoft/Utc", dt.datetime(2025, 7, 1, 9, tzinfo=UTC), "UTC"),
    ("Coordinated Universal Time", dt.datetime(2025, 7, 1, 9, tzinfo=UTC), "UTC"),
    # Unknown: the wall clock is read as UTC and the name is kept as written.
    ("Mars/Olympus_Mons", dt.datetime(2025, 7, 1, 9, tzinfo=UTC), "Mars/Olympus_Mons"),
]


def caldav(name: str) -> tuple[dt.datetime | None, str | None]:
    if ":" in name:
        name = f'"{name}"'  # a parameter value with a colon is quoted (RFC 5545 3.2)
    (event,) = extract_events(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\nUID:u\r\n"
        f"DTSTART;TZID={name}:20250701T090000\r\nDTEND;TZID={name}:20250701T100000\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    return event.start, event.timezone


def google(name: str) -> tuple[dt.datetime | None, str | None]:
    event = event_from_json(
        {
            "id": "e",
            "start": {"dateTime": "2025-07-01T09:00:00", "timeZone": name},
            "end": {"dateTime": "2025-07-01T10:00:00", "timeZone": name},
        },
        uid="u",
    )
    return event.start, event.timezone


def graph(name: str) -> tuple[dt.datetime | None, str | None]:
    event = to_event(
        {
            "id": "e",
            "iCalUId": "u",
            "type": "singleInstance",
            "start": {"dateTime": "2025-07-01T09:00:00.0000000", "timeZone": name},
            "end": {"dateTime": "2025-07-01T10:00:00.0000000", "timeZone": name},
            "originalStartTimeZone": name,
        }
    )
    return event.start, event.timezone


@pytest.mark.parametrize("reader", [caldav, google, graph])
@pytest.mark.parametrize(("name", "start", "timezone"), NAMES)
def test_every_reader_resolves_a_zone_name_alike(
    reader: Any, name: str, start: dt.datetime, timezone: str
) -> None:
    assert reader(name) == (start, timezone)


def master(timezone: str | None) -> dict[str, Any]:
    return {
        "uid": "u",
        "recurrence_id": "",
        "calendar_id": "cal",
        "provider_id": "p",
        "status": "confirmed",
        "start_utc": dt.datetime(2024, 3, 29, 8, tzinfo=UTC),
        "end_utc": dt.datetime(2024, 3, 29, 9, tzinfo=UTC),
        "timezone": timezone,
        "all_day": False,
        "summary": "s",
        "location": "",
        "transparency": "opaque",
        "organizer": None,
        "attendees": "[]",
        "rrule": "FREQ=DAILY;COUNT=3",
        "rdates": "[]",
        "exdates": "[]",
    }


def expanded(timezone: str | None) -> list[dt.datetime | None]:
    found = master_occurrences(
        master(timezone),
        overridden=set(),
        start=None,
        end=None,
        cap=10,
        include_cancelled=False,
        truncation=Truncation(),
    )
    return [o.start for o in found]


@pytest.mark.parametrize(
    "name",
    ["Europe/Berlin", "W. Europe Standard Time", "/freeassociation.sourceforge.net/Europe/Berlin"],
)
def test_the_store_expands_a_stored_zone_name_on_the_same_wall_clock(name: str) -> None:
    # 09:00 Berlin, daily across the switch to summer time on 2024-03-31.
    assert expanded(name) == [
        dt.datetime(2024, 3, 29, 8, tzinfo=UTC),
        dt.datetime(2024, 3, 30, 8, tzinfo=UTC),
        dt.datetime(2024, 3, 31, 7, tzinfo=UTC),
    ]


def test_a_range_query_reports_the_zone_the_extractor_stored() -> None:
    raw = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\nUID:u\r\n"
        "DTSTART;TZID=W. Europe Standard Time:20250701T090000\r\n"
        "DTEND;TZID=W. Europe Standard Time:20250701T100000\r\n"
        "RRULE:FREQ=DAILY;COUNT=2\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    (stored,) = extract_events(raw)
    found = list(
        ical_occurrences(
            raw,
            calendar_id="cal",
            provider_id="p",
            lower=dt.datetime(2025, 6, 1, tzinfo=UTC),
            upper=dt.datetime(2025, 8, 1, tzinfo=UTC),
            start=None,
            end=None,
            cap=10,
            include_cancelled=False,
            truncation=Truncation(),
        )
    )
    assert [o.start for o in found] == [
        dt.datetime(2025, 7, 1, 7, tzinfo=UTC),
        dt.datetime(2025, 7, 2, 7, tzinfo=UTC),
    ]
    assert {o.timezone for o in found} == {stored.timezone} == {"Europe/Berlin"}


def test_the_resolver_itself() -> None:
    assert timezones.zone_key("Pacific Standard Time") == "America/Los_Angeles"
    assert timezones.zone_key(" Europe/Berlin ") == "Europe/Berlin"
    assert timezones.zone_key("GMT") == "UTC"
    assert timezones.zone_key("Nowhere Standard Time") is None
    assert timezones.zone_key("../../etc/passwd") is None
    assert timezones.zone_key("x" * 10_000) is None
    assert timezones.zone_key("") is None
    assert timezones.zone_name("Nowhere Standard Time") == "Nowhere Standard Time"


def test_huge_names_are_not_kept_in_the_cache() -> None:
    before = timezones._resolve.cache_info().currsize
    for size in range(300, 310):
        assert timezones.resolve("x" * size * 1000) is None
    assert timezones._resolve.cache_info().currsize == before


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("TZID:Europe/Berlin", "Europe/Berlin"),
        ('TZID;X-NOTE="a:b":My Zone', "My Zone"),
        ("TZID;X-NOTE=plain:Zone:With:Colons", "Zone:With:Colons"),
        ("TZID", None),
        ('TZID;X-NOTE="never closed:Zone', None),
    ],
)
def test_property_value_skips_colons_in_quoted_parameters(line: str, value: str | None) -> None:
    assert timezones.property_value(line) == value


def test_a_vtimezone_whose_tzid_line_quotes_a_colon_is_found_by_its_name() -> None:
    block = [
        "BEGIN:VTIMEZONE",
        'TZID;X-NOTE="a:b":My Zone',
        "BEGIN:STANDARD",
        "DTSTART:19700101T000000",
        "TZOFFSETFROM:+0300",
        "TZOFFSETTO:+0300",
        "END:STANDARD",
        "END:VTIMEZONE",
    ]
    outside, blocks = timezones.split_vtimezones(["BEGIN:VCALENDAR", *block, "END:VCALENDAR"])
    assert outside == ["BEGIN:VCALENDAR", "END:VCALENDAR"]
    assert list(blocks) == ["My Zone"]
    zone = timezones.ObjectZones(blocks).get("My Zone")
    assert zone is not None
    assert zone.utcoffset(dt.datetime(2026, 1, 1)) == dt.timedelta(hours=3)
