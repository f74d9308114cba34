"""The fast iCalendar extractor against an icalendar-based reference, and against hostile input.

The reference below reads every field through icalendar's full parse (and series ends through
recurring-ical-events), independently of the extractor's own line handling, and must agree
field by field on everything icalgen writes.
"""

from __future__ import annotations

import datetime as dt
import random
import warnings
from typing import Any

import icalendar
import pytest
import recurring_ical_events
from dateutil.rrule import rrulestr

from calsync.model import Event
from calsync.providers.base import ProviderError
from calsync.providers.ical import (
    MAX_COMPONENTS,
    MAX_OBJECT_SIZE,
    MalformedCalendarData,
    extract_events,
    parse_resource,
)
from calsync.testing.icalgen import generate_events, vtimezone

pytestmark = pytest.mark.unit

UTC = dt.UTC


# --- reference ----------------------------------------------------------------------------------


def _utc(value: dt.date | dt.datetime) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        return dt.datetime.combine(value, dt.time(), UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _values(prop: Any) -> list[Any]:
    if prop is None:
        return []
    props = prop if isinstance(prop, list) else [prop]
    return [d.dt for p in props for d in p.dts]


def _address(value: Any) -> str:
    text = str(value)
    return text[7:] if text.lower().startswith("mailto:") else text


def _canonical_rule(rule: str | None) -> frozenset[str] | None:
    return None if rule is None else frozenset(rule.upper().split(";"))


def _reference_series_end(cal: icalendar.Calendar, master: icalendar.Event) -> dt.datetime | None:
    rule = master.get("RRULE")
    if rule is not None and "COUNT" not in rule and "UNTIL" not in rule:
        return None
    single = icalendar.Calendar()
    for tz in cal.walk("VTIMEZONE"):
        single.add_component(tz)
    copy = icalendar.Event.from_ical(master.to_ical())
    copy.pop("EXDATE", None)
    single.add_component(copy)
    ends = [
        _utc(occurrence.end)
        for occurrence in recurring_ical_events.of(single).between(
            dt.datetime(1990, 1, 1), dt.datetime(2200, 1, 1)
        )
    ]
    return max(ends)


def reference_events(raw: str) -> list[Event]:
    cal = icalendar.Calendar.from_ical(raw)
    events = []
    for comp in cal.subcomponents:
        if comp.name != "VEVENT":
            continue
        event = Event(uid=str(comp["UID"]))
        if "RECURRENCE-ID" in comp:
            event.recurrence_id = _utc(comp["RECURRENCE-ID"].dt).isoformat()
        status = str(comp.get("STATUS", "")).lower()
        if status in ("tentative", "cancelled"):
            event.status = status  # type: ignore[assignment]
        start = comp["DTSTART"].dt
        event.start = _utc(start)
        event.all_day = not isinstance(start, dt.datetime)
        if isinstance(start, dt.datetime) and start.tzinfo is not None:
            event.timezone = start.tzinfo.key if "TZID" in comp["DTSTART"].params else "UTC"  # type: ignore[attr-defined]
        if "DTEND" in comp:
            event.end = _utc(comp["DTEND"].dt)
        elif "DURATION" in comp:
            length = comp["DURATION"].dt
            # Days on the wall clock (Python's aware arithmetic), the rest exactly.
            shifted = start + dt.timedelta(days=length.days)
            event.end = _utc(shifted) + dt.timedelta(seconds=length.seconds)
        else:
            event.end = event.start + dt.timedelta(days=1 if event.all_day else 0)
        event.summary = str(comp.get("SUMMARY", ""))
        event.location = str(comp.get("LOCATION", ""))
        if str(comp.get("TRANSP", "")).upper() == "TRANSPARENT":
            event.transparency = "transparent"
        if "ORGANIZER" in comp:
            event.organizer = _address(comp["ORGANIZER"])
        attendees = comp.get("ATTENDEE", [])
        attendees = attendees if isinstance(attendees, list) else [attendees]
        event.attendees = [_address(a) for a in attendees]
        if "RRULE" in comp:
            event.rrule = comp["RRULE"].to_ical().decode()
        event.rdates = [_utc(v).isoformat() for v in _values(comp.get("RDATE"))]
        event.exdates = [_utc(v).isoformat() for v in _values(comp.get("EXDATE"))]
        if "LAST-MODIFIED" in comp:
            event.last_modified = _utc(comp["LAST-MODIFIED"].dt)
        event.sequence = int(comp.get("SEQUENCE", 0))
        if event.rrule or event.rdates:
            event.series_end = _reference_series_end(cal, comp)
        events.append(event)
    return events


def _comparable(event: Event) -> Event:
    copy = Event(**{name: getattr(event, name) for name in Event.__slots__})  # type: ignore[attr-defined]
    copy.rrule = _canonical_rule(event.rrule)  # type: ignore[assignment]
    return copy


CORPUS = {
    **generate_events(600, seed=1),
    **generate_events(300, seed=2, tzids=("Europe/London", "Australia/Sydney", "UTC")),
    **generate_events(
        150, seed=3, tzids=("America/Los_Angeles", "Asia/Kolkata", "America/Sao_Paulo")
    ),
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_extractor_equals_reference_on_generated_objects(seed: int) -> None:
    names = [name for name in CORPUS if name.startswith(f"evt-{seed}-")]
    assert names
    for name in names:
        raw = CORPUS[name]
        fast = extract_events(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = reference_events(raw)
        assert len(fast) == len(reference), name
        for mine, theirs in zip(fast, reference, strict=True):
            differing = {
                field: (getattr(mine, field), getattr(theirs, field))
                for field in Event.__slots__  # type: ignore[attr-defined]
                if getattr(_comparable(mine), field) != getattr(_comparable(theirs), field)
            }
            assert not differing, (name, differing)


def test_corpus_covers_the_interesting_shapes() -> None:
    events = [e for raw in CORPUS.values() for e in extract_events(raw)]
    rules = [e.rrule or "" for e in events]
    assert any("COUNT=" in r for r in rules)
    assert any("UNTIL=" in r for r in rules)
    assert any(r and "COUNT=" not in r and "UNTIL=" not in r for r in rules)
    assert any(e.exdates for e in events)
    assert any(e.rdates for e in events)
    overrides = [e for e in events if e.recurrence_id]
    assert any(e.status == "cancelled" for e in overrides)
    assert any(e.status == "confirmed" for e in overrides)
    assert any(e.all_day for e in events)
    assert any(e.all_day and e.rrule for e in events)
    assert {e.timezone for e in events} >= {"Europe/Berlin", "America/New_York", "UTC", None}
    assert any(e.attendees and e.organizer for e in events)
    assert any(e.transparency == "transparent" for e in events)
    assert any("," in e.summary or ";" in e.summary or "\n" in e.summary for e in events)
    assert any(e.series_end is None and e.rrule for e in events)
    assert any("DURATION:" in raw for raw in CORPUS.values())
    assert any("\r\n " in raw for raw in CORPUS.values())


def test_generator_is_deterministic() -> None:
    assert generate_events(50, seed=7) == generate_events(50, seed=7)
    assert generate_events(50, seed=7) != generate_events(50, seed=8)


@pytest.mark.parametrize(
    "tzid",
    [
        "Europe/Berlin",
        "Europe/London",
        "America/New_York",
        "America/Los_Angeles",
        "Australia/Sydney",
        "Asia/Tokyo",
        "Asia/Kolkata",
    ],
)
def test_embedded_vtimezones_match_zoneinfo(tzid: str) -> None:
    from zoneinfo import ZoneInfo

    block = vtimezone(tzid).replace(f"TZID:{tzid}", "TZID:Custom")
    defined = icalendar.Calendar.from_ical(f"BEGIN:VCALENDAR\r\n{block}END:VCALENDAR\r\n").walk(
        "VTIMEZONE"
    )[0]
    zone = icalendar.timezone.tzp.create_timezone(defined)
    moment = dt.datetime(2024, 1, 1, 12)
    while moment < dt.datetime(2027, 1, 1):
        assert zone.utcoffset(moment) == ZoneInfo(tzid).utcoffset(moment), (tzid, moment)
        moment += dt.timedelta(days=5, hours=7)


# --- hand-written expectations ------------------------------------------------------------------


def _cal(*lines: str, tz: str = "") -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\n"
        + tz
        + "".join(f"{x}\r\n" for x in lines)
        + ("END:VCALENDAR\r\n")
    )


def _one(*lines: str, tz: str = "") -> Event:
    (event,) = extract_events(_cal("BEGIN:VEVENT", *lines, "END:VEVENT", tz=tz))
    return event


def test_defaults_for_missing_end() -> None:
    timed = _one("UID:a", "DTSTART:20250301T100000Z")
    assert timed.end == timed.start == dt.datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert timed.timezone == "UTC"
    day = _one("UID:b", "DTSTART;VALUE=DATE:20250301")
    assert day.all_day and day.timezone is None
    assert day.end == dt.datetime(2025, 3, 2, tzinfo=UTC)


def test_floating_time_is_read_as_utc() -> None:
    event = _one("UID:a", "DTSTART:20250301T100000", "DTEND:20250301T110000")
    assert event.start == dt.datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert event.timezone is None and not event.all_day


def test_duration_days_follow_the_wall_clock_across_dst() -> None:
    # Berlin switches to summer time on 2025-03-30: one day later is 23 hours later.
    event = _one("UID:a", "DTSTART;TZID=Europe/Berlin:20250329T120000", "DURATION:P1DT30M")
    assert event.start == dt.datetime(2025, 3, 29, 11, tzinfo=UTC)
    assert event.end == dt.datetime(2025, 3, 30, 10, 30, tzinfo=UTC)


def test_text_unescaping_params_and_addresses() -> None:
    event = _one(
        "UID:a",
        "DTSTART:20250301T100000Z",
        "SUMMARY:One\\, two\\; three\\\\four\\nfive",
        'LOCATION;ALTREP="http://x.test/a:b":Room\\, 1',
        'ORGANIZER;CN="Doe: Jane":MAILTO:jane@example.com',
        'ATTENDEE;CN="A, B";DELEGATED-FROM="mailto:x@y.test":mailto:a@b.test',
        "ATTENDEE:urn:uuid:1234",
        "TRANSP:TRANSPARENT",
        "STATUS:tentative",
        "SEQUENCE:3",
        "LAST-MODIFIED:20250101T000000Z",
    )
    assert event.summary == "One, two; three\\four\nfive"
    assert event.location == "Room, 1"
    assert event.organizer == "jane@example.com"
    assert event.attendees == ["a@b.test", "urn:uuid:1234"]
    assert event.transparency == "transparent"
    assert event.status == "tentative"
    assert event.sequence == 3
    assert event.last_modified == dt.datetime(2025, 1, 1, tzinfo=UTC)


def test_folded_lines_lf_and_cr_line_endings() -> None:
    raw = _cal(
        "BEGIN:VEVENT",
        "UID:a",
        "DTSTART:20250301T100000Z",
        "SUMMARY:Long",
        " er",
        "\ttext",
        "END:VEVENT",
    )
    for text in (raw, raw.replace("\r\n", "\n"), "\ufeff" + raw):
        (event,) = extract_events(text)
        assert event.summary == "Longertext"


def test_series_end_count_until_rdate_and_open() -> None:
    weekly = _one(
        "UID:a",
        "DTSTART;TZID=Europe/Berlin:20250301T090000",
        "DTEND;TZID=Europe/Berlin:20250301T100000",
        "RRULE:FREQ=WEEKLY;COUNT=10",
    )
    # The tenth Saturday is 2025-05-03, in summer time (UTC+2).
    assert weekly.series_end == dt.datetime(2025, 5, 3, 8, tzinfo=UTC)
    until = _one(
        "UID:b",
        "DTSTART;VALUE=DATE:20250301",
        "RRULE:FREQ=DAILY;UNTIL=20250310",
        "EXDATE;VALUE=DATE:20250305",
    )
    assert until.series_end == dt.datetime(2025, 3, 11, tzinfo=UTC)
    assert until.exdates == ["2025-03-05T00:00:00+00:00"]
    rdates = _one(
        "UID:c",
        "DTSTART:20250301T100000Z",
        "DURATION:PT1H",
        "RDATE:20250401T100000Z,20250501T100000Z",
        "RDATE;VALUE=PERIOD:20250601T100000Z/20250601T120000Z",
    )
    assert rdates.recurring
    assert rdates.series_end == dt.datetime(2025, 6, 1, 11, tzinfo=UTC)
    open_ended = _one("UID:d", "DTSTART:20250301T100000Z", "RRULE:FREQ=MONTHLY;BYDAY=-1FR")
    assert open_ended.series_end is None


@pytest.mark.parametrize("seed", range(4))
def test_series_end_shortcuts_agree_with_dateutil(seed: int) -> None:
    rng = random.Random(seed)
    weekdays = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
    for _ in range(250):
        start = dt.datetime(2020, 1, 1, 9, 30) + dt.timedelta(
            days=rng.randint(0, 2000), hours=rng.randint(0, 10)
        )
        freq = rng.choice(["DAILY", "WEEKLY", "MONTHLY", "YEARLY"])
        parts = [f"FREQ={freq}", f"COUNT={rng.randint(1, 60)}"]
        if rng.random() < 0.5:
            parts.append(f"INTERVAL={rng.randint(1, 4)}")
        if freq == "WEEKLY" and rng.random() < 0.6:
            parts.append("BYDAY=" + ",".join(rng.sample(weekdays, rng.randint(1, 4))))
        if freq == "MONTHLY" and rng.random() < 0.6:
            days = rng.sample(range(1, 29), rng.randint(1, 3))
            parts.append("BYMONTHDAY=" + ",".join(map(str, days)))
        rule = ";".join(parts)
        expected = list(rrulestr(rule, dtstart=start))[-1].replace(tzinfo=UTC)
        event = _one("UID:x", f"DTSTART:{start:%Y%m%dT%H%M%S}Z", "DURATION:PT1H", f"RRULE:{rule}")
        assert event.series_end == expected + dt.timedelta(hours=1), (rule, start)


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=SECONDLY;COUNT=100000000",
        "FREQ=DAILY;COUNT=5;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=SECONDLY;COUNT=5;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=YEARLY;COUNT=5;BYWEEKNO=60",
        "FREQ=MONTHLY;COUNT=3;BYSETPOS=40;BYDAY=MO",
        "FREQ=DAILY;COUNT=-3",
        "FREQ=NONSENSE;COUNT=3",
        "garbage",
    ],
)
def test_explosive_or_broken_rules_stay_open_without_expanding(rule: str) -> None:
    event = _one("UID:a", "DTSTART:20250301T100000Z", f"RRULE:{rule}")
    assert event.rrule == rule
    assert event.series_end is None


