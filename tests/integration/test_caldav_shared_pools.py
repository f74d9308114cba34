"""CalDAV providers sharing connection pools (`DavTransports`) against a real Radicale.

Radicale answers each request on a fresh connection (its server closes after every response),
so a small keep-alive aiohttp front forwards to it and records which TCP connection (the
client's address and port) carried each request and whose credentials it carried. Radicale
itself still checks every password and answers every DAV request.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web

from calsync.providers.base import AuthenticationFailed, ProviderError
from calsync.providers.caldav import CalDAVProvider, DavTransports
from calsync.testing.radicale import RadicaleServer
from tests.fixtures.radicale import USERS, CalDAVCalendar
from tests.support import free_port

pytestmark = pytest.mark.integration

FORWARDED_REQUEST = ("Authorization", "Depth", "Content-Type", "If-Match", "If-None-Match")
FORWARDED_REPLY = ("Content-Type", "Location", "WWW-Authenticate", "ETag")


@dataclass
class Front:
    url: str
    seen: list[tuple[Any, str | None]] = field(default_factory=list)  # (peer, user)
    hold_until: int = 0  # answer nothing until this many requests are in flight at once
    in_flight: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def peers(self) -> set[Any]:
        return {peer for peer, _ in self.seen}


def _user(header: str) -> str | None:
    if not header.startswith("Basic "):
        return None
    return base64.b64decode(header[6:]).decode().split(":", 1)[0]


@asynccontextmanager
async def keepalive_front(radicale: RadicaleServer, hold_until: int = 0) -> AsyncIterator[Front]:
    """An HTTP/1.1 keep-alive proxy in front of Radicale that records every request."""
    port = free_port()
    front = Front(f"http://127.0.0.1:{port}/", hold_until=hold_until)
    upstream = httpx.AsyncClient(timeout=30.0)

    async def forward(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        front.seen.append(
            (
                request.transport.get_extra_info("peername"),
                _user(request.headers.get("Authorization", "")),
            )
        )
        front.in_flight += 1
        if front.in_flight >= front.hold_until:
            front.released.set()
        await front.released.wait()
        front.in_flight -= 1
        answer = await upstream.request(
            request.method,
            radicale.url.rstrip("/") + request.path_qs,
            content=await request.read(),
            headers={k: v for k, v in request.headers.items() if k in FORWARDED_REQUEST},
        )
        headers = {k: answer.headers[k] for k in FORWARDED_REPLY if k in answer.headers}
        if "Location" in headers:
            headers["Location"] = headers["Location"].replace(radicale.url, front.url)
        return web.Response(status=answer.status_code, body=answer.content, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield front
    finally:
        await runner.cleanup()
        await upstream.aclose()


def make_provider(
    url: str,
    transports: DavTransports | None,
    user: str = "alice",
    password: str | None = None,
) -> CalDAVProvider:
    return CalDAVProvider(
        url,
        user,
        USERS[user] if password is None else password,
        allow_insecure_http=True,
        allow_private_addresses=True,
        transports=transports,
    )


def plain_pool_connections(transports: DavTransports) -> list[Any]:
    """The connections of the shared plain-http pool that unguarded sessions use."""
    pool = transports._pools[(False, False)]
    assert isinstance(pool, httpx.AsyncHTTPTransport)
    return list(pool._pool.connections)


async def ids(provider: CalDAVProvider) -> set[str]:
    return {c.id for c in await provider.list_calendars()}


async def test_sessions_sharing_transports_reuse_one_connection(
    caldav_calendar: CalDAVCalendar, radicale: RadicaleServer
) -> None:
    async with keepalive_front(radicale) as front:
        # Without sharing, every provider opens its own connection.
        for _ in range(2):
            async with make_provider(front.url + "alice/", None) as provider:
                assert caldav_calendar.path in await ids(provider)
        assert len(front.peers) == 2

        front.seen.clear()
        async with DavTransports() as shared:
            for _ in range(3):
                async with make_provider(front.url + "alice/", shared) as provider:
                    assert caldav_calendar.path in await ids(provider)
        assert len(front.seen) >= 3
        assert len(front.peers) == 1


async def test_closing_a_session_leaves_the_shared_pool_open(
    caldav_calendar: CalDAVCalendar, radicale: RadicaleServer
) -> None:
    async with keepalive_front(radicale) as front:
        shared = DavTransports()
        first = make_provider(caldav_calendar.url.replace(radicale.url, front.url), shared)
        second = make_provider(caldav_calendar.url.replace(radicale.url, front.url), shared)
        await ids(first)
        (connection,) = plain_pool_connections(shared)
        await first.aclose()
        assert not shared.closed
        assert plain_pool_connections(shared) == [connection]
        assert connection.is_idle() and not connection.is_closed()

        assert await ids(second) == {caldav_calendar.path}
        assert plain_pool_connections(shared) == [connection]
        assert len(front.peers) == 1
        await second.aclose()

        await shared.aclose()
        assert connection.is_closed()
        assert shared._pools == {}
        # A run that outlives the pools fails like a network error, to be retried later.
        async with make_provider(front.url, shared) as late:
            with pytest.raises(ProviderError, match="pools are closed") as info:
                await late.list_calendars()
        assert info.value.retryable
        await shared.aclose()  # idempotent


async def test_each_account_authenticates_with_its_own_credentials_on_shared_pools(
    caldav_calendar: CalDAVCalendar, radicale: RadicaleServer
) -> None:
    slug = f"cal-{uuid.uuid4().hex[:12]}"
    bob_url = radicale.create_calendar("bob", USERS["bob"], slug, "Bob's")
    bob_path = f"/bob/{slug}/"
    try:
        async with DavTransports() as shared, keepalive_front(radicale) as front:
            for base in (radicale.url, front.url):  # Radicale directly, then over one connection
                alice = make_provider(base + "alice/", shared)
                bob = make_provider(base + "bob/", shared, user="bob")
                intruder = make_provider(base + "bob/", shared, user="bob", password="guess")
                async with alice, bob, intruder:
                    # Interleaved on the same pool: each request carries its own session's
                    # credentials, never the previous request's.
                    assert caldav_calendar.path in await ids(alice)
                    with pytest.raises(AuthenticationFailed):
                        await intruder.list_calendars()
                    bob_ids = await ids(bob)
                    assert bob_path in bob_ids
                    assert not any(i.startswith("/alice/") for i in bob_ids)
                    assert caldav_calendar.path in await ids(alice)
                    with pytest.raises(AuthenticationFailed):
                        await intruder.list_calendars()
            assert len(front.peers) == 1
            users = [user for _, user in front.seen]
            assert {"alice", "bob"} <= set(users)
            assert users.index("bob") > users.index("alice")
    finally:
        async with httpx.AsyncClient(auth=("bob", USERS["bob"]), timeout=30.0) as client:
            await client.delete(bob_url)


async def test_concurrent_runs_are_not_capped_by_the_shared_pool(
    caldav_calendar: CalDAVCalendar, radicale: RadicaleServer
) -> None:
    runs = 12  # more than a private pool's 8 connections
    async with (
        DavTransports() as shared,
        keepalive_front(radicale, hold_until=runs) as front,
    ):

        async def run() -> set[str]:
            async with make_provider(front.url + "alice/", shared) as provider:
                return await ids(provider)

        # The front answers only once all runs have a request in flight: a capped pool would
        # keep some of them waiting for a connection forever.
        results = await asyncio.wait_for(asyncio.gather(*(run() for _ in range(runs))), 60)
        assert all(caldav_calendar.path in found for found in results)
        assert len(plain_pool_connections(shared)) == runs
        assert len(front.peers) == runs
