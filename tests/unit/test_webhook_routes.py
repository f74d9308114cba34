"""The webhook routes over HTTP, with caches filled by hand (no cluster): answers, body cap,
address limit, security headers, health JSON. Recording itself is covered by the e2e tests."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer

from calsync.observability.logging import JsonFormatter
from calsync.security.keyring import KeyRing
from calsync.security.push_tokens import channel_token, client_state
from calsync.settings import Settings
from calsync.webhook_gateway.app import GatewayContext, create_app
from calsync.webhook_gateway.headers import SECURITY_HEADERS
from calsync.webhook_gateway.push import PushGateway
from calsync.webhook_gateway.webhooks import MAX_BODY

pytestmark = pytest.mark.unit

RING = KeyRing.generate(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


class StubVault:
    keyring = RING

    async def reload(self) -> None:
        pass


def subscription(name: str, provider: str, channel: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": {"connection": "alice", "calendarId": "primary", "provider": provider},
        "status": {"channelId": channel},
    }


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[TestClient[Any, Any], PushGateway]]:
    settings = Settings(queue_cap=3, webhook_address_rate_limit=5)
    client: Any = object()  # never called: nothing here records
    ctx = GatewayContext(
        settings=settings, client=client, vault=cast(Any, StubVault()), ready=True, watch=False
    )
    app = create_app(ctx)
    push = ctx.push
    assert push is not None
    for name, provider, channel in (("g", "google", "ch-1"), ("m", "microsoft", "sub-1")):
        push.subscriptions.put(subscription(name, provider, channel))
    push.subscriptions.ready.set()  # as if listed: nothing watches here
    push.jobs.ready.set()
    async with TestClient(TestServer(app)) as http:
        yield http, push


def google(channel: str, token: str | None, state: str = "exists") -> dict[str, str]:
    headers = {"X-Goog-Channel-ID": channel, "X-Goog-Resource-State": state}
    if token is not None:
        headers["X-Goog-Channel-Token"] = token
    return headers


def assert_secure(headers: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name


async def test_every_answer_carries_the_security_headers(
    gateway: tuple[TestClient[Any, Any], PushGateway],
) -> None:
    http, _ = gateway
    for method, path in (("GET", "/healthz"), ("GET", "/nowhere"), ("GET", "/api/health")):
        answer = await http.request(method, path)
        assert_secure(answer.headers)
    answer = await http.post("/api/webhooks/google", headers=google("nope", "x.y"))
    assert answer.status == 403
    assert_secure(answer.headers)
    answer = await http.get("/auth/google/start?c=garbage")
    assert answer.status == 400
    assert answer.headers["Referrer-Policy"] == "no-referrer"  # stricter, kept
    assert answer.headers["X-Frame-Options"] == "DENY"


async def test_google_answers(gateway: tuple[TestClient[Any, Any], PushGateway]) -> None:
    http, push = gateway
    token = channel_token(RING, "ch-1")
    cases = [
        (google("ch-1", None), 400),
        ({}, 400),
        (google("other", channel_token(RING, "other")), 403),
        (google("sub-1", channel_token(RING, "sub-1")), 403),  # a Graph id is no channel
        (google("ch-1", channel_token(RING, "ch-2")), 401),
    ]
    for headers, status in cases:
        assert (await http.post("/api/webhooks/google", headers=headers)).status == status
    assert push.writer.pending(("ns", "g")) == 0
    sync = await http.post("/api/webhooks/google", headers=google("ch-1", token, "sync"))
    assert sync.status == 200
    assert push.writer.pending(("ns", "g")) == 1
    assert push.results[("google", "sync_message")] == 1
    assert push.results[("google", "forged")] == 1
    assert push.results[("google", "unknown")] == 2
    assert push.results[("google", "malformed")] == 2


async def test_at_the_queue_cap_notifications_are_answered_503_with_retry_after(
    gateway: tuple[TestClient[Any, Any], PushGateway],
) -> None:
    http, push = gateway
    for i in range(3):
        push.jobs.put(
            {
                "metadata": {"namespace": "ns", "name": f"j{i}", "resourceVersion": "1"},
                "spec": {"connection": "x", "reason": "poll"},
            }
        )
    answer = await http.post(
        "/api/webhooks/google", headers=google("ch-1", channel_token(RING, "ch-1"))
    )
    assert answer.status == 503
    assert answer.headers["Retry-After"].isdigit()
    sync = await http.get("/api/health/sync")
    assert sync.status == 503
    assert (await sync.json())["pendingSyncJobs"] == 3


async def test_bodies_over_64_kib_are_refused_without_reading_them(
    gateway: tuple[TestClient[Any, Any], PushGateway],
) -> None:
    http, _ = gateway
    big = b"x" * (MAX_BODY + 1)
    assert (await http.post("/api/webhooks/microsoft", data=big)).status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap still holds
        for _ in range(100):
            yield b"y" * 4096

    answer = await http.post("/api/webhooks/google", data=chunks())
    assert answer.status == 413
    exactly = await http.post("/api/webhooks/microsoft", data=b"z" * MAX_BODY)
    assert exactly.status == 400  # read and found malformed: not too large


async def test_graph_validation_handshake_on_both_urls(
    gateway: tuple[TestClient[Any, Any], PushGateway],
) -> None:
    http, _ = gateway
    for path in ("/api/webhooks/microsoft", "/api/webhooks/microsoft/lifecycle"):
        answer = await http.post(f"{path}?validationToken=Validation%3A%20Testing%20%26%20more")
        assert answer.status == 200
        assert answer.content_type == "text/plain"
        assert await answer.text() == "Validation: Testing & more"


async def test_graph_rejections(gateway: tuple[TestClient[Any, Any], PushGateway]) -> None:
    http, push = gateway
    good_state = client_state(RING, "uid-m")
    cases = [
        ({"value": []}, 400),
        ({"value": [{"subscriptionId": "nope", "clientState": good_state}]}, 403),
        ({"value": [{"subscriptionId": "sub-1", "clientState": client_state(RING, "x")}]}, 401),
        (
            {
                "value": [
                    {"subscriptionId": "sub-1", "clientState": "bad"},
                    {"subscriptionId": "nope", "clientState": good_state},
                ]
            },
            401,
        ),
    ]
    for body, status in cases:
        answer = await http.post("/api/webhooks/microsoft", json=body)
        assert answer.status == status, body
    assert push.writer.pending(("ns", "m")) == 0


async def test_an_address_over_its_rejected_calls_is_refused_before_any_check(
    gateway: tuple[TestClient[Any, Any], PushGateway],
) -> None:
    http, push = gateway
    statuses = [
        (await http.post("/api/webhooks/google", headers=google("ch-1", "forged.x"))).status
        for _ in range(15)
    ]
    assert statuses[:10] == [401] * 10  # capacity: twice the 5/s limit
    assert 429 in statuses[10:]
    # Even a valid call from that address waits for the bucket to refill.
    valid = google("ch-1", channel_token(RING, "ch-1"), "sync")
    assert (await http.post("/api/webhooks/google", headers=valid)).status == 429
    assert push.results[("google", "rate_limited")] >= 1


async def test_health_json(gateway: tuple[TestClient[Any, Any], PushGateway]) -> None:
    http, push = gateway
    database = await http.get("/api/health/database")
    assert database.status == 200
    body = await database.json()
    assert body["status"] == "ok" and body["detail"] == "not used by the gateway"
    providers = await (await http.get("/api/health/providers")).json()
    assert providers["keyringLoaded"] is True
    assert providers["endpoints"]["google"] == "https://www.googleapis.com"
    # Before the caches have synced, webhooks and readiness fail.
    push.subscriptions.ready.clear()
    push.jobs.ready.clear()
    assert (await http.get("/api/health/webhooks")).status == 503
    assert (await http.get("/readyz")).status == 503
    assert (await http.get("/api/health")).status == 503
    push.subscriptions.ready.set()
    push.jobs.ready.set()
    webhooks = await http.get("/api/health/webhooks")
    assert webhooks.status == 200
    body = await webhooks.json()
    assert body["subscriptionsByProvider"] == {"google": 1, "microsoft": 1}
    assert body["status"] == "ok" and "checked" in body
    assert (await http.get("/readyz")).status == 200
    overall = await (await http.get("/api/health")).json()
    assert overall["status"] == "ok"
    assert set(overall["checks"]) == {"database", "providers", "webhooks", "sync"}


async def test_before_the_caches_have_synced_notifications_get_503_not_403(
    gateway: tuple[TestClient[Any, Any], PushGateway],
) -> None:
    # A known channel would look unknown, and providers drop a 4xx instead of retrying it.
    http, push = gateway
    push.subscriptions.ready.clear()
    answer = await http.post(
        "/api/webhooks/google", headers=google("ch-1", channel_token(RING, "ch-1"))
    )
    assert answer.status == 503 and answer.headers["Retry-After"]
    graph = await http.post(
        "/api/webhooks/microsoft", json={"value": [{"subscriptionId": "sub-1"}]}
    )
    assert graph.status == 503
    # The handshake needs no cache.
    handshake = await http.post("/api/webhooks/microsoft?validationToken=abc")
    assert handshake.status == 200 and await handshake.text() == "abc"
    assert push.results[("google", "unknown")] == 0


async def test_every_answer_carries_a_request_id_and_its_log_lines_too(
    gateway: tuple[TestClient[Any, Any], PushGateway], caplog: pytest.LogCaptureFixture
) -> None:
    http, _ = gateway
    given = await http.get("/healthz", headers={"X-Request-Id": "ingress-42"})
    assert given.headers["X-Request-Id"] == "ingress-42"
    hostile = await http.get("/healthz", headers={"X-Request-Id": "a b\u00e9" + "x" * 100})
    assert hostile.headers["X-Request-Id"] != "a b\u00e9" + "x" * 100
    assert len(hostile.headers["X-Request-Id"]) == 32
    again = await http.get("/healthz")
    assert again.headers["X-Request-Id"] not in (hostile.headers["X-Request-Id"], "ingress-42")
    caplog.set_level("INFO")
    forged = await http.post(
        "/api/webhooks/google",
        headers={**google("ch-1", channel_token(RING, "ch-2")), "X-Request-Id": "r-7"},
    )
    assert forged.status == 401
    assert forged.headers["X-Request-Id"] == "r-7"
    assert_secure(forged.headers)
    lines = [JsonFormatter().format(r) for r in caplog.records if "rejected" in r.getMessage()]
    assert lines, "the forged call was not logged"
    assert all(json.loads(line)["request_id"] == "r-7" for line in lines)


async def test_a_body_nested_past_the_parsers_stack_is_a_400_not_a_500(
    gateway: tuple[TestClient[Any, Any], PushGateway],
) -> None:
    http, push = gateway
    depth = 30_000  # about 60 KiB: inside the 64 KiB cap
    body = b'{"value": ' + b"[" * depth + b"]" * depth + b"}"
    assert len(body) < MAX_BODY
    for path in ("/api/webhooks/microsoft", "/api/webhooks/microsoft/lifecycle"):
        answer = await http.post(path, data=body, headers={"Content-Type": "application/json"})
        assert answer.status == 400, path
    assert push.results[("microsoft", "malformed")] == 2