def test_overrides_share_the_uid_and_carry_their_recurrence_id() -> None:
    master, moved, cancelled = extract_events(
        _cal(
            "BEGIN:VEVENT",
            "UID:s",
            "DTSTART;TZID=America/New_York:20250106T090000",
            "RRULE:FREQ=WEEKLY",
            "END:VEVENT",
            "BEGIN:VEVENT",
            "UID:s",
            "RECURRENCE-ID;TZID=America/New_York:20250113T090000",
            "DTSTART;TZID=America/New_York:20250113T110000",
            "END:VEVENT",
            "BEGIN:VEVENT",
            "UID:s",
            "RECURRENCE-ID:20250120T140000Z",
            "STATUS:CANCELLED",
            "DTSTART;TZID=America/New_York:20250120T090000",
            "END:VEVENT",
        )
    )
    assert master.recurrence_id is None and master.recurring
    assert moved.recurrence_id == "2025-01-13T14:00:00+00:00"
    assert moved.start == dt.datetime(2025, 1, 13, 16, tzinfo=UTC)
    assert cancelled.status == "cancelled"


# --- time zones the zoneinfo database does not know -------------------------------------------

_WINDOWS_TZ = """BEGIN:VTIMEZONE\r
TZID:W. Europe Standard Time\r
BEGIN:STANDARD\r
DTSTART:16010101T030000\r
TZOFFSETFROM:+0200\r
TZOFFSETTO:+0100\r
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10\r
END:STANDARD\r
BEGIN:DAYLIGHT\r
DTSTART:16010101T020000\r
TZOFFSETFROM:+0100\r
TZOFFSETTO:+0200\r
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3\r
END:DAYLIGHT\r
END:VTIMEZONE\r
"""

