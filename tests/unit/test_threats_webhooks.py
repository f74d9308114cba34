"""Threats to the webhook routes that docs/security.md names and no other test covered: a valid
notification replayed past its channel's limit, one replayed after its key was retired or its
channel replaced, a Graph batch past the item cap, a flood's log lines kept to a budget, and a
Graph batch of many bad items written as one log line.
The caches are filled by hand, as in test_webhook_routes (no cluster, nothing recorded)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer

from calsync.observability.logging import JsonFormatter
from calsync.security.keyring import KeyRing
from calsync.security.push_tokens import channel_token, client_state
from calsync.settings import Settings
from calsync.webhook_gateway.app import GatewayContext, create_app
from calsync.webhook_gateway.limits import KeyedLimiter
from calsync.webhook_gateway.push import PushGateway
from calsync.webhook_gateway.webhooks import MAX_BODY, MAX_ITEMS

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
OLD = KeyRing.generate(NOW)
# Rotated, then the old key retired: what a ring looks like after `calsync keys retire`.
RING = OLD.with_new_primary(NOW + dt.timedelta(days=90)).without(OLD.primary.id)

Gateway = tuple[TestClient[Any, Any], PushGateway]


class StubVault:
    keyring = RING

    async def reload(self) -> None:
        pass


def subscription(name: str, provider: str, channel: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": {"connection": name, "calendarId": "primary", "provider": provider},
        "status": {"channelId": channel},
    }


async def start(settings: Settings) -> AsyncIterator[Gateway]:
    ctx = GatewayContext(
        settings=settings,
        client=cast(Any, object()),  # never called: nothing here records
        vault=cast(Any, StubVault()),
        ready=True,
        watch=False,
    )
    app = create_app(ctx)
    push = ctx.push
    assert push is not None
    for name, provider, channel in (
        ("g", "google", "ch-1"),
        ("h", "google", "ch-2"),
        ("m", "microsoft", "sub-1"),
    ):
        push.subscriptions.put(subscription(name, provider, channel))
    push.subscriptions.ready.set()
    push.jobs.ready.set()
    async with TestClient(TestServer(app)) as http:
        yield http, push


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    # A generous address budget, so that only the limit under test can answer 429.
    async for pair in start(Settings(webhook_rate_limit=3, webhook_address_rate_limit=1000)):
        yield pair


def sync_message(channel: str, token: str) -> dict[str, str]:
    # Google's `sync` message: verified and counted like any notification, but it records no
    # SyncJob, so the routes can be driven without a cluster.
    return {
        "X-Goog-Channel-ID": channel,
        "X-Goog-Channel-Token": token,
        "X-Goog-Resource-State": "sync",
    }


async def test_a_valid_notification_replayed_past_its_channel_limit_is_answered_429(
    gateway: Gateway,
) -> None:
    http, push = gateway
    replayed = sync_message("ch-1", channel_token(RING, "ch-1"))
    statuses = [
        (await http.post("/api/webhooks/google", headers=replayed)).status for _ in range(6)
    ]
    assert statuses == [200, 200, 200, 429, 429, 429]  # webhook_rate_limit=3 per hour
    assert push.writer.pending(("ns", "g")) == 3  # only the allowed ones were counted
    assert push.results[("google", "rate_limited")] == 3
    # The limit is per channel: another channel of the same gateway is not held back.
    other = sync_message("ch-2", channel_token(RING, "ch-2"))
    assert (await http.post("/api/webhooks/google", headers=other)).status == 200


async def test_a_notification_replayed_after_its_key_was_retired_is_forged(
    gateway: Gateway,
) -> None:
    http, push = gateway
    captured = sync_message("ch-1", channel_token(OLD, "ch-1"))  # minted before the rotation
    answer = await http.post("/api/webhooks/google", headers=captured)
    assert answer.status == 401
    state = client_state(OLD, "uid-m")
    graph = await http.post(
        "/api/webhooks/microsoft",
        json={"value": [{"subscriptionId": "sub-1", "clientState": state}]},
    )
    assert graph.status == 401
    assert push.writer.pending(("ns", "g")) == 0 and push.writer.pending(("ns", "m")) == 0
    assert push.results[("google", "forged")] == 1
    assert push.results[("microsoft", "forged")] == 1


async def test_a_notification_replayed_after_its_channel_was_replaced_is_unknown(
    gateway: Gateway,
) -> None:
    http, push = gateway
    captured = sync_message("ch-1", channel_token(RING, "ch-1"))
    assert (await http.post("/api/webhooks/google", headers=captured)).status == 200
    renewed = subscription("g", "google", "ch-9")
    renewed["metadata"]["resourceVersion"] = "2"
    push.subscriptions.put(renewed)  # the channel was renewed; ch-1 is no longer listed
    change = {**captured, "X-Goog-Resource-State": "exists"}
    assert (await http.post("/api/webhooks/google", headers=change)).status == 403
    # A replayed `sync` message is acknowledged like the first message of a channel not yet
    # cached (EarlySync), and does nothing: no count, no work.
    assert (await http.post("/api/webhooks/google", headers=captured)).status == 200
    assert push.writer.pending(("ns", "g")) == 1
    assert push.results[("google", "unknown")] == 1


async def test_a_graph_batch_over_the_item_cap_is_refused_whole_before_any_item_is_checked(
    gateway: Gateway,
) -> None:
    http, push = gateway
    body = {"value": [0] * (MAX_ITEMS + 1)}  # small items: the count, not the size, is at stake
    assert len(str(body)) < MAX_BODY
    answer = await http.post("/api/webhooks/microsoft", json=body)
    assert answer.status == 400
    # One refusal for the call; item by item, each of the 1001 would have been one.
    assert push.results[("microsoft", "malformed")] == 1
    assert push.writer.pending(("ns", "m")) == 0


async def test_a_flood_cut_off_by_the_address_limit_writes_a_bounded_number_of_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async for http, push in start(Settings(webhook_address_rate_limit=1)):
        # A log budget that does not refill while the test runs: 3 lines, then silence.
        push.flood_log = KeyedLimiter(3, 1e-9, max_keys=1)
        caplog.set_level(logging.WARNING, logger="calsync.security.webhooks")
        forged = {
            **sync_message("ch-1", channel_token(RING, "other")),
            "X-Goog-Resource-State": "exists",
        }
        statuses = [
            (await http.post("/api/webhooks/google", headers=forged)).status for _ in range(40)
        ]
        assert statuses[:2] == [401, 401]  # the address's burst: twice its 1/s limit
        flooded = statuses.count(429)
        assert flooded >= 30
        lines = [r for r in caplog.records if getattr(r, "result", None) == "rate_limited"]
        assert len(lines) == 3
        assert push.flood_log_suppressed == flooded - 3
        assert push.results[("google", "rate_limited")] == flooded  # every call still counted


async def test_a_graph_batch_of_rejected_items_writes_one_security_line_per_call(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    http, push = gateway
    caplog.set_level(logging.WARNING, logger="calsync.security.webhooks")
    forged = [{"subscriptionId": "sub-1", "clientState": "k.bad"}] * 990
    unknown = [{"subscriptionId": f"nobody-{i:04d}", "clientState": "k.bad"} for i in range(9)]
    body = {"value": [*forged, *unknown, 0]}  # and one malformed item
    assert len(str(body)) < MAX_BODY
    answer = await http.post("/api/webhooks/microsoft", json=body)
    assert answer.status == 401  # forged before unknown before malformed
    lines = [r for r in caplog.records if r.name == "calsync.security.webhooks"]
    assert len(lines) == 1, f"{len(lines)} security lines for one call"
    line = json.loads(JsonFormatter().format(lines[0]))
    assert line["security"] == "webhook_rejected"
    assert (line["provider"], line["result"], line["status"]) == ("microsoft", "forged", 401)
    assert line["rejected"] == 1000 and line["items"] == 1000
    assert line["results"] == "forged:990,unknown:9,malformed:1"
    # A sample of the subscription ids, each cut to its prefix, not all of them.
    assert line["channel"] == "sub-1"
    assert line["channels"] == "sub-1,nobody-0000,nobody-0001"
    assert "k.bad" not in json.dumps(line)  # never the clientState
    # The metric still counts every item, as docs/operations.md says.
    assert push.results[("microsoft", "forged")] == 990
    assert push.results[("microsoft", "unknown")] == 9
    assert push.results[("microsoft", "malformed")] == 1
    assert push.writer.pending(("ns", "m")) == 0
