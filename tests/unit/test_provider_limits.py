"""The explicit limits as settings (issue 12, item 3): MAX_OBJECT_SIZE and MAX_RESPONSE_SIZE
reach every provider through the factory, and each refusal is a clear error: an object over
the limit is skipped with a reason (reported on the connection), a response over it fails the
attempt for good. Each is tested here with the setting lowered."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest

from calsync.api import CalendarConnectionSpec
from calsync.controllers.provider_factory import ProviderDeps, build_provider
from calsync.model import Calendar, ChangePage, Window
from calsync.providers.base import ProviderError
from calsync.providers.caldav import CalDAVProvider
from calsync.providers.google import GoogleProvider
from calsync.providers.ical import MalformedCalendarData, parse_resource
from calsync.providers.microsoft import MicrosoftProvider
from calsync.providers.oauth import StaticTokens
from calsync.providers.rest import JsonApi, default_error
from calsync.settings import load_settings
from tests.unit.test_caldav_http import SERVER

pytestmark = pytest.mark.unit

WINDOW = Window.around(dt.datetime(2025, 6, 1, tzinfo=dt.UTC), 365, 730)
ICS = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:t\r\nBEGIN:VEVENT\r\nUID:u1\r\n"
    "DTSTART:20250601T090000Z\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)


def test_an_object_over_max_object_size_is_refused_with_the_setting_named() -> None:
    raw = ICS.format(summary="x" * 2000)
    assert parse_resource("a.ics", None, raw).events[0].uid == "u1"
    with pytest.raises(MalformedCalendarData, match="MAX_OBJECT_SIZE") as info:
        parse_resource("a.ics", None, raw, max_size=1024)
    assert "a.ics" in str(info.value) and "1024" in str(info.value)


async def no_etags() -> Mapping[str, str | None]:
    return {}


def _google(answer: Callable[[httpx.Request], httpx.Response], **options: Any) -> GoogleProvider:
    return GoogleProvider(
        "https://www.googleapis.com",
        StaticTokens("token"),
        transport=httpx.MockTransport(answer),
        **options,
    )


def _event(event_id: str, summary: str = "s") -> dict[str, Any]:
    return {
        "id": event_id,
        "etag": f'"{event_id}"',
        "status": "confirmed",
        "iCalUID": f"{event_id}@google.com",
        "summary": summary,
        "start": {"dateTime": "2025-06-02T09:00:00Z"},
        "end": {"dateTime": "2025-06-02T10:00:00Z"},
    }


async def _pages(provider: Any, calendar: Calendar) -> list[ChangePage]:
    try:
        return [
            page
            async for page in provider.changes(
                calendar, None, window=WINDOW, known=no_etags, batch_size=10
            )
        ]
    finally:
        await provider.aclose()


async def test_a_google_event_over_max_object_size_is_skipped_with_a_reason() -> None:
    body = {"items": [_event("small"), _event("large", "y" * 5000)], "nextSyncToken": "s1"}
    provider = _google(lambda request: httpx.Response(200, json=body), max_object_size=2048)
    (page,) = await _pages(provider, Calendar(id="primary", name="P"))
    assert [r.provider_id for r in page.upserts] == ["small"]
    assert [pid for pid, _ in provider.skipped] == ["large"]
    assert "MAX_OBJECT_SIZE" in provider.skipped[0][1]


async def test_a_graph_event_over_max_object_size_is_skipped_with_a_reason() -> None:
    def item(item_id: str, subject: str) -> dict[str, Any]:
        return {
            "id": item_id,
            "iCalUId": item_id,
            "subject": subject,
            "type": "singleInstance",
            "start": {"dateTime": "2025-06-02T09:00:00.0000000", "timeZone": "UTC"},
            "end": {"dateTime": "2025-06-02T10:00:00.0000000", "timeZone": "UTC"},
        }

    body = {
        "value": [item("small", "s"), item("large", "z" * 5000)],
        "@odata.deltaLink": "https://graph.microsoft.com/v1.0/me/calendars/c/events/delta?d=1",
    }
    provider = MicrosoftProvider(
        "https://graph.microsoft.com",
        StaticTokens("token"),
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json=body)),
        max_object_size=2048,
    )
    pages = await _pages(provider, Calendar(id="c", name="C"))
    assert [r.provider_id for page in pages for r in page.upserts] == ["small"]
    assert [pid for pid, _ in provider.skipped] == ["large"]
    assert "MAX_OBJECT_SIZE" in provider.skipped[0][1]


async def test_a_rest_response_over_max_response_size_fails_for_good() -> None:
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=b'{"items": [' + b'"x",' * 50_000 + b'"x"]}')

    api = JsonApi(
        "https://api.example",
        StaticTokens("t"),
        classify=lambda response: None,
        transport=httpx.MockTransport(answer),
        max_response_bytes=65536,
    )
    try:
        with pytest.raises(ProviderError, match="MAX_RESPONSE_SIZE") as info:
            await api.get_json("/big")
        assert info.value.retryable is False
        assert len(calls) == 1  # not retried
    finally:
        await api.aclose()
    assert default_error  # the module's other refusals are untouched


async def test_a_caldav_response_over_max_response_size_fails_for_good() -> None:
    dav = CalDAVProvider(
        SERVER,
        "alice",
        "pw",
        transport=httpx.MockTransport(lambda request: httpx.Response(207, content=b"x" * 70_000)),
        max_response_size=65536,
    )
    async with dav:
        with pytest.raises(ProviderError, match="MAX_RESPONSE_SIZE") as info:
            await dav.list_calendars()
    assert info.value.retryable is False


async def test_the_factory_hands_the_settings_to_the_providers() -> None:
    settings = load_settings(
        environ={"CALSYNC_MAX_OBJECT_SIZE": "4096", "CALSYNC_MAX_RESPONSE_SIZE": "100000"}
    )
    spec = CalendarConnectionSpec.model_validate(
        {
            "provider": "caldav",
            "owner": "alice@example.com",
            "caldav": {
                "url": "https://192.0.2.10/dav/",
                "credentialsSecretRef": {"name": "creds"},
            },
        }
    )
    secrets = {"creds": {"username": b"alice", "password": b"pw"}}
    provider = await build_provider(spec, secrets, budget=None, deps=ProviderDeps(settings))
    try:
        assert isinstance(provider, CalDAVProvider)
        assert provider.max_object_size == 4096
        assert provider.max_response_size == 100_000
    finally:
        await provider.aclose()