_CUSTOM_TZ = """BEGIN:VTIMEZONE\r
TZID:Custom Zone 1\r
BEGIN:STANDARD\r
DTSTART:19700101T000000\r
TZOFFSETFROM:+0530\r
TZOFFSETTO:+0530\r
END:STANDARD\r
END:VTIMEZONE\r
"""


def test_windows_tzid_with_and_without_vtimezone() -> None:
    lines = ("UID:w", "DTSTART;TZID=W. Europe Standard Time:20250701T100000", "DURATION:PT1H")
    for tz in ("", _WINDOWS_TZ):
        event = _one(*lines, tz=tz)
        assert event.start == dt.datetime(2025, 7, 1, 8, tzinfo=UTC)
        assert event.timezone == "Europe/Berlin"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (reference,) = reference_events(_cal("BEGIN:VEVENT", *lines, "END:VEVENT", tz=tz))
        assert reference.start == event.start and reference.end == event.end


def test_quoted_and_globally_unique_tzids() -> None:
    event = _one(
        "UID:g",
        'DTSTART;TZID="/freeassociation.sourceforge.net/Tzfile/Europe/Berlin":20250115T100000',
    )
    assert event.start == dt.datetime(2025, 1, 15, 9, tzinfo=UTC)
    assert event.timezone == "Europe/Berlin"


