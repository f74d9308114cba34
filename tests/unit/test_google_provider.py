"""GoogleProvider on answers the simulator never gives: malformed items, broken paging.

A real Google (or a proxy in front of it) can send what the simulator, which validates its own
data, cannot: items without ids or with unreadable times, a last page without a sync token, a
page token that repeats. These run the provider on canned answers (httpx.MockTransport).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest

from calsync.model import Calendar, ChangePage, Window
from calsync.providers.base import ProviderError
from calsync.providers.google import GoogleProvider, MalformedEvent, resource_from_json
from calsync.providers.google.convert import GoogleEvent, as_event
from calsync.providers.oauth import StaticTokens

pytestmark = pytest.mark.unit

WINDOW = Window.around(dt.datetime(2025, 6, 1, tzinfo=dt.UTC), 365, 730)
CAL = Calendar(id="team@group.calendar.google.com", name="Team")


def good(event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "etag": f'"{event_id}"',
        "status": "confirmed",
        "iCalUID": f"{event_id}@google.com",
        "start": {"dateTime": "2025-06-02T09:00:00+02:00"},
        "end": {"dateTime": "2025-06-02T10:00:00+02:00"},
        **extra,
    }


def provider_for(answer: Callable[[httpx.Request], httpx.Response]) -> GoogleProvider:
    return GoogleProvider(
        "https://www.googleapis.com/calendar/v3/",  # a URL with the API path works too
        StaticTokens("token"),
        transport=httpx.MockTransport(answer),
    )


async def no_etags() -> Mapping[str, str | None]:
    return {}


async def collect(provider: GoogleProvider, cursor: str | None = None) -> list[ChangePage]:
    try:
        return [
            page
            async for page in provider.changes(
                CAL, cursor, window=WINDOW, known=no_etags, batch_size=10
            )
        ]
    finally:
        await provider.aclose()


def listing(*pages: dict[str, Any]) -> Callable[[httpx.Request], httpx.Response]:
    answers = list(pages)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answers.pop(0))

    answer.seen = seen  # type: ignore[attr-defined]
    return answer


async def test_unreadable_items_are_skipped_and_reported() -> None:
    answer = listing(
        {
            "timeZone": "Europe/Berlin",
            "items": [
                good("aaaaa1"),
                good("aaaaa2", start={"dateTime": "June 2nd"}),
                {"summary": "no id"},
                "not even an object",
                good("aaaaa3", recurrence=["RRULE:FREQ=NEVER"]),
                good("aaaaa4", recurringEventId=17),
            ],
            "nextSyncToken": "sync-1",
        }
    )
    provider = provider_for(answer)
    (page,) = await collect(provider)
    assert [r.provider_id for r in page.upserts] == ["aaaaa1"]
    assert page.cursor == "sync-1" and page.complete and page.full
    assert [pid for pid, _ in provider.skipped] == ["aaaaa2", "?", "?", "aaaaa3", "aaaaa4"]
    assert "RFC 3339" in provider.skipped[0][1]
    request = answer.seen[0]  # type: ignore[attr-defined]
    assert request.url.raw_path.startswith(
        b"/calendar/v3/calendars/team%40group.calendar.google.com/events?"
    )
    assert dict(request.url.params) == {
        "singleEvents": "false",
        "showDeleted": "false",
        "maxResults": "2500",
        "prettyPrint": "false",
    }
    assert request.headers["authorization"] == "Bearer token"


async def test_incremental_request_keeps_the_other_parameters() -> None:
    answer = listing({"items": [], "nextSyncToken": "sync-2"})
    (page,) = await collect(provider_for(answer), cursor="sync-1")
    assert not page.full and page.cursor == "sync-2"
    params = dict(answer.seen[0].url.params)  # type: ignore[attr-defined]
    assert params == {
        "singleEvents": "false",
        "showDeleted": "false",
        "maxResults": "2500",
        "prettyPrint": "false",
        "syncToken": "sync-1",
    }
    assert not {"timeMin", "timeMax"} & set(params)


async def test_last_page_without_a_sync_token_fails() -> None:
    with pytest.raises(ProviderError, match="nextSyncToken"):
        await collect(provider_for(listing({"items": [good("aaaaa1")]})))


async def test_a_repeated_page_token_fails_instead_of_looping() -> None:
    page = {"items": [], "nextPageToken": "again"}
    with pytest.raises(ProviderError, match="repeats"):
        await collect(provider_for(listing(page, page)))


async def test_items_that_are_not_a_list_fail() -> None:
    with pytest.raises(ProviderError, match="not a list"):
        await collect(provider_for(listing({"items": {"a": 1}, "nextSyncToken": "s"})))


async def test_cancelled_exception_of_a_vanished_master_is_deleted() -> None:
    cancelled = {
        "id": "mastr1_20250602T070000Z",
        "status": "cancelled",
        "recurringEventId": "mastr1",
        "originalStartTime": {"dateTime": "2025-06-02T09:00:00+02:00"},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events/mastr1"):
            return httpx.Response(404, json={"error": {"code": 404, "message": "Not Found"}})
        return httpx.Response(200, json={"items": [cancelled], "nextSyncToken": "s"})

    (page,) = await collect(provider_for(answer), cursor="old")
    assert page.upserts == [] and page.deletes == ["mastr1_20250602T070000Z"]


async def test_cancelled_exception_before_its_master_in_the_same_listing() -> None:
    cancelled = {
        "id": "mastr1_20250609T070000Z",
        "status": "cancelled",
        "recurringEventId": "mastr1",
        "originalStartTime": {"dateTime": "2025-06-09T09:00:00+02:00", "timeZone": "Europe/Berlin"},
    }
    master = good(
        "mastr1",
        start={"dateTime": "2025-06-02T09:00:00+02:00", "timeZone": "Europe/Berlin"},
        end={"dateTime": "2025-06-02T10:00:00+02:00", "timeZone": "Europe/Berlin"},
        recurrence=["RRULE:FREQ=WEEKLY;COUNT=3"],
    )
    answer = listing(
        {"items": [cancelled], "nextPageToken": "p2"},
        {"items": [master], "nextSyncToken": "s"},
    )
    found = await collect(provider_for(answer))
    assert found[0].upserts == []  # held back until the master's UID is known
    by_id = {r.provider_id: r for r in found[1].upserts}
    assert set(by_id) == {"mastr1", "mastr1_20250609T070000Z"}
    (override,) = by_id["mastr1_20250609T070000Z"].events
    assert override.uid == "mastr1@google.com" and override.status == "cancelled"
    assert len(answer.seen) == 2  # type: ignore[attr-defined]  # no events.get needed


async def test_deleted_master_and_its_exceptions_in_one_run() -> None:
    exception = good(
        "mastr1_20250609T070000Z",
        iCalUID="mastr1@google.com",
        recurringEventId="mastr1",
        originalStartTime={"dateTime": "2025-06-09T09:00:00+02:00"},
    )
    answer = listing(
        {"items": [exception], "nextPageToken": "p2"},
        {"items": [{"id": "mastr1", "status": "cancelled"}], "nextSyncToken": "s"},
    )
    found = await collect(provider_for(answer), cursor="old")
    assert [r.provider_id for r in found[0].upserts] == ["mastr1_20250609T070000Z"]
    assert found[1].upserts == []
    assert set(found[1].deletes) == {"mastr1", "mastr1_20250609T070000Z"}


async def test_calendar_list_skips_deleted_entries_and_keeps_names() -> None:
    body = {
        "items": [
            {
                "id": "a@example.com",
                "summary": "a@example.com",
                "accessRole": "owner",
                "backgroundColor": "#123456",
                "timeZone": "Europe/Berlin",
            },
            {"id": "gone@group.calendar.google.com", "deleted": True},
            {
                "id": "b@group.calendar.google.com",
                "summary": "B",
                "summaryOverride": "Mine",
                "accessRole": "freeBusyReader",
            },
            {"summary": "no id"},
        ]
    }
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=json.dumps(body).encode())

    provider = provider_for(answer)
    try:
        found = await provider.list_calendars()
    finally:
        await provider.aclose()
    assert [(c.id, c.name, c.color, c.read_only) for c in found] == [
        ("a@example.com", "a@example.com", "#123456", False),
        ("b@group.calendar.google.com", "Mine", None, True),
    ]
    assert seen[0].url.params["showHidden"] == "true"


async def test_members_of_unexpected_types_read_as_they_would_from_a_dict() -> None:
    # A page's items are decoded into GoogleEvent structs whose members hold any JSON value;
    # the conversion must treat each odd value as it treats it in a plain dict.
    odd = [
        good("bbbbb1", summary=5, location=["x"], sequence="3", transparency=1),
        good("bbbbb2", organizer="me", attendees={"email": "a@b"}, updated=12),
        good("bbbbb3", attendees=[{"email": "a@b"}, {"email": 7}, "c@d"], status=None),
        good("bbbbb4", etag=9, recurrence=[], end=None),
        good(
            "bbbbb5",
            start={"dateTime": "2025-06-02T09:00:00", "timeZone": 3},
            end={"dateTime": "2025-06-02T10:00:00"},
        ),
    ]
    provider = provider_for(listing({"items": odd, "nextSyncToken": "s"}))
    (page,) = await collect(provider)
    assert provider.skipped == []
    for resource, item in zip(page.upserts, odd, strict=True):
        plain = resource_from_json(item, raw=resource.raw)
        assert resource == plain
        assert json.loads(resource.raw) == item
    first = page.upserts[0].events[0]
    assert (first.summary, first.location, first.sequence, first.transparency) == (
        "",
        "",
        0,
        "opaque",
    )
    assert page.upserts[2].events[0].attendees == ["a@b"]
    assert page.upserts[3].etag is None


def test_a_dict_that_is_no_event_resource_is_refused() -> None:
    with pytest.raises(MalformedEvent, match="not an object"):
        as_event("text")
    with pytest.raises(MalformedEvent, match="not an event resource"):
        as_event({1: "a non-string key"})
    struct = as_event(good("ccccc1"))
    assert isinstance(struct, GoogleEvent) and as_event(struct) is struct
    with pytest.raises(ValueError, match="raw text"):
        resource_from_json(struct)
