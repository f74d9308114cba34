"""The store's pure parts: URLs, timestamp storage, rows, ranges, rule expansion, export text."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import icalendar
import pytest
from sqlalchemy.dialects import postgresql, sqlite

from calsync.model import Event, Resource
from calsync.store import StoreURLError, async_url, default_store_url
from calsync.store.expand import Truncation, master_occurrences, overlaps
from calsync.store.export import Exported, calendar_text, top_level_components
from calsync.store.migrations import MIGRATIONS, Migration, check_order
from calsync.store.rows import (
    EVENT_COLUMNS,
    RESOURCE_COLUMNS,
    event_rows,
    event_values,
    json_list,
    resource_envelope,
    resource_row,
    resource_values,
)
from calsync.store.schema import UtcDateTime, events, resources, to_epoch_us
from calsync.store.urls import redact

pytestmark = pytest.mark.unit

UTC = dt.UTC


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:////var/lib/calsync/events.db", "sqlite+aiosqlite:////var/lib/calsync/events.db"),
        ("sqlite+aiosqlite:///rel.db", "sqlite+aiosqlite:///rel.db"),
        ("postgresql://u:p@db:5432/calsync", "postgresql+asyncpg://u:p@db:5432/calsync"),
        ("postgres://u@db/calsync", "postgresql+asyncpg://u@db/calsync"),
        (
            "postgresql+asyncpg://u@db/calsync?ssl=require",
            "postgresql+asyncpg://u@db/calsync?ssl=require",
        ),
    ],
)
def test_plain_urls_get_async_drivers(given: str, expected: str) -> None:
    assert async_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize(
    "url", ["mysql://u@db/x", "postgresql+psycopg2://u@db/x", "sqlite+pysqlite:///x.db", "nonsense"]
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(StoreURLError, match="accepted"):
        async_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgres:/u:s3cretpw@@::x",
        "postgresql://u:s3cretpw@db:notaport/x",
        "mysql://u:s3cretpw@db/x",
        "postgresql+psycopg2://u:s3cretpw@db/x",
    ],
)
def test_refusals_never_quote_the_password(url: str) -> None:
    with pytest.raises(StoreURLError) as caught:
        async_url(url)
    chain = f"{caught.value} {caught.value.__cause__} {caught.value.__context__}"
    assert "s3cretpw" not in chain


def test_redact_hides_the_password_of_parsable_and_broken_urls() -> None:
    assert redact("postgresql://u:pw@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact("postgres:/u:pw@@::x") == "postgres://***@::x"
    assert "pw" not in redact("postgresql://u:p@w@db:x/y")
    assert redact("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"


def test_default_url_follows_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CALSYNC_STORE_URL", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_store_url() == f"sqlite+aiosqlite:///{tmp_path}/state/calsync/events.db"
    assert (tmp_path / "state" / "calsync").is_dir()

    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = f"sqlite+aiosqlite:///{tmp_path}/home/.local/state/calsync/events.db"
    assert default_store_url() == expected

    monkeypatch.setenv("CALSYNC_STORE_URL", "postgresql://db/calsync")
    assert default_store_url() == "postgresql://db/calsync"


def test_sqlite_keeps_epoch_microseconds_and_refuses_naive_times() -> None:
    kind, lite, pg = UtcDateTime(), sqlite.dialect(), postgresql.dialect()
    for moment in (at(1969, 12, 31, 23, 59, 59), dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)):
        stored = kind.process_bind_param(moment, lite)
        assert isinstance(stored, int)
        assert kind.process_result_value(stored, lite) == moment
    assert kind.process_bind_param(at(1970, 1, 1, 0, 0, 1), lite) == 1_000_000
    berlin = dt.timezone(dt.timedelta(hours=1))
    assert kind.process_bind_param(dt.datetime(2024, 1, 1, 1, tzinfo=berlin), pg) == at(2024, 1, 1)
    for dialect in (lite, pg):
        with pytest.raises(ValueError, match="naive"):
            kind.process_bind_param(dt.datetime(2024, 1, 1), dialect)


@pytest.mark.parametrize(
    "moment",
    [
        dt.datetime(1, 1, 1, tzinfo=UTC),
        at(1969, 12, 31, 23, 59, 59),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        dt.datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        dt.datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=dt.timezone(dt.timedelta(hours=-9))),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ],
)
def test_epoch_microseconds_are_exact_on_both_sides_of_1970(moment: dt.datetime) -> None:
    since = moment - dt.datetime(1970, 1, 1, tzinfo=UTC)
    assert to_epoch_us(moment) == since // dt.timedelta(microseconds=1)
    assert UtcDateTime().process_result_value(to_epoch_us(moment), sqlite.dialect()) == moment


def test_migrations_are_numbered_in_order() -> None:
    check_order(MIGRATIONS)

    def nothing(_: Any) -> None:
        return None

    with pytest.raises(RuntimeError, match=r"1\.\.n"):
        check_order([*MIGRATIONS, Migration(len(MIGRATIONS) + 2, "gap", nothing)])


@pytest.mark.parametrize(
    ("start", "end", "range_start", "range_end", "expected"),
    [
        (at(2024, 1, 1, 9), at(2024, 1, 1, 10), at(2024, 1, 1, 10), None, False),  # ends at start
        (at(2024, 1, 1, 9), at(2024, 1, 1, 10), None, at(2024, 1, 1, 9), False),  # starts at end
        (at(2024, 1, 1, 9), at(2024, 1, 1, 10), at(2024, 1, 1, 9, 59), None, True),
        (at(2024, 1, 1, 9), at(2024, 1, 1, 9), at(2024, 1, 1, 9), at(2024, 1, 1, 10), True),
        (at(2024, 1, 1, 9), at(2024, 1, 1, 9), at(2024, 1, 1, 8), at(2024, 1, 1, 9), False),
        (None, None, None, None, True),
        (None, None, at(2024, 1, 1), None, False),
    ],
)
def test_ranges_are_half_open(
    start: dt.datetime | None,
    end: dt.datetime | None,
    range_start: dt.datetime | None,
    range_end: dt.datetime | None,
    expected: bool,
) -> None:
    assert overlaps(start, end, range_start, range_end) is expected


def test_event_rows_normalise_ends_and_keep_the_last_duplicate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = [
        Event("u", start=at(2024, 1, 1), all_day=True, summary="first"),
        Event("u", start=at(2024, 1, 1), all_day=True, summary="second"),
        Event("u", recurrence_id="2024-01-08T00:00:00+00:00", start=at(2024, 1, 9, 9)),
    ]
    with caplog.at_level(logging.WARNING):
        rows = event_rows("c", "cal", Resource("p", None, "", "ical", events))
    assert "repeats the component" in caplog.text
    assert [(r["recurrence_id"], r["summary"], r["end_utc"]) for r in rows] == [
        ("", "second", at(2024, 1, 2)),
        ("2024-01-08T00:00:00+00:00", "", at(2024, 1, 9, 9)),
    ]


def test_bulk_rows_name_every_column_of_their_table_once() -> None:
    # The store's driver-level INSERTs list these names; the tables must have exactly them.
    assert sorted(RESOURCE_COLUMNS) == sorted(resources.c.keys())
    assert sorted(EVENT_COLUMNS) == sorted(events.c.keys())
    assert len(set(RESOURCE_COLUMNS)) == len(RESOURCE_COLUMNS)
    assert len(set(EVENT_COLUMNS)) == len(EVENT_COLUMNS)


def test_value_tuples_convert_every_time_and_nothing_else() -> None:
    master = Event(
        "u",
        start=at(2024, 1, 1, 9),
        end=at(2024, 1, 1, 10),
        rrule="FREQ=DAILY;COUNT=3",
        series_end=at(2024, 1, 3, 10),
        last_modified=at(2023, 12, 1),
        attendees=["bob@example.com"],
    )
    resource = Resource("p", "e", "raw", "ical", [master])
    calls: list[dt.datetime | None] = []

    def stamp(value: dt.datetime | None) -> object:
        calls.append(value)
        return None if value is None else to_epoch_us(value)

    (row,) = event_values("c", "cal", resource, stamp)
    named = dict(zip(EVENT_COLUMNS, row, strict=True))
    assert named["start_utc"] == to_epoch_us(at(2024, 1, 1, 9))
    assert named["end_utc"] == to_epoch_us(at(2024, 1, 1, 10))
    assert named["series_end"] == to_epoch_us(at(2024, 1, 3, 10))
    assert named["last_modified"] == to_epoch_us(at(2023, 12, 1))
    assert named["attendees"] == '["bob@example.com"]' and named["rdates"] == "[]"
    assert len(calls) == 4
    # The dict form is the same row by name, with the datetimes kept.
    assert event_rows("c", "cal", resource)[0]["start_utc"] == at(2024, 1, 1, 9)
    values = resource_values("c", "cal", resource, "now", stamp)
    named_resource = dict(zip(RESOURCE_COLUMNS, values, strict=True))
    assert named_resource["updated_at"] == "now"  # passed through as given
    assert named_resource["first_start"] == to_epoch_us(at(2024, 1, 1, 9))
    assert named_resource["series_end"] == to_epoch_us(at(2024, 1, 3, 10))
    assert named_resource["recurring"] is True
    assert len(calls) == 6


def test_list_columns_are_compact_json_that_reads_back() -> None:
    names = ["zoë@example.com", 'a"b@example.com', "x\\y@example.com"]
    event = Event("u", start=at(2024, 1, 1), attendees=names, exdates=["2024-01-02T00:00:00+00:00"])
    (row,) = event_rows("c", "cal", Resource("p", None, "", "json", [event]))
    assert json.loads(row["attendees"]) == names
    assert json_list(row["attendees"]) == names
    assert row["exdates"] == '["2024-01-02T00:00:00+00:00"]' and row["rdates"] == "[]"


def test_one_event_and_several_give_the_same_row_for_it() -> None:
    # A single-event resource takes a shorter path; its row must be the one the general path
    # builds for the same event.
    master = Event("u", start=at(2024, 1, 1, 9), all_day=False, summary="s", attendees=["a@b"])
    override = Event("u", recurrence_id="2024-01-08T09:00:00+00:00", start=at(2024, 1, 8, 10))
    alone = event_values("c", "cal", Resource("p", None, "", "json", [master]))
    both = event_values("c", "cal", Resource("p", None, "", "json", [master, override]))
    assert alone == both[:1]
    assert resource_values("c", "cal", Resource("p", None, "", "json", [master]), 0)[6] is False


def test_a_resource_envelope_is_open_while_a_series_is() -> None:
    master = Event("u", start=at(2024, 1, 1, 9), end=at(2024, 1, 1, 10), rrule="FREQ=DAILY")
    moved = Event("u", recurrence_id="x", start=at(2023, 12, 1, 9), end=at(2023, 12, 1, 10))
    assert resource_envelope([master, moved]) == (at(2023, 12, 1, 9), None)
    master.series_end = at(2024, 2, 1, 10)
    assert resource_envelope([master, moved]) == (at(2023, 12, 1, 9), at(2024, 2, 1, 10))
    row = resource_row("c", "cal", Resource("p", "e", "raw", "json", [master]), at(2024, 1, 1))
    assert (row["recurring"], row["first_start"], row["series_end"]) == (
        True,
        at(2024, 1, 1, 9),
        at(2024, 2, 1, 10),
    )
    assert resource_envelope([]) == (None, None)


def _master(**fields: Any) -> dict[str, Any]:
    row = {
        "uid": "u",
        "recurrence_id": "",
        "calendar_id": "cal",
        "provider_id": "p",
        "status": "confirmed",
        "start_utc": at(2024, 3, 29, 9),
        "end_utc": at(2024, 3, 29, 10),
        "timezone": "Europe/Berlin",
        "all_day": False,
        "summary": "s",
        "location": "",
        "transparency": "opaque",
        "organizer": None,
        "attendees": "[]",
        "rrule": "FREQ=DAILY;COUNT=4",
        "rdates": "[]",
        "exdates": "[]",
    }
    row.update(fields)
    return row


def _expand(row: dict[str, Any], **kwargs: Any) -> list[dt.datetime | None]:
    options: dict[str, Any] = {
        "overridden": set(),
        "start": None,
        "end": None,
        "cap": 100,
        "include_cancelled": False,
        "truncation": Truncation(),
    }
    options.update(kwargs)
    return [o.start for o in master_occurrences(row, **options)]


def test_the_fallback_keeps_local_time_across_dst() -> None:
    assert _expand(_master()) == [
        at(2024, 3, 29, 9),
        at(2024, 3, 30, 9),
        at(2024, 3, 31, 8),  # 10:00 CEST
        at(2024, 4, 1, 8),
    ]


def test_the_fallback_reads_utc_and_date_until_exdates_rdates_and_overrides() -> None:
    row = _master(
        rrule="FREQ=DAILY;UNTIL=20240331T080000Z",
        exdates='["2024-03-30T09:00:00+00:00"]',
        rdates='["2024-04-05T12:00:00+00:00"]',
    )
    assert _expand(row) == [at(2024, 3, 29, 9), at(2024, 3, 31, 8), at(2024, 4, 5, 12)]
    assert _expand(row, overridden={at(2024, 3, 31, 8)}) == [at(2024, 3, 29, 9), at(2024, 4, 5, 12)]
    days = _master(
        start_utc=at(2024, 1, 1),
        end_utc=at(2024, 1, 2),
        all_day=True,
        timezone=None,
        rrule="RRULE:FREQ=WEEKLY;UNTIL=20240115",
    )
    assert _expand(days) == [at(2024, 1, 1), at(2024, 1, 8), at(2024, 1, 15)]


def test_the_fallback_honours_range_and_cap() -> None:
    row = _master(rrule="FREQ=DAILY", timezone="UTC")
    truncation = Truncation()
    found = _expand(row, start=at(2024, 4, 10, 9, 30), end=at(2024, 4, 13), truncation=truncation)
    assert found == [at(2024, 4, 10, 9), at(2024, 4, 11, 9), at(2024, 4, 12, 9)]
    assert not truncation.cut
    assert len(_expand(row, cap=5, truncation=truncation)) == 5
    assert truncation.cut
    assert _expand(_master(status="cancelled")) == []


def test_components_are_cut_out_of_their_calendar_as_written() -> None:
    raw = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\n"
        "BEGIN:VTIMEZONE\r\nTZID:Europe/\r\n Berlin\r\nEND:VTIMEZONE\r\n"
        "BEGIN:VEVENT\r\nUID:a\r\nDESCRIPTION:long\r\n  folded\r\n"
        "BEGIN:VALARM\r\nACTION:DISPLAY\r\nEND:VALARM\r\nEND:VEVENT\r\n"
        "END:VCALENDAR\r\n"
    )
    blocks = list(top_level_components(raw))
    assert blocks == [
        ["BEGIN:VTIMEZONE", "TZID:Europe/", " Berlin", "END:VTIMEZONE"],
        [
            "BEGIN:VEVENT",
            "UID:a",
            "DESCRIPTION:long",
            "  folded",
            "BEGIN:VALARM",
            "ACTION:DISPLAY",
            "END:VALARM",
            "END:VEVENT",
        ],
    ]
    text = calendar_text("Cal; with, specials", [Exported(raw, "ical"), Exported(raw, "ical")])
    assert text.count("BEGIN:VTIMEZONE") == 1
    assert text.count("BEGIN:VEVENT") == 2
    assert "\r\nX-WR-CALNAME:Cal\\; with\\, specials\r\n" in text  # TEXT escaping


def test_json_rows_export_as_vevents() -> None:
    row = _master(
        uid="g1",
        recurrence_id="2024-03-30T09:00:00+00:00",
        rrule=None,
        organizer="alice@example.com",
        attendees='["bob@example.com", "mailto:carol@example.com"]',
        sequence=3,
        last_modified=at(2024, 3, 1),
    )
    text = calendar_text(None, [Exported("{}", "json", [row])])
    [event] = icalendar.Calendar.from_ical(text).walk("VEVENT")
    assert event["DTSTART"].dt == at(2024, 3, 29, 9)
    assert event["DTEND"].dt == at(2024, 3, 29, 10)
    assert event["RECURRENCE-ID"].dt == at(2024, 3, 30, 9)
    assert [str(a) for a in event["ATTENDEE"]] == [
        "mailto:bob@example.com",
        "mailto:carol@example.com",
    ]
    assert str(event["ORGANIZER"]) == "mailto:alice@example.com"
    assert int(event["SEQUENCE"]) == 3
