"""The Graph simulator's pure parts: recurrence patterns, ids, delta diffs, input checks."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from calsync.testing.microsoft import GraphError, GraphSimulator
from calsync.testing.microsoft import events as ev
from calsync.testing.microsoft import recurrence as rec
from calsync.testing.microsoft.clock import format_local, parse_local, resolve_zone
from calsync.testing.microsoft.delta import DeltaToken, diff

pytestmark = pytest.mark.unit

UTC = dt.UTC


def starts(pattern: dict[str, Any], span: dict[str, Any], limit: int = 50) -> list[dt.datetime]:
    normal = rec.normalise({"pattern": pattern, "range": span})
    found = rec.local_starts(normal, dt.time(9, 0), after=None, before=dt.datetime(2030, 1, 1))
    return [s for _, s in zip(range(limit), found, strict=False)]


def test_recurrence_patterns() -> None:
    last_friday = starts(
        {"type": "relativeMonthly", "daysOfWeek": ["friday"], "index": "last"},
        {"type": "numbered", "startDate": "2025-01-01", "numberOfOccurrences": 3},
    )
    assert [d.date() for d in last_friday] == [
        dt.date(2025, 1, 31),
        dt.date(2025, 2, 28),
        dt.date(2025, 3, 28),
    ]
    yearly = starts(
        {"type": "absoluteYearly", "month": 2, "dayOfMonth": 29},
        {"type": "endDate", "startDate": "2024-01-01", "endDate": "2029-01-01"},
    )
    assert [d.year for d in yearly] == [2024, 2028]
    every_other_week = starts(
        {"type": "weekly", "interval": 2, "daysOfWeek": ["monday", "thursday"]},
        {"type": "numbered", "startDate": "2025-01-06", "numberOfOccurrences": 4},
    )
    assert [d.day for d in every_other_week] == [6, 9, 20, 23]
    assert all(d.time() == dt.time(9, 0) for d in every_other_week)


@pytest.mark.parametrize(
    "bad",
    [
        {"pattern": {"type": "hourly"}, "range": {"type": "noEnd", "startDate": "2025-01-01"}},
        {"pattern": {"type": "weekly"}, "range": {"type": "noEnd", "startDate": "2025-01-01"}},
        {"pattern": {"type": "daily"}, "range": {"type": "numbered", "startDate": "2025-01-01"}},
        {
            "pattern": {"type": "daily"},
            "range": {"type": "endDate", "startDate": "2025-02-01", "endDate": "2025-01-01"},
        },
        {
            "pattern": {"type": "daily", "interval": 0},
            "range": {"type": "noEnd", "startDate": "2025-01-01"},
        },
        "weekly",
    ],
)
def test_bad_recurrence_is_refused(bad: Any) -> None:
    with pytest.raises(rec.RecurrenceError):
        rec.normalise(bad)


def test_occurrence_ids_and_ical_uids() -> None:
    key = "2025-03-10T16:00:00+00:00"
    made = ev.occurrence_id("AAMkAGmaster==", key)
    assert ev.split_occurrence_id(made) == ("AAMkAGmaster==", key)
    assert ev.split_occurrence_id("AAMkAGplain") is None
    uid = ev.global_object_id("seed", "e1", created=dt.datetime(2025, 1, 1, tzinfo=UTC))
    assert uid.startswith(ev.GLOBAL_OBJECT_CLASS) and uid[32:40] == "00000000"
    occurrence = ev.instance_ical_uid(uid, dt.date(2025, 3, 10))
    assert (
        occurrence[32:40] == "07E9030A" and occurrence[:32] + occurrence[40:] == uid[:32] + uid[40:]
    )


def test_times_and_zones() -> None:
    assert format_local(dt.datetime(2025, 1, 2, 3, 4, 5)) == "2025-01-02T03:04:05.0000000"
    assert parse_local("2025-01-02T03:04:05.1234567") == dt.datetime(2025, 1, 2, 3, 4, 5, 123456)
    assert resolve_zone("Pacific Standard Time") is not None
    assert resolve_zone("Atlantis Standard Time") is None


def _instance(event_id: str, etag_version: str) -> ev.Instance:
    stored = ev.StoredEvent(
        id=event_id,
        calendar_id="c",
        ical_uid="u",
        created=dt.datetime(2025, 1, 1, tzinfo=UTC),
        modified=dt.datetime(2025, 1, 1, tzinfo=UTC),
        change_key=ev.change_key(event_id, etag_version),
        subject="",
        body="",
        body_type="text",
        location="",
        show_as="busy",
        importance="normal",
        sensitivity="normal",
        is_all_day=False,
        is_cancelled=False,
        start=ev.When(dt.datetime(2025, 1, 1, 9), "UTC"),
        end=ev.When(dt.datetime(2025, 1, 1, 10), "UTC"),
        organizer=("", "a@example.com"),
        attendees=(),
    )
    return ev.Instance(
        event_id, "singleInstance", stored, stored.start.instant(), stored.end.instant()
    )


def test_delta_diff_reports_changes_removals_outside_changes_and_replays() -> None:
    same, changed, new = _instance("same", "1"), _instance("changed", "2"), _instance("new", "1")
    window = (dt.datetime(2025, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 1, tzinfo=UTC))
    token = DeltaToken(
        id="t",
        user="u",
        calendar="c",
        window=window,
        snapshot={
            "same": (same.etag, "same"),
            "changed": (_instance("changed", "1").etag, "changed"),
            "gone": ("x", "gone"),
        },
        seq=1,
        delivered=("same",),
    )
    entries = diff([same, changed, new], token, {"outside", "same"}, replay=False)
    assert [e if isinstance(e, str) else e.id for e in entries] == [
        "gone",
        "changed",
        "new",
        "outside",
    ]
    replayed = diff([same, changed, new], token, set(), replay=True)
    assert [e if isinstance(e, str) else e.id for e in replayed] == [
        "gone",
        "changed",
        "new",
        "same",
    ]


def test_simulator_input_checks_change_nothing() -> None:
    sim = GraphSimulator()
    alice = sim.add_user("alice@example.com")
    with pytest.raises(GraphError) as caught:
        sim.create_event(
            alice.id, None, {"subject": "x", "start": {"dateTime": "2025-01-01T09:00:00"}}
        )
    assert caught.value.status == 400
    with pytest.raises(GraphError):
        sim.add_calendar(alice.id, "Calendar")  # the default calendar's name is taken
    with pytest.raises(GraphError):
        sim.add_user("alice@example.com")
    assert sim.summary()["events"] == 0 and sim.summary()["calendars"] == 1
    made = sim.generate_events(alice.id, None, 50, seed=4)
    again = GraphSimulator()
    again.add_user("alice@example.com")
    assert again.generate_events(again.users[next(iter(again.users))].id, None, 50, seed=4) == made
