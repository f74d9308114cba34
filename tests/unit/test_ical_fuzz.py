"""Hostile iCalendar, generated and hand-made, on the CalDAV input path: whatever a server sends
as calendar data, the extractor returns events or raises MalformedCalendarData with a clear
message (never another exception, never a hang), the CalDAV provider turns that into a skipped
item with its reason (shown on the connection), and the one time-zone resolver answers a zone
or None for any name and any VTIMEZONE. The cases hypothesis found once are kept as explicit
examples. The store's expansion of such objects is tests/unit/test_expand_hostile.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from calsync import timezones
from calsync.api.conditions import DEGRADED
from calsync.controllers import readiness
from calsync.model import Resource
from calsync.providers.caldav.provider import CalDAVProvider, _Member
from calsync.providers.ical import (
    MAX_OBJECT_SIZE,
    MalformedCalendarData,
    extract_events,
    parse_resource,
)

pytestmark = pytest.mark.unit

UTC = dt.UTC
SECONDS = 60.0  # a hang guard, not a speed claim: these inputs used to run for minutes or
# forever; they now take milliseconds. Speed is measured in bench/query_bounds.py.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

BERLIN = (
    "BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\nBEGIN:DAYLIGHT\r\nDTSTART:19700329T020000\r\n"
    "TZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\n"
    "END:DAYLIGHT\r\nBEGIN:STANDARD\r\nDTSTART:19701025T030000\r\nTZOFFSETFROM:+0200\r\n"
    "TZOFFSETTO:+0100\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nEND:STANDARD\r\n"
    "END:VTIMEZONE\r\n"
)
VALID = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calsync//fuzz//EN\r\n"
    + BERLIN
    + "BEGIN:VEVENT\r\n"
    "UID:series@example.com\r\nDTSTAMP:20250101T000000Z\r\n"
    "DTSTART;TZID=Europe/Berlin:20250301T090000\r\nDTEND;TZID=Europe/Berlin:20250301T100000\r\n"
    "RRULE:FREQ=WEEKLY;BYDAY=MO,WE;COUNT=10\r\nEXDATE;TZID=Europe/Berlin:20250305T090000\r\n"
    "RDATE;VALUE=DATE-TIME:20250401T120000Z\r\nSUMMARY:Stand-up\\, daily\r\n"
    'ORGANIZER;CN="Boss: A":mailto:boss@example.com\r\nATTENDEE:mailto:a@example.com\r\n'
    "BEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT5M\r\nEND:VALARM\r\nEND:VEVENT\r\n"
    "BEGIN:VEVENT\r\nUID:series@example.com\r\nRECURRENCE-ID;TZID=Europe/Berlin:20250303T090000\r\n"
    "DTSTART;TZID=Europe/Berlin:20250303T110000\r\nDURATION:PT1H\r\nEND:VEVENT\r\n"
    "END:VCALENDAR\r\n"
)
LINES = VALID.split("\r\n")[:-1]


def calendar(*event: str, zones: str = "") -> str:
    """One VCALENDAR with `zones` (VTIMEZONE text) and one VEVENT of the given lines."""
    body = "".join(f"{line}\r\n" for line in event)
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calsync//fuzz//EN\r\n"
        f"{zones}BEGIN:VEVENT\r\nUID:u@example.com\r\n{body}END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def vtimezone(tzid: str, *parts: str) -> str:
    body = "".join(f"{line}\r\n" for line in parts)
    return f"BEGIN:VTIMEZONE\r\nTZID:{tzid}\r\n{body}END:VTIMEZONE\r\n"


def standard(offset_from: str, offset_to: str, *extra: str) -> str:
    lines = ["BEGIN:STANDARD", "DTSTART:19701025T030000", f"TZOFFSETFROM:{offset_from}"]
    lines += [f"TZOFFSETTO:{offset_to}", *extra, "END:STANDARD"]
    return "\r\n".join(lines)


def nested(depth: int, name: str = "X-NEST", inside: str = "") -> str:
    """`depth` components nested in one another inside `inside` (a component name) or VCALENDAR."""
    nest = f"BEGIN:{name}\r\n" * depth + f"END:{name}\r\n" * depth
    if inside:
        nest = f"BEGIN:{inside}\r\nTZID:Deep\r\n{nest}END:{inside}\r\n"
    return f"BEGIN:VCALENDAR\r\n{nest}END:VCALENDAR\r\n"


def readable(raw: str | bytes) -> list[str]:
    """The property: events with aware UTC times, or MalformedCalendarData saying why; never a hang.

    Returns the UIDs read, or [] when refused.
    """
    began = time.monotonic()
    try:
        resource = parse_resource("/cal/fuzz.ics", '"1"', raw)
    except MalformedCalendarData as exc:
        message = str(exc)
        assert message.startswith("/cal/fuzz.ics: ") and len(message) > len("/cal/fuzz.ics: ")
        assert len(message) < 400, "the reason is shown on the connection: keep it short"
        return []
    finally:
        assert time.monotonic() - began < SECONDS
    assert isinstance(resource, Resource)
    for event in resource.events:
        assert event.uid
        for moment in (event.start, event.end, event.series_end, event.last_modified):
            assert moment is None or moment.utcoffset() == dt.timedelta(0)
    return [event.uid for event in resource.events]


# --- generated input --------------------------------------------------------------------------

DATES = st.one_of(
    st.sampled_from(
        [
            "00000101",  # year 0
            "99991231",  # the last day datetime knows
            "20250230",  # 30 February
            "20240229",
            "20250229",
            "00010101",
            "19700101",
            "20251301",
        ]
    ),
    st.from_regex(r"[0-9]{8}", fullmatch=True),
)
TIMES = st.sampled_from(["T000000", "T235959", "T240000", "T235960", "T120000Z", "T999999", ""])
STAMPS = st.builds(lambda d, t: d + t, DATES, TIMES) | st.text(max_size=20)
TZIDS = st.one_of(
    st.sampled_from(
        [
            "Europe/Berlin",
            "W. Europe Standard Time",
            "/freeassociation.sourceforge.net/Europe/Berlin",
            "Nowhere/Zone",
            "My Zone",
            "../../etc/passwd",
            "/etc/localtime",
            '"Europe/Berlin"',
            "Europe/Berlin\x00",
            "Z" * 5000,
            "tzone://Microsoft/Custom",
            "",
        ]
    ),
    st.text(max_size=40).filter(lambda s: ":" not in s and ";" not in s and "\n" not in s),
)
RULE_PARTS = st.sampled_from(
    [
        "FREQ=SECONDLY",
        "FREQ=MINUTELY",
        "FREQ=HOURLY",
        "FREQ=DAILY",
        "FREQ=YEARLY",
        "FREQ=FORTNIGHTLY",
        "COUNT=0",
        "COUNT=-1",
        "COUNT=5000",
        "COUNT=5001",
        "COUNT=2147483648",
        "COUNT=99999999999999999999999",
        "INTERVAL=0",
        "INTERVAL=-1",
        "INTERVAL=1000000000",
        "UNTIL=19000101T000000Z",
        "UNTIL=20000101",
        "UNTIL=99991231T235959Z",
        "UNTIL=00000101",
        "UNTIL=garbage",
        "BYSETPOS=-1",
        "BYSETPOS=1,2,3,366",
        "BYSETPOS=0",
        "BYMONTH=2",
        "BYMONTH=13",
        "BYMONTHDAY=30",
        "BYMONTHDAY=-31",
        "BYYEARDAY=366",
        "BYWEEKNO=53",
        "BYDAY=MO,TU,WE,TH,FR,SA,SU",
        "BYDAY=-5FR",
        "BYDAY=XX",
        "BYHOUR=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23",
        "BYMINUTE=" + ",".join(str(m) for m in range(60)),
        "BYSECOND=" + ",".join(str(s) for s in range(61)),
        "WKST=XX",
        "X-NAME=1",
        "",
    ]
)
RULES = st.lists(RULE_PARTS, max_size=6).map(";".join)
OFFSETS = st.sampled_from(
    ["+0100", "-0000", "+2359", "-2359", "+9999", "+2400", "banana", "", "+01", "+013", "+0100000"]
) | st.text(max_size=8)

EVENT_LINES = st.one_of(
    st.builds(lambda p, v: f"DTSTART{p}:{v}", st.sampled_from(["", ";VALUE=DATE"]), STAMPS),
    st.builds(lambda z, v: f"DTSTART;TZID={z}:{v}", TZIDS, STAMPS),
    st.builds(lambda z, v: f"DTEND;TZID={z}:{v}", TZIDS, STAMPS),
    st.builds("DTEND:{}".format, STAMPS),
    st.builds("RRULE:{}".format, RULES),
    st.builds("RDATE:{}".format, st.lists(STAMPS, max_size=4).map(",".join)),
    st.builds("EXDATE;TZID={}:{}".format, TZIDS, STAMPS),
    st.builds("RECURRENCE-ID:{}".format, STAMPS),
    st.builds("DURATION:{}".format, st.from_regex(r"[+-]?P([0-9]{1,30}[WDTHMS]){0,4}")),
    st.builds("SEQUENCE:{}".format, st.text(max_size=12)),
    st.builds("LAST-MODIFIED:{}".format, STAMPS),
    st.sampled_from(["STATUS:CANCELLED", "TRANSP:TRANSPARENT", "UID:", "UID:other", "SUMMARY:\\"]),
)
ZONES = st.lists(
    st.builds(
        lambda tzid, a, b, rule: vtimezone(tzid, standard(a, b, *([f"RRULE:{rule}"] * bool(rule)))),
        TZIDS,
        OFFSETS,
        OFFSETS,
        RULES,
    ),
    max_size=3,
).map("".join)


@given(st.lists(EVENT_LINES, max_size=10), ZONES)
@example(["DTSTART:00000101T000000Z"], "")
@example(["DTSTART:99991231T235959Z", "DURATION:P1D"], "")
@example(["DTSTART:99991231T235959Z", "RRULE:FREQ=DAILY;COUNT=2"], "")
@example(["DTSTART:00010101T000000", "RRULE:FREQ=DAILY;UNTIL=00010101"], "")
@example(["DTSTART:00010101T000000Z", "DURATION:-P1D"], "")
@example(["DTSTART:20250230T090000Z"], "")
@example(["DTSTART:20250301T090000Z", "DURATION:P99999999999999999999W"], "")
@example(["DTSTART:20250301T090000Z", "RRULE:FREQ=SECONDLY"], "")
@example(["DTSTART:20250301T090000Z", "RRULE:FREQ=SECONDLY;COUNT=5000"], "")
@example(["DTSTART:20250301T090000Z", "RRULE:FREQ=MINUTELY;COUNT=99999999999999999999"], "")
@example(["DTSTART:20250301T090000Z", "RRULE:FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30;COUNT=2"], "")
@example(["DTSTART:20250301T090000Z", "RRULE:FREQ=DAILY;BYSETPOS=366;COUNT=5000"], "")
@example(["DTSTART:20250301T090000Z", "RRULE:FREQ=DAILY;INTERVAL=0;COUNT=10"], "")
@example(["DTSTART:20250301T090000Z", "RRULE:FREQ=DAILY;INTERVAL=-1;COUNT=10"], "")
@example(["DTSTART:20250301T090000Z", "RRULE:FREQ=DAILY;UNTIL=20000101T000000Z"], "")
@example(["DTSTART;TZID=Nowhere/Zone:20250301T090000"], "")
@example(["DTSTART;TZID=Abs:20250301T090000"], vtimezone("Abs", standard("+9999", "+9999")))
@example(["DTSTART;TZID=Abs:20250301T090000"], vtimezone("Abs", standard("-2400", "+2400")))
@example(["DTSTART;TZID=G:20250301T090000"], vtimezone("G", standard("banana", "x")))
@example(
    ["DTSTART;TZID=R:20250301T090000"], vtimezone("R", standard("+01", "+02", "RRULE:FREQ=DAILY"))
)
@example(["DTSTART;TZID=D:20250301T090000"], vtimezone("D", standard("+01", "+02")) * 50)
@example(
    ["DTSTART;TZID=N:20250301T090000"],
    vtimezone("N", "BEGIN:VTIMEZONE", "TZID:N", standard("+01", "+02"), "END:VTIMEZONE"),
)
@FUZZ
def test_generated_events_are_read_or_refused_clearly(lines: list[str], zones: str) -> None:
    readable(calendar(*lines, zones=zones))


def _mutate(lines: list[str], operations: list[tuple[int, int, str]]) -> str:
    out = list(lines)
    for kind, where, text in operations:
        if not out:
            break
        i = where % len(out)
        if kind == 0:
            del out[i]
        elif kind == 1:
            out.insert(i, out[i])
        elif kind == 2:
            j = (where // 7) % len(out)
            out[i], out[j] = out[j], out[i]
        elif kind == 3:
            out.insert(i, text)
        elif kind == 4:
            cut = where % (len(out[i]) + 1)
            out[i] = out[i][:cut] + text + out[i][cut:]
        else:
            out[i] = out[i][: where % (len(out[i]) + 1)]
    return "\r\n".join(out) + "\r\n"


MUTATION_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "BEGIN:VEVENT",
            "END:VEVENT",
            "BEGIN:VCALENDAR",
            "END:VCALENDAR",
            "BEGIN:VTIMEZONE",
            "END:VTIMEZONE",
            "BEGIN:VALARM",
            "\x00",
            "\r",
            "\n ",
            '"',
            ":",
            ";",
            "\\",
            "\ufeff",
            "\ud800",
            "TZID=Nowhere",
            " ",
        ]
    ),
)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 10_000), MUTATION_TEXT), max_size=8))
@example([(3, 0, "BEGIN:VCALENDAR")])
@example([(3, 5, "\x00")])
@example([(4, 13, "\r")])
@example([(3, 4, "BEGIN:VTIMEZONE")])
@example([(0, 4 + 9, "")])  # an END:VTIMEZONE line gone: the block runs into the events
@FUZZ
def test_structural_mutations_of_a_valid_calendar(operations: list[tuple[int, int, str]]) -> None:
    readable(_mutate(LINES, operations))


def test_the_unmutated_calendar_is_read() -> None:
    assert readable(VALID) == ["series@example.com", "series@example.com"]


@given(st.binary(max_size=2048))
@example(b"\xff\xfe" + VALID.encode("utf-16-le"))
@example(VALID.encode().replace(b"Stand-up", b"Stand\xc3(up\xed\xa0\x80"))  # invalid UTF-8
@example(VALID.encode().replace(b"\r\n", b"\r"))  # lone CRs only
@example(VALID.encode().replace(b"Stand-up", b"Stand\x00up"))
@example(VALID.encode().replace(b"DTSTART;TZID=Europe/Berlin", b"DTSTART;TZID=Europe/\xffBerlin"))
@FUZZ
def test_arbitrary_bytes_are_read_or_refused_clearly(data: bytes) -> None:
    readable(data)


@given(st.binary(max_size=300), st.integers(0, len(VALID)))
@FUZZ
def test_bad_bytes_spliced_into_a_valid_calendar(junk: bytes, position: int) -> None:
    data = VALID.encode()
    readable(data[:position] + junk + data[position:])


# --- hand-made input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        nested(500),
        nested(500, "VCALENDAR"),
        nested(500, "VEVENT"),
        nested(500, "VALARM"),
        nested(500, inside="VTIMEZONE"),  # the extractor cuts VTIMEZONE blocks before its walk
        nested(500, "VTIMEZONE"),
        nested(100_000),
        "BEGIN:VCALENDAR\r\n" + "BEGIN:X\r\n" * 100_000,
    ],
    ids=lambda raw: f"{len(raw)}-chars",
)
def test_deep_nesting_is_refused(raw: str) -> None:
    assert readable(raw) == []


def test_deep_nesting_inside_a_vtimezone_that_an_event_uses() -> None:
    deep = "BEGIN:X-NEST\r\n" * 500 + "END:X-NEST\r\n" * 500
    zone = (
        f"BEGIN:VTIMEZONE\r\nTZID:Deep\r\n{deep}{standard('+0100', '+0100')}\r\nEND:VTIMEZONE\r\n"
    )
    raw = calendar("DTSTART;TZID=Deep:20250301T090000", zones=zone)
    readable(raw)


@pytest.mark.parametrize(
    "lines",
    [
        [f"SUMMARY:{'x' * (MAX_OBJECT_SIZE - 200)}", "DTSTART:20250301T090000Z"],
        [f"SUMMARY:{'x' * (MAX_OBJECT_SIZE + 1)}"],
        [f"DTSTART;TZID={'x' * (MAX_OBJECT_SIZE - 200)}:20250301T090000"],
        [f"DTSTART;{'X=1;' * 200_000}TZID=Europe/Berlin:20250301T090000"],
        ['DTSTART;X="' + "a" * 900_000 + ":20250301T090000"],  # an unterminated quote
        [f"RRULE:FREQ=DAILY;{'BYHOUR=1;' * 100_000}"],
        ["DTSTART:20250301T090000Z", f"RDATE:{','.join(['20250301T090000Z'] * 55_000)}"],
        ["DTSTART:20250301T090000Z", f"EXDATE:{','.join(['20250301T090000Z'] * 55_000)}"],
        [f"ATTENDEE:mailto:a{i}@example.com" for i in range(30_000)],
        [f"X-PROP-{i}:{i}" for i in range(60_000)],
        ["SUMMARY:" + "\\" * 900_000],
        ["SUMMARY:folded", *[" x"] * 300_000],
    ],
    ids=lambda lines: f"{len(lines)}-lines-{sum(map(len, lines))}-chars",
)
def test_huge_and_many_properties(lines: list[str]) -> None:
    readable(calendar(*lines))


def test_one_huge_line_without_a_colon_is_refused_with_a_short_message() -> None:
    raw = calendar("DTSTART:20250301T090000Z", "x" * 900_000)
    with pytest.raises(MalformedCalendarData) as info:
        extract_events(raw)
    assert len(str(info.value)) < 200


def test_many_components_are_refused() -> None:
    assert readable(calendar(*["BEGIN:VALARM", "END:VALARM"] * 20_000)) == []


# --- the CalDAV provider: a hostile object is one skipped item with its reason ---------------


@pytest.fixture(scope="module")
def provider() -> Iterator[CalDAVProvider]:
    made = CalDAVProvider("https://dav.example.com/cal/", "user", "password")
    yield made
    asyncio.run(made.aclose())


@given(st.lists(EVENT_LINES, max_size=6), st.binary(max_size=64))
@settings(max_examples=60, deadline=None)
def test_the_caldav_provider_skips_what_the_extractor_refuses(
    provider: CalDAVProvider, lines: list[str], junk: bytes
) -> None:
    provider.skipped.clear()
    healthy = _Member("/cal/ok.ics", "/cal/ok.ics", '"1"', VALID)
    hostile = _Member(
        "/cal/bad.ics", "/cal/bad.ics", '"2"', calendar(*lines) + junk.decode("latin-1")
    )
    read = provider._parse(healthy)
    assert read is not None and len(read.events) == 2
    result = provider._parse(hostile)
    if result is None:
        ((provider_id, reason),) = provider.skipped
        assert provider_id == "/cal/bad.ics"
        assert reason.startswith("/cal/bad.ics: ")
    else:
        assert provider.skipped == []


@pytest.mark.parametrize(
    "raw",
    [
        nested(500),
        calendar("DTSTART:00000101T000000Z"),
        "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n\x00\r\n",
    ],
)
def test_a_skipped_object_degrades_the_connection_with_its_id(
    provider: CalDAVProvider, raw: str
) -> None:
    provider.skipped.clear()
    assert provider._parse(_Member("/cal/bad.ics", "/cal/bad.ics", None, raw)) is None
    conds = readiness.Conditions([], 1, dt.datetime(2026, 12, 1, tzinfo=UTC))
    readiness.apply_sync_success(
        conds, events=1, calendars=1, duplicates=[], skipped=provider.skipped
    )
    degraded = conds.get(DEGRADED)
    assert degraded is not None and degraded.status == "True"
    assert degraded.reason == "MalformedEvents"
    assert "/cal/bad.ics" in degraded.message


# --- the one time-zone resolver ----------------------------------------------------------------


@given(TZIDS | st.text(max_size=300))
@example("\x00")
@example("Europe/Berlin/../../../../etc/passwd")
@example("/" * 300)
@example("\ud800")
@FUZZ
def test_any_zone_name_resolves_to_a_zone_or_none(name: str) -> None:
    zone = timezones.resolve(name)
    assert zone is None or zone.key
    assert timezones.zone_name(name) in (name, zone.key if zone else None)


@given(TZIDS, OFFSETS, OFFSETS, RULES, st.sampled_from(["19700101T000000", "00000101T000000", ""]))
@example("Abs", "+9999", "+9999", "", "19700101T000000")
@example("Abs", "-2400", "+2400", "", "19700101T000000")
@example("R", "+0100", "+0200", "FREQ=DAILY", "19700101T000000")
@example("R", "+0100", "+0200", "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "19700101T000000")
@FUZZ
def test_any_vtimezone_is_a_usable_zone_or_none(
    tzid: str, offset_from: str, offset_to: str, rule: str, start: str
) -> None:
    rules = [f"RRULE:{rule}"] if rule else []
    block = vtimezone(
        tzid,
        "BEGIN:STANDARD",
        f"DTSTART:{start}",
        f"TZOFFSETFROM:{offset_from}",
        f"TZOFFSETTO:{offset_to}",
        *rules,
        "END:STANDARD",
    )
    zone = timezones.defined_zone(tzid, block.split("\r\n"))
    if zone is None:
        return
    for year in (1, 1970, 2025, 9999):
        # datetime validates what a tzinfo answers: an offset of a day or more raises here
        local = dt.datetime(year, 6, 1, tzinfo=zone)
        assert local.utcoffset() is not None


def test_a_vtimezone_with_an_absurd_offset_is_unusable_so_the_time_is_read_as_utc() -> None:
    # Found by the test above: dateutil reads "+9999" as 4 days 4:39, which every datetime in
    # that zone then refuses; the extractor used to fail the whole object on it, where an
    # unusable definition is documented to be ignored (docs/decisions/0012).
    zones = vtimezone("Abs", standard("+0100", "+9999"))
    (event,) = extract_events(calendar("DTSTART;TZID=Abs:20250301T090000", zones=zones))
    assert event.start == dt.datetime(2025, 3, 1, 9, tzinfo=UTC)
    assert event.timezone == "Abs"


@pytest.mark.parametrize("interval", ["0", "-1", "", "1.5", "²", "00"])
def test_an_rrule_interval_that_is_no_positive_integer_is_refused(interval: str) -> None:
    # Found here: the extractor stored FREQ=DAILY;INTERVAL=0, and every range query of the
    # connection then hung in the store's expansion (dateutil repeats the first instance forever).
    raw = calendar("DTSTART:20250301T090000Z", f"RRULE:FREQ=DAILY;INTERVAL={interval}")
    with pytest.raises(MalformedCalendarData, match="INTERVAL is not a positive integer"):
        extract_events(raw)


def test_a_positive_interval_is_read() -> None:
    raw = calendar("DTSTART:20250301T090000Z", "RRULE:FREQ=DAILY;INTERVAL=01;COUNT=2")
    (event,) = extract_events(raw)
    assert event.series_end == dt.datetime(2025, 3, 2, 9, tzinfo=UTC)
