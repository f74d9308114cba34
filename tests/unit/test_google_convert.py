"""Google event JSON -> Resource / Event: times, zones, recurrences, exceptions, bad items."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import pytest

from calsync.providers.base import (
    AuthenticationFailed,
    CalendarGone,
    CursorInvalid,
    RateLimited,
)
from calsync.providers.google import MalformedEvent, classify, resource_from_json
from calsync.providers.google.convert import cancelled_instance, event_from_json

pytestmark = pytest.mark.unit

UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def timed(**extra: Any) -> dict[str, Any]:
    return {
        "kind": "calendar#event",
        "etag": '"1"',
        "id": "abcdefgh",
        "status": "confirmed",
        "iCalUID": "abcdefgh@google.com",
        "summary": "Standup",
        "start": {"dateTime": "2025-03-03T09:00:00+01:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": "2025-03-03T09:30:00+01:00", "timeZone": "Europe/Berlin"},
        "updated": "2025-02-01T10:00:00.123Z",
        "sequence": 2,
        **extra,
    }


def test_timed_event_with_offset_and_zone() -> None:
    resource = resource_from_json(timed(location="Room 1", transparency="transparent"))
    (event,) = resource.events
    assert resource.provider_id == "abcdefgh" and resource.etag == '"1"'
    assert resource.raw_format == "json" and json.loads(resource.raw)["summary"] == "Standup"
    assert event.uid == "abcdefgh@google.com" and event.recurrence_id is None
    assert (event.start, event.end) == (at(2025, 3, 3, 8), at(2025, 3, 3, 8, 30))
    assert event.timezone == "Europe/Berlin" and not event.all_day
    assert (event.location, event.transparency, event.sequence) == ("Room 1", "transparent", 2)
    assert event.last_modified == dt.datetime(2025, 2, 1, 10, 0, 0, 123000, tzinfo=UTC)
    assert not event.recurring and event.series_end is None


def test_zone_falls_back_to_the_calendar_and_naive_times_read_in_it() -> None:
    item = timed(
        start={"dateTime": "2025-07-01T09:00:00"},
        end={"dateTime": "2025-07-01T10:00:00"},
    )
    (event,) = resource_from_json(item, default_zone="America/New_York").events
    assert event.start == at(2025, 7, 1, 13) and event.timezone == "America/New_York"
    item = timed(
        start={"dateTime": "2025-07-01T09:00:00Z"}, end={"dateTime": "2025-07-01T10:00:00Z"}
    )
    (event,) = resource_from_json(item).events
    assert event.start == at(2025, 7, 1, 9) and event.timezone == "UTC"


def test_all_day_event_end_is_exclusive() -> None:
    item = timed(start={"date": "2025-03-01"}, end={"date": "2025-03-03"})
    (event,) = resource_from_json(item).events
    assert event.all_day and event.timezone is None
    assert (event.start, event.end) == (at(2025, 3, 1), at(2025, 3, 3))


def test_organizer_attendees_and_status() -> None:
    item = timed(
        status="tentative",
        organizer={"email": "boss@example.com", "self": True},
        attendees=[{"email": "a@example.com"}, {"displayName": "no mail"}, {"email": "b@x.org"}],
    )
    (event,) = resource_from_json(item).events
    assert event.status == "tentative" and event.organizer == "boss@example.com"
    assert event.attendees == ["a@example.com", "b@x.org"]
    (odd,) = resource_from_json(timed(status="strange")).events
    assert odd.status == "confirmed"


def test_weekly_count_series_end_and_exdates_in_several_forms() -> None:
    item = timed(
        recurrence=[
            "RRULE:FREQ=WEEKLY;COUNT=4",
            "EXDATE;TZID=Europe/Berlin:20250310T090000",
            "EXDATE:20250317T080000Z",
            "RDATE;TZID=Europe/Berlin:20250405T090000,20250406T090000",
        ]
    )
    (event,) = resource_from_json(item).events
    assert event.rrule == "FREQ=WEEKLY;COUNT=4"
    assert event.exdates == ["2025-03-10T08:00:00+00:00", "2025-03-17T08:00:00+00:00"]
    # RDATEs in summer time: 09:00 Berlin is 07:00 UTC
    assert event.rdates == ["2025-04-05T07:00:00+00:00", "2025-04-06T07:00:00+00:00"]
    # the last RDATE is later than the last weekly instance (24 March), plus 30 minutes
    assert event.series_end == at(2025, 4, 6, 7, 30)


def test_until_and_open_ended_series() -> None:
    (until,) = resource_from_json(
        timed(recurrence=["RRULE:FREQ=DAILY;UNTIL=20250310T235959Z"])
    ).events
    assert until.series_end == at(2025, 3, 11, 0, 29, 59)
    (open_ended,) = resource_from_json(timed(recurrence=["RRULE:FREQ=MONTHLY"])).events
    assert open_ended.recurring and open_ended.series_end is None


def test_floating_and_date_exdates_follow_the_series() -> None:
    item = timed(
        recurrence=[
            "RRULE:FREQ=DAILY;COUNT=5",
            "EXDATE:20250304T090000",
            "EXDATE;VALUE=DATE:20250305",
        ]
    )
    (event,) = resource_from_json(item).events
    # floating: the series' zone; a date on a timed series: that day's instance
    assert event.exdates == ["2025-03-04T08:00:00+00:00", "2025-03-05T08:00:00+00:00"]


def test_all_day_series_with_date_exdate() -> None:
    item = timed(
        start={"date": "2025-03-01"},
        end={"date": "2025-03-02"},
        recurrence=["RRULE:FREQ=YEARLY;COUNT=3", "EXDATE;VALUE=DATE:20260301"],
    )
    (event,) = resource_from_json(item).events
    assert event.all_day and event.exdates == ["2026-03-01T00:00:00+00:00"]
    assert event.series_end == at(2027, 3, 2)


def test_exception_is_an_override_with_the_masters_uid() -> None:
    item = timed(
        id="abcdefgh_20250310T080000Z",
        recurringEventId="abcdefgh",
        originalStartTime={"dateTime": "2025-03-10T09:00:00+01:00", "timeZone": "Europe/Berlin"},
        start={"dateTime": "2025-03-10T11:00:00+01:00", "timeZone": "Europe/Berlin"},
        end={"dateTime": "2025-03-10T11:30:00+01:00", "timeZone": "Europe/Berlin"},
        recurrence=["RRULE:FREQ=DAILY"],  # ignored on an exception
    )
    (event,) = resource_from_json(item).events
    assert event.uid == "abcdefgh@google.com"
    assert event.recurrence_id == "2025-03-10T08:00:00+00:00"
    assert event.start == at(2025, 3, 10, 10) and not event.recurring


def test_cancelled_instance_needs_the_uid_from_outside() -> None:
    item = {
        "kind": "calendar#event",
        "etag": '"9"',
        "id": "abcdefgh_20250311",
        "status": "cancelled",
        "recurringEventId": "abcdefgh",
        "originalStartTime": {"date": "2025-03-11"},
    }
    with pytest.raises(MalformedEvent, match="no iCalUID"):
        resource_from_json(item)
    resource = resource_from_json(item, uid="series@google.com")
    (event,) = resource.events
    assert (event.uid, event.status, event.all_day) == ("series@google.com", "cancelled", True)
    assert event.recurrence_id == "2025-03-11T00:00:00+00:00"
    assert cancelled_instance(item, uid="u").start == at(2025, 3, 11)


def test_a_cancelled_single_event_is_not_a_resource() -> None:
    with pytest.raises(MalformedEvent, match="deletion"):
        resource_from_json({"id": "abcdefgh", "status": "cancelled"}, uid="x")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"start": {"dateTime": "tomorrow"}}, "RFC 3339"),
        ({"start": "2025-03-03"}, "not an object"),
        ({"start": {}}, "neither date nor dateTime"),
        ({"end": {"date": "2025-03-04"}}, "both dates"),
        ({"start": {"date": "2025-13-01"}, "end": {"date": "2025-03-04"}}, "not a date"),
        ({"end": {"dateTime": "2025-03-03T07:00:00+01:00"}}, "ends before"),
        ({"recurrence": "RRULE:FREQ=DAILY"}, "not a list"),
        ({"recurrence": ["RRULE:COUNT=3"]}, "FREQ"),
        ({"recurrence": ["RRULE:FREQ=DAILY", "EXDATE:yesterday"]}, "DATE"),
        ({"recurrence": ["RRULE:FREQ=DAILY;UNTIL=soon"]}, "recurrence"),
        ({"recurrence": ["BOGUS:1"]}, "unknown recurrence line"),
        ({"recurrence": ["RRULE:FREQ=DAILY;INTERVAL=0"]}, "INTERVAL is not a positive integer"),
        ({"recurrence": ["RRULE:FREQ=WEEKLY;INTERVAL=-2"]}, "INTERVAL is not a positive integer"),
    ],
)
def test_malformed_items_raise_with_the_event_id(change: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedEvent, match=message) as caught:
        resource_from_json(timed(**change))
    assert str(caught.value).startswith("abcdefgh: ")


def test_items_without_id_or_object_shape() -> None:
    with pytest.raises(MalformedEvent):
        resource_from_json({"summary": "x"})
    with pytest.raises(MalformedEvent):
        resource_from_json([1, 2])  # type: ignore[arg-type]
    with pytest.raises(MalformedEvent):
        event_from_json(timed(start=None), uid="u")


def test_missing_end_lasts_a_day_or_nothing() -> None:
    item = timed()
    del item["end"]
    (event,) = resource_from_json(item).events
    assert event.end == event.start
    item = timed(start={"date": "2025-03-01"})
    del item["end"]
    (event,) = resource_from_json(item).events
    assert event.end == at(2025, 3, 2)


def test_raw_keeps_non_ascii_text() -> None:
    resource = resource_from_json(timed(summary="Café · Zürich"))
    assert "Café · Zürich" in resource.raw


def _response(status: int, reason: str | None, path: str, **headers: str) -> httpx.Response:
    body: dict[str, Any] = {"error": {"code": status, "message": "m", "errors": []}}
    if reason:
        body["error"]["errors"] = [{"domain": "global", "reason": reason, "message": "m"}]
    request = httpx.Request("GET", f"https://www.googleapis.com{path}")
    return httpx.Response(status, json=body, headers=headers, request=request)


LIST = "/calendar/v3/calendars/a%40b.c/events"


def test_classify_rate_limits_quota_and_gone() -> None:
    limited = classify(_response(403, "rateLimitExceeded", LIST, **{"Retry-After": "3"}))
    assert isinstance(limited, RateLimited) and limited.retry_after == 3
    assert isinstance(classify(_response(403, "userRateLimitExceeded", LIST)), RateLimited)
    too_many = classify(_response(429, None, LIST))
    assert isinstance(too_many, RateLimited) and too_many.retry_after is None
    quota = classify(_response(403, "quotaExceeded", LIST))
    assert isinstance(quota, RateLimited) and (quota.retry_after or 0) >= 600
    assert isinstance(classify(_response(410, "fullSyncRequired", LIST)), CursorInvalid)
    assert isinstance(classify(_response(404, "notFound", LIST)), CalendarGone)
    assert isinstance(
        classify(_response(403, "insufficientPermissions", LIST)), AuthenticationFailed
    )


def test_classify_leaves_other_answers_to_the_defaults() -> None:
    assert classify(_response(400, "invalid", LIST)) is None
    assert classify(_response(500, "backendError", LIST)) is None
    gone = classify(_response(404, "notFound", LIST + "/abcdefgh"))
    assert gone is not None and gone.reason == "EventGone"


def test_an_unknown_tzid_in_a_recurrence_line_is_read_as_utc() -> None:
    # One rule for unknown zones everywhere (calsync.timezones, decision 0012): kept, read as UTC.
    item = timed(recurrence=["RRULE:FREQ=DAILY", "EXDATE;TZID=Mars/Base:20250310T090000"])
    (event,) = resource_from_json(item).events
    assert event.exdates == ["2025-03-10T09:00:00+00:00"]
