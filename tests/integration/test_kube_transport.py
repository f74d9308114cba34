"""The aiohttp transport under lightkube's httpx client, against real local HTTP servers.

What httpx's own transport would do, this one must do too: bodies and headers both ways, a
gzip body decoded, streamed lines, no redirect followed, and failures raised as the httpx
exceptions the rest of calsync catches."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from aiohttp import web
from lightkube.config.kubeconfig import KubeConfig

from calsync.controllers.kube_transport import AiohttpTransport, api_client, proxied

pytestmark = pytest.mark.integration


@pytest.fixture
async def server() -> AsyncIterator[str]:
    released = asyncio.Event()

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "body": body.decode(),
                "query": dict(request.query),
                "headers": {k.lower(): v for k, v in request.headers.items()},
            },
            status=201 if request.method == "POST" else 200,
            headers={"X-Answer": "yes"},
        )

    async def gzipped(_: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b'{"zipped": true}'),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async def lines(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(3):
            await response.write(f'{{"n": {i}}}\n'.encode())
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def stall(_: web.Request) -> web.Response:
        await released.wait()
        return web.Response(text="late")

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/echo")

    async def hang_up(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(1)
        return web.Response(text="never")

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/lines", lines)
    app.router.add_get("/stall", stall)
    app.router.add_get("/moved", moved)
    app.router.add_get("/hang-up", hang_up)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    released.set()
    await runner.cleanup()


def _client(base: str, **timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base,
        transport=AiohttpTransport(False),
        timeout=httpx.Timeout(5.0, **timeout),
    )


async def test_bodies_headers_and_status_go_both_ways(server: str) -> None:
    async with _client(server) as client:
        response = await client.patch(
            "/echo?x=1",
            content=json.dumps({"a": 1}),
            headers={"Content-Type": "application/merge-patch+json", "Authorization": "Bearer t"},
        )
        assert response.status_code == 200
        assert response.headers["x-answer"] == "yes"
        answer = response.json()
        assert answer["method"] == "PATCH"
        assert json.loads(answer["body"]) == {"a": 1}
        assert answer["query"] == {"x": "1"}
        assert answer["headers"]["content-type"] == "application/merge-patch+json"
        assert answer["headers"]["authorization"] == "Bearer t"
        assert answer["headers"]["content-length"] == str(len(json.dumps({"a": 1})))
        created = await client.post("/echo", json={"b": 2})
        assert created.status_code == 201
        assert created.reason_phrase == "Created"
        got = await client.get("/echo")
        assert got.json()["body"] == ""


async def test_a_gzip_body_is_decoded_by_httpx(server: str) -> None:
    async with _client(server) as client:
        response = await client.get("/gzip")
        assert response.json() == {"zipped": True}


async def test_a_streamed_body_arrives_line_by_line(server: str) -> None:
    async with _client(server) as client, client.stream("GET", "/lines") as response:
        got = [json.loads(line) async for line in response.aiter_lines() if line]
    assert got == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_redirects_are_left_to_httpx(server: str) -> None:
    async with _client(server) as client:
        response = await client.get("/moved")
        assert response.status_code == 302
        assert response.headers["location"] == "/echo"


async def test_a_silent_server_is_a_read_timeout(server: str) -> None:
    async with _client(server, read=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/stall")


async def test_a_closed_port_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with _client(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/")


async def test_a_hang_up_is_an_httpx_transport_error(server: str) -> None:
    async with _client(server) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/hang-up")
        # the client is still usable afterwards
        assert (await client.get("/echo")).status_code == 200


async def test_many_requests_at_once_share_a_bounded_pool() -> None:
    limit = 4
    in_flight = 0
    most = 0

    async def held(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)  # the server's work: long enough for requests to overlap
        in_flight -= 1
        return web.json_response({"i": int(request.query["i"])})

    app = web.Application()
    app.router.add_get("/held", held)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        transport = AiohttpTransport(False, limit=limit)
        async with httpx.AsyncClient(base_url=base, transport=transport) as client:
            answers = await asyncio.gather(*(client.get(f"/held?i={i}") for i in range(50)))
    finally:
        await runner.cleanup()
    assert sorted(a.json()["i"] for a in answers) == list(range(50))
    assert 2 <= most <= limit, "the pool runs requests side by side, never more than `limit`"


async def test_closing_the_client_closes_the_session(server: str) -> None:
    transport = AiohttpTransport(False)
    client = httpx.AsyncClient(base_url=server, transport=transport)
    await client.get("/echo")
    session = transport._session
    assert isinstance(session, aiohttp.ClientSession) and not session.closed
    await client.aclose()
    assert session.closed


def test_a_proxy_from_the_environment_keeps_httpx_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert not proxied("https://10.0.0.1:6443")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert proxied("https://10.0.0.1:6443")
    monkeypatch.setenv("NO_PROXY", "10.0.0.1")
    assert not proxied("https://10.0.0.1:6443")


def _config(server: str) -> KubeConfig:
    return KubeConfig.from_dict(
        {
            "clusters": [
                {"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
            ],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )


def test_api_client_uses_aiohttp_unless_a_proxy_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    direct = api_client(_config("https://10.0.0.1:6443"))
    assert isinstance(direct._client._client._transport, AiohttpTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    through_proxy = api_client(_config("https://10.0.0.1:6443"))
    assert not isinstance(through_proxy._client._client._transport, AiohttpTransport)


async def test_a_bearer_token_from_the_kubeconfig_reaches_the_server(server: str) -> None:
    client = api_client(_config(server))
    try:
        response = await client._client._client.get(f"{server}/echo")
        assert response.json()["headers"]["authorization"] == "Bearer t"
    finally:
        await client.close()
