"""Range expansion finishes in bounded time whatever a series' rule and start (issue 12, item 2).

A series' cost must not grow with the age of its DTSTART (a minutely rule since 2000 read for
one day of 2026), and a rule that matches rarely or never must not walk every second of the
range: the walk has a budget of rule periods per series and per query, and a series that
spends it is cut off with the answer marked truncated.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
from typing import Any

import pytest

from calsync.store.expand import Truncation, ical_occurrences, master_occurrences

pytestmark = pytest.mark.unit

# A hang guard, not a speed claim: these reads used to take minutes or never end, and take
# milliseconds now; their speed is measured in bench/query_bounds.py.
HANG_GUARD = 60.0

UTC = dt.UTC


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def _ical(rule: str, start: str = "20000101T000000Z", *, tzid: str = "") -> str:
    dtstart = f"DTSTART;TZID={tzid}:{start}" if tzid else f"DTSTART:{start}"
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:t\r\nBEGIN:VEVENT\r\nUID:u1\r\n"
        f"{dtstart}\r\nDURATION:PT30S\r\nRRULE:{rule}\r\nSUMMARY:s\r\nEND:VEVENT\r\n"
        "END:VCALENDAR\r\n"
    )


def _expand_ical(
    raw: str, start: dt.datetime, end: dt.datetime, cap: int = 3000, truncation: Any = None
) -> tuple[list[dt.datetime], Truncation, float]:
    truncation = truncation or Truncation()
    began = time.perf_counter()
    found = [
        o.start
        for o in ical_occurrences(
            raw,
            calendar_id="c",
            provider_id="p",
            lower=start,
            upper=end,
            start=start,
            end=end,
            cap=cap,
            include_cancelled=False,
            truncation=truncation,
        )
    ]
    return found, truncation, time.perf_counter() - began  # type: ignore[return-value]


def test_an_old_minutely_series_costs_what_a_new_one_does() -> None:
    found, truncation, took = _expand_ical(
        _ical("FREQ=MINUTELY;INTERVAL=7"), at(2026, 3, 1), at(2026, 3, 1, 1)
    )
    assert took < HANG_GUARD
    # On the grid of DTSTART + k * 7 minutes, whatever the distance from DTSTART.
    minutes = int((at(2026, 3, 1) - at(2000, 1, 1)).total_seconds() // 60)
    first = at(2000, 1, 1) + dt.timedelta(minutes=-(-minutes // 7) * 7)
    assert found[0] == first
    assert all(b - a == dt.timedelta(minutes=7) for a, b in itertools.pairwise(found))
    assert found[-1] < at(2026, 3, 1, 1) and not truncation.cut


def test_an_old_hourly_series_keeps_its_wall_clock_grid_in_its_zone() -> None:
    raw = _ical("FREQ=HOURLY;INTERVAL=5", "19990101T090000", tzid="Europe/Berlin")
    found, _, took = _expand_ical(raw, at(2026, 7, 1), at(2026, 7, 3))
    assert took < HANG_GUARD
    local = [o.astimezone(dt.timezone(dt.timedelta(hours=2))) for o in found]
    # 09:00 + k * 5 h of wall-clock time since 1999: the same hours a full walk gives.
    hours = int((dt.datetime(2026, 7, 1, 2) - dt.datetime(1999, 1, 1, 9)).total_seconds() // 3600)
    expected = dt.datetime(1999, 1, 1, 9) + dt.timedelta(hours=-(-hours // 5) * 5)
    assert local[0].replace(tzinfo=None) == expected


def test_a_count_rule_is_counted_from_its_real_start() -> None:
    found, _truncation, took = _expand_ical(
        _ical("FREQ=MINUTELY;COUNT=5"), at(2026, 3, 1), at(2026, 3, 2)
    )
    assert found == [] and took < HANG_GUARD


def test_a_rule_whose_days_never_come_costs_nothing() -> None:
    found, truncation, took = _expand_ical(
        _ical("FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=30", "20260101T000000Z"),
        at(2026, 1, 1),
        at(2027, 1, 1),
    )
    assert found == [at(2026, 1, 1)]  # DTSTART is always an instance
    assert not truncation.cut
    assert took < HANG_GUARD


def test_a_sparse_rule_spends_its_budget_and_says_so() -> None:
    # Matches once an hour, walked second by second.
    found, truncation, took = _expand_ical(
        _ical("FREQ=SECONDLY;BYMINUTE=0;BYSECOND=0", "20260101T000000Z"),
        at(2026, 1, 1),
        at(2027, 1, 1),
    )
    assert found[:3] == [at(2026, 1, 1), at(2026, 1, 1, 1), at(2026, 1, 1, 2)]
    assert truncation.cut and set(truncation.series) == {"p"}
    assert found[-1] < at(2026, 1, 4)  # 200,000 seconds
    assert took < HANG_GUARD


def test_the_query_budget_is_shared_by_its_series() -> None:
    truncation = Truncation()
    began = time.perf_counter()
    for _ in range(20):
        _expand_ical(
            _ical("FREQ=SECONDLY;BYMINUTE=0;BYSECOND=0", "20260101T000000Z"),
            at(2026, 1, 1),
            at(2027, 1, 1),
            truncation=truncation,
        )
    assert truncation.cut and truncation.periods <= 0
    assert time.perf_counter() - began < HANG_GUARD


def test_a_dense_secondly_series_does_not_materialise_a_day_at_once() -> None:
    found, truncation, took = _expand_ical(
        _ical("FREQ=SECONDLY", "20260101T000000Z"), at(2026, 1, 1), at(2027, 1, 1), cap=50
    )
    assert len(found) == 50 and truncation.cut
    assert took < HANG_GUARD


def _master(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "uid": "u1",
        "recurrence_id": "",
        "calendar_id": "c",
        "provider_id": "p",
        "start_utc": at(2000, 1, 1),
        "end_utc": at(2000, 1, 1, 0, 0, 30),
        "all_day": False,
        "timezone": "UTC",
        "summary": "s",
        "location": "",
        "status": "confirmed",
        "transparency": "opaque",
        "organizer": None,
        "attendees": json.dumps([]),
        "rrule": "FREQ=MINUTELY",
        "rdates": None,
        "exdates": None,
    }
    row.update(fields)
    return row


def _expand_master(
    row: dict[str, Any], start: dt.datetime, end: dt.datetime, cap: int = 3000
) -> tuple[list[dt.datetime], Truncation, float]:
    truncation = Truncation()
    began = time.perf_counter()
    found = [
        o.start
        for o in master_occurrences(
            row,
            overridden=set(),
            start=start,
            end=end,
            cap=cap,
            include_cancelled=False,
            truncation=truncation,
        )
    ]
    return found, truncation, time.perf_counter() - began  # type: ignore[return-value]


def test_the_fallback_skips_ahead_over_an_old_minutely_series() -> None:
    found, truncation, took = _expand_master(_master(), at(2026, 3, 1), at(2026, 3, 1, 0, 10))
    assert found == [at(2026, 3, 1, 0, m) for m in range(10)]
    assert took < HANG_GUARD and not truncation.cut


def test_the_fallback_bounds_rules_that_never_or_rarely_match() -> None:
    row = _master(rrule="FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=30", start_utc=at(2026, 1, 1))
    row["end_utc"] = row["start_utc"]
    found, truncation, took = _expand_master(row, at(2026, 1, 2), at(2027, 1, 1))
    assert found == [] and not truncation.cut
    assert took < HANG_GUARD
    row["rrule"] = "FREQ=SECONDLY;BYMINUTE=0;BYSECOND=0"
    found, truncation, took = _expand_master(row, at(2026, 1, 2), at(2027, 1, 1))
    assert found[0] == at(2026, 1, 2) and found[-1] < at(2026, 1, 5)
    assert truncation.cut and took < HANG_GUARD


def test_a_sparse_count_rule_is_not_expanded() -> None:
    found, truncation, took = _expand_ical(
        _ical("FREQ=SECONDLY;COUNT=10;BYMONTH=2;BYMONTHDAY=30", "20260101T000000Z"),
        at(2026, 1, 1),
        at(2027, 1, 1),
    )
    assert found == [at(2026, 1, 1)] and truncation.cut and took < HANG_GUARD


def test_a_series_of_long_overlapping_instances_is_not_expanded() -> None:
    raw = _ical("FREQ=MINUTELY", "20000101T000000Z").replace("DURATION:PT30S", "DURATION:P9000D")
    found, truncation, took = _expand_ical(raw, at(2026, 1, 1), at(2026, 1, 2))
    assert found == [] and truncation.cut and took < HANG_GUARD


@pytest.mark.parametrize(
    ("rule", "days", "most"),
    [
        ("FREQ=DAILY", 1095, 1096),
        ("FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR", 1095, 157 * 5 + 5),
        ("FREQ=HOURLY", 10, 241),
        ("FREQ=DAILY;BYHOUR=9,10,11", 10, 33),
        ("FREQ=MONTHLY;BYDAY=MO", 365, 15 * 31),
        ("FREQ=YEARLY", 1095, 4),
        ("FREQ=MINUTELY;INTERVAL=15;BYSECOND=0,30", 1, 97 * 2),
    ],
)
def test_most_instances_is_a_cheap_upper_bound(rule: str, days: int, most: int) -> None:
    from calsync.recurrence import most_instances

    assert most_instances(rule, dt.timedelta(days=days)) == most


def test_most_instances_of_an_unreadable_rule_is_unknown() -> None:
    from calsync.recurrence import most_instances

    assert most_instances("FREQ=FORTNIGHTLY", dt.timedelta(days=1)) is None


def test_a_rule_with_thousands_of_instances_per_period_is_not_expanded() -> None:
    every = ";".join(
        [
            "FREQ=DAILY",
            "BYHOUR=" + ",".join(map(str, range(24))),
            "BYMINUTE=" + ",".join(map(str, range(60))),
            "BYSECOND=" + ",".join(map(str, range(60))),
        ]
    )
    found, truncation, took = _expand_ical(
        _ical(every, "20260101T000000Z"), at(2026, 1, 2), at(2027, 1, 1)
    )
    assert found == [] and truncation.cut and took < HANG_GUARD
    # A working day in quarter hours is fine.
    quarters = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=9,10,11,12,13,14,15,16;BYMINUTE=0,15,30,45"
    found, truncation, _ = _expand_ical(
        _ical(quarters, "20251229T090000Z"), at(2026, 1, 5), at(2026, 1, 6)
    )
    assert len(found) == 32 and not truncation.cut


def test_capped_series_reads_json_resources_through_the_fallback() -> None:
    from calsync.model import Event, Resource
    from calsync.store.expand import capped_series

    def master(rrule: str) -> Resource:
        event = Event(
            uid="g1",
            start=at(2026, 1, 1, 9),
            end=at(2026, 1, 1, 9, 30),
            timezone="Europe/Berlin",
            rrule=rrule,
        )
        return Resource("g1", '"1"', "{}", "google", [event])

    window = (at(2026, 1, 1), at(2027, 1, 1))
    assert capped_series(master("FREQ=DAILY"), *window, 3000) is None
    assert capped_series(master("FREQ=MINUTELY"), *window, 3000) == "more than 3000 occurrences"
    assert capped_series(master("FREQ=DAILY"), *window, 100) == "more than 100 occurrences"
    why = capped_series(master("FREQ=SECONDLY;COUNT=10;BYMONTH=2;BYMONTHDAY=30"), *window, 100)
    assert why is not None and why.startswith("cannot be expanded")


def test_a_plain_dense_rule_is_over_the_cap_by_arithmetic_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from calsync.providers.ical import parse_resource
    from calsync.store import expand

    def no_expansion(*args: object, **kwargs: object) -> None:
        raise AssertionError("the series was expanded; arithmetic should have decided")

    monkeypatch.setattr(expand, "ical_occurrences", no_expansion)
    monkeypatch.setattr(expand, "master_occurrences", no_expansion)
    resource = parse_resource("m.ics", None, _ical("FREQ=MINUTELY", "20260101T000000Z"))
    assert expand.capped_series(resource, at(2026, 1, 1), at(2027, 1, 1), 3000) == (
        "more than 3000 occurrences"
    )