def test_custom_vtimezone_definition_is_used() -> None:
    event = _one(
        "UID:c",
        "DTSTART;TZID=Custom Zone 1:20250301T100000",
        "EXDATE;TZID=Custom Zone 1:20250308T100000",
        "RRULE:FREQ=WEEKLY;COUNT=2",
        tz=_CUSTOM_TZ,
    )
    assert event.start == dt.datetime(2025, 3, 1, 4, 30, tzinfo=UTC)
    assert event.timezone == "Custom Zone 1"
    assert event.exdates == ["2025-03-08T04:30:00+00:00"]
    assert event.series_end == dt.datetime(2025, 3, 8, 4, 30, tzinfo=UTC)


def test_unknown_tzid_without_definition_is_read_as_utc_and_named_as_written() -> None:
    event = _one("UID:u", "DTSTART;TZID=Mars/Olympus_Mons:20250301T100000")
    assert event.start == dt.datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert event.timezone == "Mars/Olympus_Mons"


def test_vtimezone_with_an_explosive_rule_is_not_used() -> None:
    hostile = _CUSTOM_TZ.replace(
        "TZOFFSETTO:+0530\r\n",
        "TZOFFSETTO:+0530\r\nRRULE:FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=30\r\n",
    )
    event = _one("UID:h", "DTSTART;TZID=Custom Zone 1:20250301T100000", tz=hostile)
    assert event.start == dt.datetime(2025, 3, 1, 10, tzinfo=UTC)  # as an unknown zone
    assert event.timezone == "Custom Zone 1"


