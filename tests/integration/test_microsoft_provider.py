"""MicrosoftProvider against the Graph simulator over real sockets (no engine, no store)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp import web

from calsync.model import Calendar, ChangePage, Window
from calsync.providers.base import CalendarGone, CursorInvalid, InvalidGrant, ProviderError
from calsync.providers.microsoft import MicrosoftProvider, make_cursor, parse_cursor
from calsync.providers.oauth import OAuthClient, RefreshingTokens, StaticTokens, TokenSet
from calsync.testing.microsoft import GraphSimulator, RunningSimulator, running
from calsync.testing.microsoft.throttle import Fault

pytestmark = pytest.mark.integration

SCOPES = ("offline_access", "https://graph.microsoft.com/Calendars.Read")


def at(now: dt.datetime, days: int, hour: int = 9, minutes: int = 60) -> dict[str, Any]:
    start = (now + dt.timedelta(days=days)).replace(hour=hour, minute=0, second=0, microsecond=0)
    end = start + dt.timedelta(minutes=minutes)
    return {
        "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
        "end": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
    }


@dataclass
class Setup:
    running: RunningSimulator
    user: str
    token: dict[str, Any]
    window: Window

    @property
    def sim(self) -> GraphSimulator:
        return self.running.sim

    def provider(self, **options: Any) -> MicrosoftProvider:
        return MicrosoftProvider(
            self.running.url, StaticTokens(self.token["access_token"]), timeout=10, **options
        )

    def add(self, subject: str, days: int, **extra: Any) -> str:
        body = {"subject": subject, **at(self.sim.clock.now(), days), **extra}
        return self.sim.create_event(self.user, None, body).id


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    async with running() as served:
        sim = served.sim
        alice = sim.add_user("alice@example.com", "Alice")
        sim.identity.add_client("calsync", "s3cret", ["http://127.0.0.1:9/cb"])
        token = sim.identity.issue(alice.id, "calsync", " ".join(SCOPES))
        window = Window.around(sim.clock.now(), 365, 730)
        yield Setup(served, alice.id, token, window)


async def collect(
    provider: MicrosoftProvider, calendar: Calendar, cursor: str | None, window: Window, size: int
) -> list[ChangePage]:
    async def known() -> dict[str, str | None]:
        return {}

    return [
        page
        async for page in provider.changes(
            calendar, cursor, window=window, known=known, batch_size=size
        )
    ]


async def default_calendar(provider: MicrosoftProvider) -> Calendar:
    return (await provider.list_calendars())[0]


async def test_list_calendars_all_pages_shared_read_only(setup: Setup) -> None:
    sim = setup.sim
    for n in range(12):
        sim.add_calendar(setup.user, f"Cal {n}", hex_color="#a1b2c3")
    bob = sim.add_user("bob@example.com")
    team = sim.add_calendar(bob.id, "Team")
    sim.share_calendar(team.id, setup.user)
    provider = setup.provider()
    try:
        sim.control.reset_counters()
        calendars = await provider.list_calendars()
    finally:
        await provider.aclose()
    assert len(calendars) == 14
    assert calendars[0].name == "Calendar" and not calendars[0].read_only
    shared = next(c for c in calendars if c.id == team.id)
    assert shared.read_only and shared.name == "Team"
    assert next(c for c in calendars if c.name == "Cal 0").color == "#a1b2c3"


async def test_full_listing_pages_then_incremental_changes(setup: Setup) -> None:
    ids = [setup.add(f"E{n}", n) for n in range(7)]
    provider = setup.provider()
    try:
        calendar = await default_calendar(provider)
        pages = await collect(provider, calendar, None, setup.window, 3)
        assert [len(p.upserts) for p in pages] == [3, 3, 1]
        assert all(p.full for p in pages)
        assert [p.cursor is None for p in pages] == [True, True, False]
        assert [p.complete for p in pages] == [False, False, True]
        cursor = pages[-1].cursor
        assert cursor is not None
        link, recorded = parse_cursor(cursor)
        assert "$deltatoken=" in link and recorded is not None
        assert abs(recorded[0] - setup.window.start) < dt.timedelta(seconds=1)
        resource = pages[0].upserts[0]
        assert resource.raw_format == "json" and resource.etag and resource.etag.startswith('W/"')
        setup.sim.update_event(setup.user, ids[0], {"subject": "changed"})
        setup.sim.delete_event(setup.user, ids[1])
        added = setup.add("added", 20)
        changes = await collect(provider, calendar, cursor, setup.window, 3)
        upserted = {r.provider_id: r for p in changes for r in p.upserts}
        assert set(upserted) == {ids[0], added}
        assert upserted[ids[0]].events[0].summary == "changed"
        assert [d for p in changes for d in p.deletes] == [ids[1]]
        assert not any(p.full for p in changes) and changes[-1].complete
    finally:
        await provider.aclose()


async def test_cursor_resets_map_to_cursor_invalid(setup: Setup) -> None:
    setup.add("one", 1)
    provider = setup.provider()
    try:
        calendar = await default_calendar(provider)
        cursor = (await collect(provider, calendar, None, setup.window, 10))[-1].cursor
        assert cursor is not None
        for status, code in (
            (410, "syncStateNotFound"),
            (400, "SyncStateNotFound"),
            (400, "resyncRequired"),
        ):
            setup.sim.invalidate_delta_tokens(status=status, code=code)
            with pytest.raises(CursorInvalid):
                await collect(provider, calendar, cursor, setup.window, 10)
            cursor = (await collect(provider, calendar, None, setup.window, 10))[-1].cursor
    finally:
        await provider.aclose()


async def test_window_moved_more_than_a_day_rebaselines(setup: Setup) -> None:
    provider = setup.provider()
    try:
        calendar = await default_calendar(provider)
        cursor = (await collect(provider, calendar, None, setup.window, 10))[-1].cursor
        assert cursor is not None
        hours = dt.timedelta(hours=20)
        nearby = Window(setup.window.start + hours, setup.window.end + hours)
        assert (await collect(provider, calendar, cursor, nearby, 10))[-1].complete
        later = Window(setup.window.start + 2 * hours * 2, setup.window.end + 2 * hours * 2)
        with pytest.raises(CursorInvalid, match="window"):
            await collect(provider, calendar, cursor, later, 10)
        with pytest.raises(CursorInvalid):  # no window recorded
            await collect(provider, calendar, parse_cursor(cursor)[0], setup.window, 10)
    finally:
        await provider.aclose()


async def test_foreign_delta_link_never_gets_the_token(setup: Setup) -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"value": []})

    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    foreign = f"http://127.0.0.1:{runner.addresses[0][1]}"
    provider = setup.provider()
    try:
        calendar = await default_calendar(provider)
        cursor = make_cursor(
            f"{foreign}/v1.0/me/calendarView/delta?$deltatoken=x",
            (setup.window.start, setup.window.end),
        )
        with pytest.raises(CursorInvalid, match="another host"):
            await collect(provider, calendar, cursor, setup.window, 10)
        # A nextLink to another host is refused as well.
        for n in range(3):
            setup.add(f"E{n}", n)
        setup.sim.base_url = foreign
        small = setup.provider(page_size=1)  # Graph pages of one item: a nextLink follows
        with pytest.raises(ProviderError, match="another host") as caught:
            await collect(small, calendar, None, setup.window, 1)
        assert not caught.value.retryable
    finally:
        await provider.aclose()
        await small.aclose()
        await runner.cleanup()
    assert seen == []


async def test_removed_calendar_is_gone(setup: Setup) -> None:
    extra = setup.sim.add_calendar(setup.user, "Temporary")
    provider = setup.provider()
    try:
        calendar = next(c for c in await provider.list_calendars() if c.id == extra.id)
        cursor = (await collect(provider, calendar, None, setup.window, 10))[-1].cursor
        setup.sim.remove_calendar(extra.id)
        with pytest.raises(CalendarGone):
            await collect(provider, calendar, cursor, setup.window, 10)
        with pytest.raises(CalendarGone):
            await collect(provider, calendar, None, setup.window, 10)
    finally:
        await provider.aclose()


async def test_expired_access_token_is_refreshed_and_the_rotation_reported(setup: Setup) -> None:
    url = setup.running.url
    client = OAuthClient(
        client_id="calsync",
        client_secret="s3cret",
        token_url=f"{url}/common/oauth2/v2.0/token",
        authorize_url=f"{url}/common/oauth2/v2.0/authorize",
        scopes=SCOPES,
    )
    stored: list[TokenSet] = []

    async def on_refresh(tokens: TokenSet) -> None:
        stored.append(tokens)

    original = setup.token["refresh_token"]
    async with httpx.AsyncClient() as http:
        tokens = RefreshingTokens(
            http,
            client,
            TokenSet(setup.token["access_token"], original, time.time() + 3600),
            on_refresh=on_refresh,
        )
        provider = MicrosoftProvider(url, tokens, timeout=10)
        try:
            setup.sim.identity.expire_access_tokens()
            calendars = await provider.list_calendars()
            assert calendars
            assert len(stored) == 1
            assert stored[0].refresh_token not in (None, original)
            # The revoked refresh token cannot buy another access token: InvalidGrant.
            setup.sim.identity.revoke(user_id=setup.user)
            setup.sim.identity.expire_access_tokens()
            with pytest.raises(InvalidGrant):
                await provider.list_calendars()
        finally:
            await provider.aclose()


async def test_rate_limit_storm_converges_within_four_concurrent_requests(setup: Setup) -> None:
    sim = setup.sim
    sim.control.latency = 0.02
    sim.control.faults.append(
        Fault(status=429, path="/v1.0/me/calendars", count=6, retry_after=0.05)
    )
    sim.control.faults.append(
        Fault(status=503, path="/v1.0/me/calendars", count=2, retry_after=0.05)
    )
    provider = setup.provider(max_concurrency=4)
    try:
        results = await asyncio.gather(*[provider.list_calendars() for _ in range(10)])
    finally:
        await provider.aclose()
    assert all(len(r) == 1 for r in results)
    assert provider.api.rate_limited == 8
    assert sim.control.faults_served == 8
    assert sim.control.peak_concurrency[setup.user] <= 4
    assert sim.control.throttled == 0  # the provider's own cap kept it under Outlook's limit


async def test_long_retry_after_is_raised_for_the_job_to_reschedule(setup: Setup) -> None:
    setup.sim.control.faults.append(Fault(status=429, count=1, retry_after=120))
    provider = setup.provider()
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.list_calendars()
    finally:
        await provider.aclose()
    assert getattr(caught.value, "retry_after", None) == 120
