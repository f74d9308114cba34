"""Graph event JSON to the store's Resource/Event, and the provider's pure parts."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from calsync.model import Calendar, ChangePage, Window
from calsync.providers.base import CalendarGone, CursorInvalid
from calsync.providers.microsoft import (
    MalformedEvent,
    MicrosoftProvider,
    classify,
    iana_zone,
    make_cursor,
    parse_cursor,
    to_event,
    to_resource,
)
from calsync.providers.oauth import StaticTokens

pytestmark = pytest.mark.unit

UTC = dt.UTC
SERIES_UID = "040000008200E00074C5B7101A82E00800000000" + "A0B1C2D3" * 8


def item(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "@odata.etag": 'W/"abc=="',
        "id": "AAMkAG1",
        "iCalUId": "040000008200E00074C5B7101A82E00800000000FFFF",
        "type": "singleInstance",
        "subject": "Planning",
        "isAllDay": False,
        "isCancelled": False,
        "showAs": "busy",
        "start": {"dateTime": "2025-03-03T17:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2025-03-03T17:30:00.0000000", "timeZone": "UTC"},
        "originalStartTimeZone": "Pacific Standard Time",
        "location": {"displayName": "Room 1"},
        "organizer": {"emailAddress": {"name": "Al", "address": "al@example.com"}},
        "attendees": [
            {"type": "required", "emailAddress": {"name": "Bo", "address": "bo@example.com"}},
            {"type": "optional", "emailAddress": {"name": "nobody"}},
        ],
        "lastModifiedDateTime": "2025-02-01T10:00:00.1234567Z",
    }
    base.update(changes)
    return base


def test_single_event() -> None:
    event = to_event(item())
    assert event.uid == item()["iCalUId"] and event.recurrence_id is None
    assert event.start == dt.datetime(2025, 3, 3, 17, tzinfo=UTC)
    assert event.end == dt.datetime(2025, 3, 3, 17, 30, tzinfo=UTC)
    assert event.timezone == "America/Los_Angeles"  # the Windows name mapped to IANA
    assert (event.summary, event.location) == ("Planning", "Room 1")
    assert event.organizer == "al@example.com" and event.attendees == ["bo@example.com"]
    assert event.status == "confirmed" and event.transparency == "opaque"
    assert event.last_modified == dt.datetime(2025, 2, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert not event.recurring


def test_occurrences_share_the_series_uid_and_differ_by_recurrence_id() -> None:
    first = item(
        id="occ1",
        type="occurrence",
        seriesMasterId="master",
        iCalUId=SERIES_UID[:32] + "07E90303" + SERIES_UID[40:],
        originalStart="2025-03-03T17:00:00Z",
    )
    second = item(
        id="occ2",
        type="exception",
        seriesMasterId="master",
        iCalUId=SERIES_UID[:32] + "07E9030A" + SERIES_UID[40:],
        originalStart="2025-03-10T16:00:00Z",
        start={"dateTime": "2025-03-11T18:00:00", "timeZone": "UTC"},
        end={"dateTime": "2025-03-11T19:00:00", "timeZone": "UTC"},
    )
    a, b = to_event(first), to_event(second)
    assert a.uid == b.uid == SERIES_UID
    assert a.recurrence_id == "2025-03-03T17:00:00+00:00"
    assert b.recurrence_id == "2025-03-10T16:00:00+00:00"
    assert b.start == dt.datetime(2025, 3, 11, 18, tzinfo=UTC)


def test_occurrence_uid_falls_back_to_the_series_master_id() -> None:
    event = to_event(item(type="occurrence", seriesMasterId="master", iCalUId="other-format"))
    assert event.uid == "master"
    assert event.recurrence_id == "2025-03-03T17:00:00+00:00"  # no originalStart: its start
    with pytest.raises(MalformedEvent):
        to_event(item(type="exception", seriesMasterId="master"))


def test_all_day_keeps_its_dates() -> None:
    event = to_event(
        item(
            isAllDay=True,
            start={"dateTime": "2025-12-24T00:00:00.0000000", "timeZone": "UTC"},
            end={"dateTime": "2025-12-26T00:00:00.0000000", "timeZone": "UTC"},
            originalStartTimeZone="W. Europe Standard Time",
        )
    )
    assert event.all_day and event.timezone is None
    assert (event.start, event.end) == (
        dt.datetime(2025, 12, 24, tzinfo=UTC),
        dt.datetime(2025, 12, 26, tzinfo=UTC),
    )
    occurrence = to_event(
        item(
            type="occurrence",
            seriesMasterId="m",
            isAllDay=True,
            start={"dateTime": "2025-12-24T00:00:00", "timeZone": "UTC"},
            end={"dateTime": "2025-12-25T00:00:00", "timeZone": "UTC"},
            originalStart="2025-12-23T23:00:00Z",
            originalStartTimeZone="W. Europe Standard Time",
        )
    )
    assert occurrence.recurrence_id == "2025-12-24T00:00:00+00:00"  # the date in Berlin


def test_other_zones_cancelled_and_free() -> None:
    event = to_event(
        item(
            start={"dateTime": "2025-07-01T09:00:00", "timeZone": "Pacific Standard Time"},
            end={"dateTime": "2025-07-01T19:00:00", "timeZone": "Europe/Berlin"},
            isCancelled=True,
            showAs="free",
            originalStartTimeZone="Customized Time Zone",
        )
    )
    assert event.start == dt.datetime(2025, 7, 1, 16, tzinfo=UTC)
    assert event.end == dt.datetime(2025, 7, 1, 17, tzinfo=UTC)
    assert event.status == "cancelled" and event.transparency == "transparent"
    assert event.timezone == "Customized Time Zone"  # unknown: kept as written


@pytest.mark.parametrize(
    "broken",
    [
        {"start": None},
        {"start": {"dateTime": "yesterday", "timeZone": "UTC"}},
        {"end": {"dateTime": "2025-03-03T16:00:00", "timeZone": "UTC"}},
        {"type": "seriesMaster"},
    ],
)
def test_malformed_items_raise(broken: dict[str, Any]) -> None:
    with pytest.raises(MalformedEvent):
        to_event(item(**broken))


def test_resource_keeps_raw_json_and_etag() -> None:
    resource = to_resource(item())
    assert resource.provider_id == "AAMkAG1" and resource.etag == 'W/"abc=="'
    assert json.loads(resource.raw)["subject"] == "Planning" and resource.raw_format == "json"
    with pytest.raises(MalformedEvent):
        to_resource(item(id=""))


def test_zone_names() -> None:
    assert iana_zone("Pacific Standard Time") == "America/Los_Angeles"
    assert iana_zone("tzone://Microsoft/Utc") == "UTC"
    assert iana_zone("Europe/Berlin") == "Europe/Berlin"
    assert iana_zone("Nowhere Standard Time") is None


def _response(status: int, code: str = "") -> httpx.Response:
    body = {"error": {"code": code, "message": "text"}} if code else {}
    return httpx.Response(status, json=body, request=httpx.Request("GET", "https://x/v1.0/me"))


def test_classify() -> None:
    assert isinstance(classify(_response(410)), CursorInvalid)
    assert isinstance(classify(_response(400, "SyncStateNotFound")), CursorInvalid)
    assert isinstance(classify(_response(400, "RESYNCREQUIRED")), CursorInvalid)
    assert isinstance(classify(_response(404, "ErrorItemNotFound")), CalendarGone)
    assert classify(_response(429, "TooManyRequests")) is None  # JsonApi's default: RateLimited
    assert classify(_response(400, "BadRequest")) is None


def test_cursor_round_trip() -> None:
    start = dt.datetime(2025, 1, 1, tzinfo=UTC)
    end = dt.datetime(2027, 1, 1, tzinfo=UTC)
    cursor = make_cursor(
        "https://graph.microsoft.com/v1.0/me/calendarView/delta?$deltatoken=a", (start, end)
    )
    link, window = parse_cursor(cursor)
    assert link.endswith("$deltatoken=a") and window == (start, end)
    assert parse_cursor("https://x/y?$deltatoken=b") == ("https://x/y?$deltatoken=b", None)


async def full_listing(
    answer: Callable[[httpx.Request], httpx.Response], *, batch_size: int
) -> tuple[MicrosoftProvider, list[ChangePage]]:
    """Every ChangePage of a first listing of calendar `c` over 2025, Graph answering `answer`."""
    provider = MicrosoftProvider(
        "https://graph.example", StaticTokens("t"), transport=httpx.MockTransport(answer)
    )
    window = Window(dt.datetime(2025, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 1, tzinfo=UTC))

    async def known() -> dict[str, str | None]:
        return {}

    try:
        pages = [
            p
            async for p in provider.changes(
                Calendar("c", "Calendar"), None, window=window, known=known, batch_size=batch_size
            )
        ]
    finally:
        await provider.aclose()
    return provider, pages


async def test_a_page_skips_malformed_items_and_keeps_the_last_mention() -> None:
    good = item(id="good")
    flip = item(id="flip")
    payload = {
        "value": [
            good,
            {"id": "flip", "@removed": {"reason": "deleted"}},
            flip,
            item(id="bad", start={"dateTime": "nonsense", "timeZone": "UTC"}),
            {"id": "gone", "@removed": {"reason": "deleted"}},
            {"no": "id"},
        ],
        "@odata.deltaLink": "https://graph.example/v1.0/me/calendars/c/calendarView/delta?$deltatoken=z",
    }

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["Prefer"] == 'odata.maxpagesize=1000, outlook.timezone="UTC"'
        assert request.url.params["startDateTime"].endswith("Z")
        return httpx.Response(200, json=payload)

    provider, pages = await full_listing(answer, batch_size=50)
    (page,) = pages
    assert [r.provider_id for r in page.upserts] == ["good", "flip"]
    assert page.deletes == ["gone"]
    assert page.complete and page.full and page.cursor is not None
    assert [pid for pid, _ in provider.skipped] == ["bad", ""]


@pytest.mark.parametrize(
    ("pages", "batch_size", "handed"),
    [
        ([7], 3, [3, 3, 1]),
        ([6], 3, [3, 3]),
        ([0], 100, [0]),
        ([5, 0], 2, [2, 2, 1, 0]),
        ([1000, 250], 100, [100] * 12 + [50]),
        ([4], 10_000, [4]),
    ],
)
async def test_graph_pages_are_asked_at_1000_and_stored_in_batches(
    pages: list[int], batch_size: int, handed: list[int]
) -> None:
    # Graph's largest pages (fewer requests against throttling); SYNC_BATCH_SIZE items per
    # store transaction, in order; only the very last carries the cursor (README).
    prefer: list[str] = []
    numbers = iter(range(10**6))

    def answer(request: httpx.Request) -> httpx.Response:
        prefer.append(request.headers["Prefer"])
        number = len(prefer) - 1
        body: dict[str, Any] = {
            "value": [item(id=f"e{next(numbers)}") for _ in range(pages[number])]
        }
        if number + 1 < len(pages):
            body["@odata.nextLink"] = f"https://graph.example/v1.0/next?page={number + 1}"
        else:
            body["@odata.deltaLink"] = "https://graph.example/v1.0/d?$deltatoken=z"
        return httpx.Response(200, json=body)

    _, found = await full_listing(answer, batch_size=batch_size)
    assert prefer == ['odata.maxpagesize=1000, outlook.timezone="UTC"'] * len(pages)
    assert [len(p.upserts) for p in found] == handed
    ids = [r.provider_id for p in found for r in p.upserts]
    assert ids == [f"e{n}" for n in range(sum(pages))]  # every item once, in order
    assert [p.cursor is not None for p in found] == [False] * (len(handed) - 1) + [True]
    assert [p.complete for p in found] == [False] * (len(handed) - 1) + [True]
    assert all(p.full for p in found)


def test_a_wall_time_in_an_unknown_zone_is_read_as_utc() -> None:
    # One rule for unknown zones everywhere (calsync.timezones, decision 0012): kept, read as UTC.
    event = to_event(
        item(start={"dateTime": "2025-01-01T00:00:00.0000000", "timeZone": "Mars/Olympus"})
    )
    assert event.start == dt.datetime(2025, 1, 1, tzinfo=UTC)