# --- hostile input -----------------------------------------------------------------------------


def _raises(raw: str | bytes, match: str | None = None) -> MalformedCalendarData:
    with pytest.raises(MalformedCalendarData, match=match) as info:
        parse_resource("/cal/x.ics", '"e"', raw)
    assert "/cal/x.ics" in str(info.value)
    return info.value


def test_malformed_error_is_a_non_retryable_provider_error() -> None:
    error = _raises("hello world")
    assert isinstance(error, ProviderError)
    assert error.retryable is False
    assert error.reason == "MalformedCalendarData"


def _vevent(*lines: str) -> str:
    return _cal("BEGIN:VEVENT", *lines, "END:VEVENT")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("", "no complete VCALENDAR"),
        ("hello world", "outside VCALENDAR"),
        ("X-A:1\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", "outside VCALENDAR"),
        ("BEGIN:VEVENT\r\nUID:a\r\nEND:VEVENT\r\n", "expected BEGIN:VCALENDAR"),
        ("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:a\r\n", "missing END"),
        (_cal("BEGIN:VEVENT", "UID:a", "END:VTODO"), "does not close"),
        (_vevent("DTSTART:20250101T000000Z"), "without UID"),
        (_vevent("UID:a", "DTSTART:2024blah"), "DATE-TIME"),
        (_vevent("UID:a", "DTSTART:20241332T000000Z"), "DATE-TIME"),
        (_vevent("UID:a", "DTSTART:20240101T000000Z", "DURATION:soon"), "DURATION"),
        (_vevent("UID:a", "no colon here"), "content line"),
        (_vevent('UID;X="open:a'), "quote"),
        (_cal() + _cal(), "after END"),
        (_cal("BEGIN:VTODO", "BEGIN:VEVENT", "UID:a", "END:VEVENT", "END:VTODO"), "inside VTODO"),
    ],
)
def test_garbage_is_rejected_clearly(raw: str, match: str) -> None:
    _raises(raw, match)


