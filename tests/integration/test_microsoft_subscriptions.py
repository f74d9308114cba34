"""MicrosoftProvider's change-notification subscriptions against the Graph simulator.

The simulator performs Graph's validation handshake against the notification URLs, so each
test runs small aiohttp webhook receivers: one that echoes `validationToken` as Graph wants,
one that answers it wrongly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from calsync.providers.base import CalendarGone, InvalidConfiguration, ProviderError
from calsync.providers.microsoft import (
    GraphSubscription,
    MicrosoftProvider,
    SubscriptionGone,
    calendar_resource,
)
from calsync.providers.oauth import StaticTokens
from calsync.testing.microsoft import GraphSimulator, RunningSimulator, running
from calsync.testing.microsoft.throttle import Fault
from tests.support import until

pytestmark = pytest.mark.integration

SCOPES = "offline_access https://graph.microsoft.com/Calendars.Read"
STATE = "a-secret-of-ours"


@dataclass
class Receiver:
    """A webhook endpoint: answers the validation handshake (rightly or not), records posts."""

    url: str = ""
    wrong: bool = False
    validations: list[str] = field(default_factory=list)
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:
            self.validations.append(token)
            if self.wrong:
                return web.Response(text=token[::-1], content_type="text/plain")
            return web.Response(text=token, content_type="text/plain")
        self.posts.append((request.path, await request.json()))
        return web.Response(status=202)

    def items(self, path: str = "/notify") -> list[dict[str, Any]]:
        return [item for where, body in self.posts if where == path for item in body["value"]]


@dataclass
class Setup:
    running: RunningSimulator
    user: str
    access_token: str
    receiver: Callable[..., Awaitable[Receiver]]
    providers: list[MicrosoftProvider] = field(default_factory=list)

    @property
    def sim(self) -> GraphSimulator:
        return self.running.sim

    def provider(self) -> MicrosoftProvider:
        provider = MicrosoftProvider(self.running.url, StaticTokens(self.access_token), timeout=15)
        self.providers.append(provider)
        return provider

    def later(self, **delta: float) -> dt.datetime:
        return self.sim.clock.now() + dt.timedelta(**delta)


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    runners: list[web.AppRunner] = []

    async def receiver(*, wrong: bool = False) -> Receiver:
        found = Receiver(wrong=wrong)
        app = web.Application()
        app.router.add_post("/{tail:.*}", found.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return found

    async with running() as served:
        sim = served.sim
        alice = sim.add_user("alice@example.com", "Alice")
        sim.identity.add_client("calsync", "s3cret", ["http://127.0.0.1:9/cb"])
        token = sim.identity.issue(alice.id, "calsync", SCOPES)["access_token"]
        state = Setup(served, alice.id, token, receiver)
        try:
            yield state
        finally:
            for provider in state.providers:
                await provider.aclose()
            await sim.notifier.aclose()
            for runner in runners:
                await runner.cleanup()


async def subscribe(
    provider: MicrosoftProvider,
    receiver: Receiver,
    expiration: dt.datetime,
    *,
    resource: str = "/me/events",
    client_state: str = STATE,
) -> GraphSubscription:
    return await provider.subscribe(
        resource=resource,
        notification_url=receiver.url + "/notify",
        lifecycle_notification_url=receiver.url + "/lifecycle",
        client_state=client_state,
        expiration=expiration,
    )


def event_body(now: dt.datetime, subject: str) -> dict[str, Any]:
    start = (now + dt.timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    end = start + dt.timedelta(hours=1)
    return {
        "subject": subject,
        "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
        "end": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
    }


async def test_create_returns_what_graph_granted(setup: Setup) -> None:
    receiver = await setup.receiver()
    provider = setup.provider()
    # Asked for 30 days; Graph caps event subscriptions at 10,080 minutes.
    created = await subscribe(provider, receiver, setup.later(days=30))
    stored = setup.sim.notifier.subscriptions[created.id]
    assert created.expiration == stored.expiration
    assert created.expiration <= setup.later(minutes=10_080)
    assert created.expiration.tzinfo is not None
    assert created.expiration.utcoffset() == dt.timedelta(0)
    assert created.resource == "/me/events"
    assert created.client_state == STATE
    assert created.notification_url == receiver.url + "/notify"
    assert created.lifecycle_notification_url == receiver.url + "/lifecycle"
    assert stored.change_types == ("created", "updated", "deleted")
    assert len(receiver.validations) == 2  # both URLs were proven


async def test_a_failed_validation_is_a_clear_non_retryable_error(setup: Setup) -> None:
    bad = await setup.receiver(wrong=True)
    provider = setup.provider()
    with pytest.raises(ProviderError) as caught:
        await subscribe(provider, bad, setup.later(days=2))
    error = caught.value
    assert type(error) is ProviderError
    assert not error.retryable
    assert "refused the subscription" in str(error)
    assert "validation" in str(error).lower()
    assert bad.validations  # the handshake did happen
    assert provider.api.requests == 1  # and was not repeated
    assert setup.sim.notifier.subscriptions == {}


async def test_renew_extends_and_an_unknown_id_is_gone(setup: Setup) -> None:
    receiver = await setup.receiver()
    provider = setup.provider()
    created = await subscribe(provider, receiver, setup.later(days=1))
    renewed = await provider.renew_subscription(created.id, setup.later(days=3))
    assert renewed.id == created.id
    assert renewed.expiration > created.expiration
    assert renewed.expiration == setup.sim.notifier.subscriptions[created.id].expiration
    assert abs(renewed.expiration - setup.later(days=3)) < dt.timedelta(seconds=5)
    with pytest.raises(SubscriptionGone) as caught:
        await provider.renew_subscription("no-such-subscription", setup.later(days=3))
    assert not caught.value.retryable


async def test_an_expired_subscription_is_gone(setup: Setup) -> None:
    receiver = await setup.receiver()
    provider = setup.provider()
    created = await subscribe(provider, receiver, setup.later(hours=1))
    setup.sim.clock.advance(2 * 3600)
    provider = MicrosoftProvider(
        setup.running.url,
        StaticTokens(setup.sim.identity.issue(setup.user, "calsync", SCOPES)["access_token"]),
    )
    setup.providers.append(provider)
    with pytest.raises(SubscriptionGone):
        await provider.renew_subscription(created.id, setup.later(days=1))


async def test_delete_then_delete_again(setup: Setup) -> None:
    receiver = await setup.receiver()
    provider = setup.provider()
    created = await subscribe(provider, receiver, setup.later(days=2))
    assert await provider.delete_subscription(created.id) is True
    assert created.id not in setup.sim.notifier.subscriptions
    assert await provider.delete_subscription(created.id) is False


async def test_reauthorize(setup: Setup) -> None:
    receiver = await setup.receiver()
    provider = setup.provider()
    created = await subscribe(provider, receiver, setup.later(days=2))
    await provider.reauthorize_subscription(created.id)
    with pytest.raises(SubscriptionGone):
        await provider.reauthorize_subscription("no-such-subscription")


async def test_bad_input_is_refused_before_any_request(setup: Setup) -> None:
    receiver = await setup.receiver()
    provider = setup.provider()
    with pytest.raises(InvalidConfiguration, match="128"):
        await subscribe(provider, receiver, setup.later(days=2), client_state="x" * 129)
    with pytest.raises(ValueError, match="aware"):
        await subscribe(provider, receiver, setup.later(days=2).replace(tzinfo=None))
    assert provider.api.requests == 0
    assert receiver.validations == []
    # 128 characters is still fine.
    created = await subscribe(provider, receiver, setup.later(days=2), client_state="y" * 128)
    assert created.client_state == "y" * 128


async def test_notifications_reach_the_endpoint(setup: Setup) -> None:
    receiver = await setup.receiver()
    provider = setup.provider()
    created = await subscribe(provider, receiver, setup.later(days=2))
    sim = setup.sim
    made = sim.create_event(setup.user, None, event_body(sim.clock.now(), "hello"))
    await until(lambda: receiver.items(), what="a change notification")
    item = receiver.items()[0]
    assert item["subscriptionId"] == created.id
    assert item["clientState"] == STATE
    assert item["changeType"] == "created"
    assert item["resourceData"]["id"] == made.id


async def test_one_calendar_resource(setup: Setup) -> None:
    sim = setup.sim
    other = sim.add_calendar(setup.user, "Work")
    receiver = await setup.receiver()
    provider = setup.provider()
    calendars = {c.name: c for c in await provider.list_calendars()}
    resource = calendar_resource(calendars["Work"].id)
    assert resource == f"/me/calendars/{other.id}/events"
    created = await subscribe(provider, receiver, setup.later(days=2), resource=resource)
    assert created.resource == resource
    sim.create_event(setup.user, None, event_body(sim.clock.now(), "elsewhere"))
    made = sim.create_event(setup.user, other.id, event_body(sim.clock.now(), "at work"))
    await until(lambda: receiver.items(), what="a change notification")
    await sim.notifier.idle()
    assert [i["resourceData"]["id"] for i in receiver.items()] == [made.id]
    with pytest.raises(CalendarGone):
        await subscribe(provider, receiver, setup.later(days=2), resource=calendar_resource("x"))


async def test_throttled_create_waits_for_retry_after(setup: Setup) -> None:
    receiver = await setup.receiver()
    provider = setup.provider()
    setup.sim.control.faults.append(
        Fault(status=429, method="POST", path="/v1.0/subscriptions", count=2, retry_after=0.05)
    )
    created = await subscribe(provider, receiver, setup.later(days=2))
    assert created.id in setup.sim.notifier.subscriptions
    assert provider.api.rate_limited == 2 and provider.api.requests == 3
