"""Hostile recurrences in the store: a range query over a calendar holding a stored hostile
object (one the extractor accepted) answers in bounded time with at most its caps, marks the
answer truncated when a cap or budget cut it, and still shows the healthy events beside it.
And the store's expansion of iCalendar text reads a TZID as the extractor stored it: through
`calsync.timezones`, scoped to the object (docs/decisions/0012)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from calsync.model import ChangePage, Event, Resource
from calsync.providers.ical import MalformedCalendarData, extract_events, parse_resource
from calsync.store import EventStore
from calsync.store.expand import Truncation, ical_occurrences, master_occurrences
from calsync.store.results import QueryResult

pytestmark = pytest.mark.unit

UTC = dt.UTC
KEY = "uid-hostile"
CALENDAR = "/cal/"
SECONDS = 60.0  # a hang guard, not a speed claim: these inputs used to run for minutes or
# forever; they now take milliseconds. Speed is measured in bench/query_bounds.py.
SERIES_CAP = 50
LIMIT = 500
RANGE = (dt.datetime(2025, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 1, tzinfo=UTC))


def calendar(uid: str, *event: str, zones: str = "") -> str:
    body = "".join(f"{line}\r\n" for line in event)
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calsync//fuzz//EN\r\n"
        f"{zones}BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20250101T000000Z\r\n{body}"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


HEALTHY = calendar(
    "healthy",
    "DTSTART:20250601T080000Z",
    "DTEND:20250601T090000Z",
    "RRULE:FREQ=WEEKLY;COUNT=4",
    "SUMMARY:healthy",
)
HEALTHY_STARTS = [dt.datetime(2025, 6, 1 + 7 * week, 8, tzinfo=UTC) for week in range(4)]

HOSTILE_RULES = [
    "FREQ=SECONDLY",
    "FREQ=MINUTELY",
    "FREQ=SECONDLY;BYMONTH=12",
    "FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=30",
    "FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=30",
    "FREQ=SECONDLY;BYSETPOS=-1",
    "FREQ=SECONDLY;BYHOUR=9;BYMINUTE=0",
    "FREQ=YEARLY;BYSETPOS=1,2,3;BYDAY=MO,TU",
    "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
    "FREQ=DAILY;COUNT=100000000",
    "FREQ=SECONDLY;COUNT=100000000",
    "FREQ=SECONDLY;COUNT=5000",
    "FREQ=DAILY;INTERVAL=1000000000",  # FREQ times INTERVAL overflowed a timedelta: a crash
    "FREQ=HOURLY;INTERVAL=1000000",
    "FREQ=MONTHLY;INTERVAL=1000",  # 28,000 days times the budget's 200,000 periods: a crash
    "FREQ=DAILY;UNTIL=20000101T000000Z",
    "FREQ=SECONDLY;UNTIL=99991231T235959Z",
    pytest.param(
        "FREQ=DAILY;BYHOUR="
        + ",".join(map(str, range(24)))
        + ";BYMINUTE="
        + ",".join(map(str, range(60)))
        + ";BYSECOND="
        + ",".join(map(str, range(60))),
        id="DAILY-every-second",
    ),
]
STARTS = st.sampled_from(
    [
        "20250301T090000Z",
        "19000101T000000Z",  # a series from long before the range
        "20241231T235959Z",
        "20250301",
        "20250301T090000",
        "00010101T000000Z",
        "99991231T235959Z",
        "99991231",
    ]
)
RULES = st.sampled_from([r for r in HOSTILE_RULES if isinstance(r, str)]) | st.lists(
    st.sampled_from(
        [
            "FREQ=SECONDLY",
            "FREQ=MINUTELY",
            "FREQ=HOURLY",
            "FREQ=DAILY",
            "FREQ=MONTHLY",
            "COUNT=5000",
            "COUNT=99999999",
            "INTERVAL=2",
            "INTERVAL=1000",
            "INTERVAL=1000000",
            "BYSETPOS=-1",
            "BYMONTH=2",
            "BYMONTHDAY=30",
            "BYMONTHDAY=31",
            "BYYEARDAY=366",
            "BYWEEKNO=53",
            "BYDAY=-5FR",
            "BYHOUR=9",
            "BYSECOND=0,30",
            "UNTIL=20251231T235959Z",
        ]
    ),
    min_size=1,
    max_size=5,
).map(";".join)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    made = asyncio.new_event_loop()
    yield made
    made.close()


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, loop: asyncio.AbstractEventLoop
) -> Iterator[EventStore]:
    path: Path = tmp_path_factory.mktemp("hostile") / "events.db"
    opened = loop.run_until_complete(EventStore.open(f"sqlite+aiosqlite:///{path}"))
    loop.run_until_complete(opened.upsert_calendar(KEY, CALENDAR, "Hostile"))
    yield opened
    loop.run_until_complete(opened.close())


def query_beside_healthy(
    store: EventStore, loop: asyncio.AbstractEventLoop, hostile: str
) -> tuple[QueryResult, float] | None:
    """Store the hostile object (if the extractor accepts it) beside a healthy series and query
    one year; the result and the seconds the query took, None when the extractor refused."""
    try:
        resource = parse_resource("/cal/hostile.ics", '"1"', hostile)
    except MalformedCalendarData:
        return None
    page = ChangePage(
        upserts=[parse_resource("/cal/healthy.ics", '"1"', HEALTHY), resource],
        complete=True,
        full=True,
    )
    loop.run_until_complete(store.apply_page(KEY, CALENDAR, page))
    began = time.monotonic()
    result = loop.run_until_complete(
        store.query(KEY, start=RANGE[0], end=RANGE[1], limit=LIMIT, series_limit=SERIES_CAP)
    )
    seconds = time.monotonic() - began
    hostile_seen = sum(o.provider_id == "/cal/hostile.ics" for o in result.occurrences)
    if hostile_seen == SERIES_CAP and not result.truncated:
        # A series with exactly the cap's number of occurrences in range is whole, not cut;
        # one more allowed must then find no more.
        more = loop.run_until_complete(
            store.query(KEY, start=RANGE[0], end=RANGE[1], limit=LIMIT, series_limit=SERIES_CAP + 1)
        )
        assert sum(o.provider_id == "/cal/hostile.ics" for o in more.occurrences) == SERIES_CAP, (
            "a series cut at the cap must make the answer say truncated"
        )
    return result, seconds


def check(result: QueryResult, seconds: float) -> None:
    assert seconds < SECONDS
    assert len(result.occurrences) <= LIMIT
    hostile = [o for o in result.occurrences if o.provider_id == "/cal/hostile.ics"]
    assert len(hostile) <= SERIES_CAP
    if "/cal/hostile.ics" in result.capped_series:
        assert result.truncated
    healthy = [o.start for o in result.occurrences if o.provider_id == "/cal/healthy.ics"]
    assert healthy == HEALTHY_STARTS, "a hostile series must not hide the healthy ones"


@pytest.mark.parametrize("rule", HOSTILE_RULES)
def test_a_hostile_rule_costs_a_query_bounded_time_and_caps(
    store: EventStore, loop: asyncio.AbstractEventLoop, rule: str
) -> None:
    hostile = calendar("hostile", "DTSTART:20250301T090000Z", f"RRULE:{rule}")
    found = query_beside_healthy(store, loop, hostile)
    assert found is not None, "the extractor accepts these; the store must cope"
    check(*found)


@given(STARTS, RULES, st.sampled_from(["", "PT1H", "P400D", "PT0S"]))
@example("20250301T090000Z", "FREQ=SECONDLY", "")
@example("19000101T000000Z", "FREQ=MINUTELY", "PT1H")
@example("20250301T090000Z", "FREQ=MONTHLY;BYDAY=-5FR;INTERVAL=1000000", "")
@example("20250301T090000Z", "FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=30", "")
@example("19000101T000000Z", "FREQ=MONTHLY;BYSECOND=0,30", "P400D")  # exactly the cap in range
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_generated_hostile_series_in_the_store(
    store: EventStore, loop: asyncio.AbstractEventLoop, start: str, rule: str, duration: str
) -> None:
    lines = [f"DTSTART{';VALUE=DATE' * (len(start) == 8)}:{start}", f"RRULE:{rule}"]
    if duration:
        lines.append(f"DURATION:{duration}")
    found = query_beside_healthy(store, loop, calendar("hostile", *lines))
    if found is not None:
        check(*found)


# --- time zones: the extractor's reading is the expansion's reading ----------------------------


def expand_ical(raw: str) -> list[tuple[dt.datetime | None, str | None]]:
    truncation = Truncation()
    found = ical_occurrences(
        raw,
        calendar_id=CALENDAR,
        provider_id="/cal/z.ics",
        lower=RANGE[0],
        upper=RANGE[1],
        start=RANGE[0],
        end=RANGE[1],
        cap=10,
        include_cancelled=False,
        truncation=truncation,
    )
    return [(o.start, o.timezone) for o in found]


def extracted(raw: str) -> list[tuple[dt.datetime | None, str | None]]:
    (master,) = extract_events(raw)
    assert master.start is not None
    return [(master.start + dt.timedelta(days=day), master.timezone) for day in range(3)]


def vtimezone(tzid: str, offset: str, *extra: str) -> str:
    lines = [
        "BEGIN:VTIMEZONE",
        f"TZID:{tzid}",
        "BEGIN:STANDARD",
        "DTSTART:19700101T000000",
        f"TZOFFSETFROM:{offset}",
        f"TZOFFSETTO:{offset}",
        *extra,
        "END:STANDARD",
        "END:VTIMEZONE",
    ]
    return "".join(f"{line}\r\n" for line in lines)


def series(tzid: str, zones: str = "") -> str:
    return calendar(
        "zoned",
        f"DTSTART;TZID={tzid}:20250301T090000",
        f"DTEND;TZID={tzid}:20250301T100000",
        "RRULE:FREQ=DAILY;COUNT=3",
        zones=zones,
    )


@pytest.mark.parametrize(
    "raw",
    [
        series("Europe/Berlin"),
        series("W. Europe Standard Time"),
        series("/freeassociation.sourceforge.net/Europe/Berlin"),
        series("My Zone", vtimezone("My Zone", "+0500")),
        series("Europe/Berlin", vtimezone("Europe/Berlin", "+0500")),  # IANA wins over a lie
        series("Nowhere/Zone"),
        series("Twice", vtimezone("Twice", "+0500") + vtimezone("Twice", "-0700")),  # first wins
        series("Folded", vtimezone("Folded", "+0500").replace("TZID:Folded", "TZID:Fol\r\n ded")),
        series("Broken", vtimezone("Broken", "banana")),
        series("Absurd", vtimezone("Absurd", "+9999")),
        series("Bad Zone", vtimezone("Bad Zone", "+0300", "RRULE:FREQ=DAILY")),
        series(
            "Odd Zone", vtimezone("Odd Zone", "+0300", "RRULE:FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30")
        ),
    ],
    ids=[
        "iana",
        "windows",
        "vendor-path",
        "own-vtimezone",
        "iana-vtimezone-lies",
        "unknown",
        "duplicate-vtimezone",
        "folded-tzid",
        "garbage-offset",
        "absurd-offset",
        "explosive-vtimezone-rule",
        "never-matching-vtimezone-rule",
    ],
)
def test_the_expansion_reads_a_tzid_as_the_extractor_stored_it(raw: str) -> None:
    assert expand_ical(raw) == extracted(raw)


def test_one_objects_vtimezone_never_leaks_into_anothers_expansion() -> None:
    defined = series("Leaky Zone", vtimezone("Leaky Zone", "+0500"))
    assert expand_ical(defined) == extracted(defined)
    undefined = series("Leaky Zone")  # the same name, no definition: unknown, read as UTC
    assert extracted(undefined)[0] == (dt.datetime(2025, 3, 1, 9, tzinfo=UTC), "Leaky Zone")
    assert expand_ical(undefined) == extracted(undefined)


# --- a rule that repeats its first instance forever --------------------------------------------


def stored_before_the_extractor_refused_it(uid: str, rule: str) -> Resource:
    """A resource as an older extractor stored it (Google stores such recurrence lines too)."""
    raw = calendar(uid, "DTSTART:20240301T090000Z", "DTEND:20240301T100000Z", f"RRULE:{rule}")
    start = dt.datetime(2024, 3, 1, 9, tzinfo=UTC)
    event = Event(uid=uid, start=start, end=start + dt.timedelta(hours=1), timezone="UTC")
    event.rrule = rule
    return Resource(f"/cal/{uid}.ics", '"1"', raw, "ical", [event])


@pytest.mark.parametrize("rule", ["FREQ=DAILY;INTERVAL=0", "FREQ=SECONDLY;INTERVAL=0"])
def test_a_stored_interval_0_is_refused_not_expanded_forever(
    store: EventStore, loop: asyncio.AbstractEventLoop, rule: str
) -> None:
    # Found here: dateutil repeats the first instance of INTERVAL=0 forever, so the stored-rule
    # expansion and recurring-ical-events both hung every range query of the connection.
    page = ChangePage(
        upserts=[
            parse_resource("/cal/healthy.ics", '"1"', HEALTHY),
            stored_before_the_extractor_refused_it("hostile", rule),
        ],
        complete=True,
        full=True,
    )
    loop.run_until_complete(store.apply_page(KEY, CALENDAR, page))
    began = time.monotonic()
    result = loop.run_until_complete(
        store.query(KEY, start=RANGE[0], end=RANGE[1], limit=LIMIT, series_limit=SERIES_CAP)
    )
    assert time.monotonic() - began < SECONDS
    assert [o.start for o in result.occurrences] == HEALTHY_STARTS
    assert result.truncated  # the series was left out: the answer says something is missing


def test_both_expansions_refuse_interval_0_before_expanding() -> None:
    resource = stored_before_the_extractor_refused_it("zero", "FREQ=DAILY;INTERVAL=0")
    with pytest.raises(ValueError, match="INTERVAL is not a positive integer"):
        expand_ical(resource.raw)
    (event,) = resource.events
    row = {
        "uid": event.uid,
        "recurrence_id": "",
        "calendar_id": CALENDAR,
        "provider_id": "p",
        "status": "confirmed",
        "start_utc": event.start,
        "end_utc": event.end,
        "timezone": "UTC",
        "all_day": False,
        "rrule": event.rrule,
        "rdates": "[]",
        "exdates": "[]",
    }
    with pytest.raises(ValueError, match="INTERVAL is not a positive integer"):
        master_occurrences(
            row,
            overridden=set(),
            start=RANGE[0],
            end=RANGE[1],
            cap=10,
            include_cancelled=False,
            truncation=Truncation(),
        )


ZONE_NAMES = st.sampled_from(
    [
        "Europe/Berlin",
        " Europe/Berlin ",
        '"Europe/Berlin"',
        "W. Europe Standard Time",
        "/freeassociation.sourceforge.net/Europe/Berlin",
        "/Europe/Berlin",
        "GMT",
        "Z",
        "tzone://Microsoft/Utc",
        "Etc/GMT+5",
        "Nowhere/Zone",
        "../../etc/passwd",
        "My Zone",
    ]
)
OFFSETS = st.sampled_from(["+0500", "-0330", "+0000", "+2359", "+9999", "banana", ""])


@given(
    ZONE_NAMES,
    st.none() | st.tuples(OFFSETS, st.sampled_from(["", "FREQ=YEARLY;BYMONTH=3", "FREQ=DAILY"])),
)
@example("My Zone", ("+0500", ""))
@settings(max_examples=100, deadline=None)
def test_any_tzid_reads_the_same_in_the_extractor_and_the_expansion(
    tzid: str, definition: tuple[str, str] | None
) -> None:
    zones = ""
    if definition is not None:
        offset, rule = definition
        zones = vtimezone(tzid, offset, *([f"RRULE:{rule}"] if rule else []))
    raw = series(tzid, zones)
    try:
        stored = extracted(raw)
    except MalformedCalendarData:
        return
    assert expand_ical(raw) == stored