def test_deep_nesting_is_refused_without_recursion() -> None:
    depth = 500
    raw = "BEGIN:VCALENDAR\r\n" + "BEGIN:X-NEST\r\n" * depth + "END:X-NEST\r\n" * depth
    _raises(raw + "END:VCALENDAR\r\n", "nested deeper")


def test_component_count_is_capped() -> None:
    body = "BEGIN:VEVENT\r\nUID:a\r\nEND:VEVENT\r\n" * (MAX_COMPONENTS + 1)
    _raises(f"BEGIN:VCALENDAR\r\n{body}END:VCALENDAR\r\n", "more than")


def test_object_size_is_capped() -> None:
    big = "X" * (MAX_OBJECT_SIZE + 1)
    _raises(_cal("BEGIN:VEVENT", "UID:a", f"DESCRIPTION:{big}", "END:VEVENT"), "exceeds the limit")


def test_non_utf8_bytes_are_replaced_not_fatal() -> None:
    raw = _cal(
        "BEGIN:VEVENT", "UID:a", "DTSTART:20250301T100000Z", "SUMMARY:caf\udcff", "END:VEVENT"
    )
    data = raw.replace("\udcff", "").encode().replace(b"caf", b"caf\xe9\xff")
    resource = parse_resource("/cal/a.ics", None, data)
    assert resource.events[0].summary == "caf\ufffd\ufffd"
    assert resource.raw == data.decode("utf-8", "replace")
    assert resource.raw_format == "ical"


def test_objects_without_events_are_empty_resources() -> None:
    todo = _cal("BEGIN:VTODO", "UID:t", "SUMMARY:x", "END:VTODO")
    assert parse_resource("/cal/t.ics", "1", todo).events == []
