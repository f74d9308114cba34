"""The Graph simulator exhibits what PROTOCOLS.md says of Microsoft Graph, over a real socket.

Each test runs the simulator in the test's event loop (`running()` on a free port) and talks to
it with a plain httpx client, the way any Graph client would; change notifications go to a real
aiohttp receiver on another port.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiohttp import web

from calsync.testing.microsoft import GraphSimulator, RunningSimulator, running
from calsync.testing.microsoft.throttle import Fault, Sustained
from tests.support import until

pytestmark = pytest.mark.integration

WINDOW = "startDateTime=2025-01-01T00:00:00Z&endDateTime=2025-12-31T00:00:00Z"
REDIRECT = "http://127.0.0.1:9/callback"


def event(subject: str, start: str, end: str, zone: str = "UTC", **extra: Any) -> dict[str, Any]:
    return {
        "subject": subject,
        "start": {"dateTime": start, "timeZone": zone},
        "end": {"dateTime": end, "timeZone": zone},
        **extra,
    }


def weekly(subject: str, start: str, count: int = 5, zone: str = "UTC") -> dict[str, Any]:
    begin = dt.datetime.fromisoformat(start)
    body = event(subject, start, (begin + dt.timedelta(hours=1)).isoformat(), zone)
    body["recurrence"] = {
        "pattern": {
            "type": "weekly",
            "interval": 1,
            "daysOfWeek": [begin.strftime("%A").lower()],
        },
        "range": {"type": "numbered", "startDate": start[:10], "numberOfOccurrences": count},
    }
    return body


@dataclass
class Graph:
    running: RunningSimulator
    http: httpx.AsyncClient
    user: str
    token: dict[str, Any]

    @property
    def sim(self) -> GraphSimulator:
        return self.running.sim

    @property
    def url(self) -> str:
        return self.running.url

    async def get(self, path: str, **headers: str) -> httpx.Response:
        target = path if path.startswith("http") else self.url + path
        return await self.http.get(target, headers=headers)

    async def delta_round(self, first: str, page_size: int = 3) -> tuple[list[dict[str, Any]], str]:
        """Every item of one round, and its deltaLink."""
        url, items = first, []
        while True:
            response = await self.get(url, Prefer=f"odata.maxpagesize={page_size}")
            assert response.status_code == 200, response.text
            body = response.json()
            items += body["value"]
            assert not ("@odata.nextLink" in body and "@odata.deltaLink" in body)
            if "@odata.deltaLink" in body:
                return items, body["@odata.deltaLink"]
            url = body["@odata.nextLink"]


@pytest.fixture
async def graph() -> AsyncIterator[Graph]:
    async with running() as served:
        sim = served.sim
        alice = sim.add_user("alice@example.com", "Alice")
        sim.identity.add_client("calsync", "s3cret", [REDIRECT])
        token = sim.identity.issue(alice.id, "calsync", "offline_access Calendars.Read")
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            yield Graph(served, http, alice.id, token)


@dataclass
class Receiver:
    """A webhook endpoint: answers the validation handshake and records what it receives."""

    url: str = ""
    validations: list[str] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "echo"  # echo | wrong | error | html
    status: int = 202
    failures_left: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:
            self.validations.append(token)
            if self.mode == "wrong":
                return web.Response(text=token[::-1], content_type="text/plain")
            if self.mode == "error":
                return web.Response(status=500, text="no")
            if self.mode == "html":
                return web.Response(text=token, content_type="text/html")
            return web.Response(text=token, content_type="text/plain")
        if self.failures_left > 0:
            self.failures_left -= 1
            return web.Response(status=503)
        self.posts.append(await request.json())
        return web.Response(status=self.status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield found
    await runner.cleanup()


def subscription_body(
    receiver: Receiver, now: dt.datetime | None = None, **extra: Any
) -> dict[str, Any]:
    expires = (now or dt.datetime.now(dt.UTC)) + dt.timedelta(days=2)
    return {
        "changeType": "created,updated,deleted",
        "notificationUrl": receiver.url + "/notify",
        "lifecycleNotificationUrl": receiver.url + "/lifecycle",
        "resource": "/me/events",
        "expirationDateTime": expires.strftime("%Y-%m-%dT%H:%M:%S.0000000Z"),
        "clientState": "a-secret-of-ours",
        **extra,
    }


# -- calendars -----------------------------------------------------------------------------------


async def test_calendars_are_paged_and_a_shared_calendar_is_listed(graph: Graph) -> None:
    sim = graph.sim
    for n in range(11):
        sim.add_calendar(graph.user, f"Extra {n}", hex_color="#112233")
    bob = sim.add_user("bob@example.com", "Bob")
    shared = sim.add_calendar(bob.id, "Team")
    sim.share_calendar(shared.id, graph.user, can_edit=False)
    response = await graph.get("/v1.0/me/calendars")
    first = response.json()
    assert len(first["value"]) == 10 and "@odata.nextLink" in first
    assert first["value"][0]["isDefaultCalendar"] is True
    rest = (await graph.get(first["@odata.nextLink"])).json()
    assert "@odata.nextLink" not in rest
    listed = first["value"] + rest["value"]
    assert len(listed) == 13
    team = next(c for c in listed if c["name"] == "Team")
    assert team["canEdit"] is False and team["owner"]["address"] == "bob@example.com"
    assert {"id", "name", "color", "hexColor", "isDefaultCalendar", "changeKey"} <= set(team)
    default = (await graph.get("/v1.0/me/calendar")).json()
    assert default["id"] == listed[0]["id"]
    missing = await graph.get("/v1.0/me/calendars/AAMkAGnope=")
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["code"] == "ErrorItemNotFound"
    assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}
    assert missing.headers["request-id"] == error["innerError"]["request-id"]


# -- delta ---------------------------------------------------------------------------------------


async def test_full_round_pages_with_next_links_then_a_delta_link(graph: Graph) -> None:
    sim = graph.sim
    for n in range(7):
        sim.create_event(
            graph.user,
            None,
            event(f"E{n}", f"2025-02-{n + 1:02d}T09:00:00", f"2025-02-{n + 1:02d}T10:00:00"),
        )
    first = await graph.get(f"/v1.0/me/calendarView/delta?{WINDOW}", Prefer="odata.maxpagesize=3")
    assert first.status_code == 200
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=3"
    body = first.json()
    assert len(body["value"]) == 3 and "@odata.deltaLink" not in body
    next_link = body["@odata.nextLink"]
    assert "$skiptoken=" in next_link
    again = await graph.get(next_link, Prefer="odata.maxpagesize=3")
    twice = await graph.get(next_link, Prefer="odata.maxpagesize=3")
    assert [e["id"] for e in again.json()["value"]] == [e["id"] for e in twice.json()["value"]]
    items, delta_link = await graph.delta_round(f"/v1.0/me/calendarView/delta?{WINDOW}")
    assert "$deltatoken=" in delta_link
    assert sorted(e["subject"] for e in items) == [f"E{n}" for n in range(7)]
    sample = items[0]
    for name in (
        "@odata.etag",
        "id",
        "iCalUId",
        "changeKey",
        "createdDateTime",
        "lastModifiedDateTime",
        "bodyPreview",
        "isAllDay",
        "isCancelled",
        "showAs",
        "type",
        "seriesMasterId",
        "originalStartTimeZone",
        "location",
        "organizer",
        "attendees",
    ):
        assert name in sample
    assert sample["start"] == {"dateTime": "2025-02-01T09:00:00.0000000", "timeZone": "UTC"}
    # Nothing changed: the next round is empty and ends with a new deltaLink at once.
    quiet = (await graph.get(delta_link)).json()
    assert quiet["value"] == [] and "@odata.deltaLink" in quiet


async def test_default_page_size_and_page_size_preference(graph: Graph) -> None:
    for n in range(25):
        graph.sim.create_event(
            graph.user, None, event(f"E{n}", "2025-03-01T09:00:00", "2025-03-01T09:30:00")
        )
    plain = (await graph.get(f"/v1.0/me/calendarView/delta?{WINDOW}")).json()
    assert len(plain["value"]) == graph.sim.default_page_size == 10
    large = await graph.get(f"/v1.0/me/calendarView/delta?{WINDOW}", Prefer="odata.maxpagesize=50")
    assert len(large.json()["value"]) == 25 and "@odata.deltaLink" in large.json()


@pytest.mark.parametrize(
    "option", ["$select=subject", "$expand=attachments", "$filter=x", "$orderby=start", "$search=x"]
)
async def test_unsupported_query_options_on_delta_are_refused(graph: Graph, option: str) -> None:
    response = await graph.get(f"/v1.0/me/calendarView/delta?{WINDOW}&{option}")
    assert response.status_code == 400
    assert option.split("=")[0] in response.json()["error"]["message"]


async def test_delta_needs_a_window(graph: Graph) -> None:
    response = await graph.get("/v1.0/me/calendarView/delta")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "ErrorInvalidParameter"


async def test_incremental_round_reports_changes_and_removals(graph: Graph) -> None:
    sim = graph.sim
    keep = sim.create_event(
        graph.user, None, event("keep", "2025-04-01T09:00:00", "2025-04-01T10:00:00")
    )
    change = sim.create_event(
        graph.user, None, event("change", "2025-04-02T09:00:00", "2025-04-02T10:00:00")
    )
    gone = sim.create_event(
        graph.user, None, event("gone", "2025-04-03T09:00:00", "2025-04-03T10:00:00")
    )
    leaves = sim.create_event(
        graph.user, None, event("leaves", "2025-04-04T09:00:00", "2025-04-04T10:00:00")
    )
    outside = sim.create_event(
        graph.user, None, event("outside", "2030-01-01T09:00:00", "2030-01-01T10:00:00")
    )
    _, delta_link = await graph.delta_round(f"/v1.0/me/calendarView/delta?{WINDOW}")
    sim.update_event(graph.user, change.id, {"subject": "changed"})
    sim.delete_event(graph.user, gone.id)
    sim.update_event(
        graph.user,
        leaves.id,
        {
            "start": {"dateTime": "2031-01-01T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2031-01-01T10:00:00", "timeZone": "UTC"},
        },
    )
    sim.update_event(graph.user, outside.id, {"subject": "still outside"})
    added = sim.create_event(
        graph.user, None, event("added", "2025-04-05T09:00:00", "2025-04-05T10:00:00")
    )
    items, _ = await graph.delta_round(delta_link)
    removed = {i["id"] for i in items if "@removed" in i}
    present = {i["id"]: i for i in items if "@removed" not in i}
    assert removed == {gone.id, leaves.id, outside.id}
    assert all(i["@removed"] == {"reason": "deleted"} for i in items if "@removed" in i)
    assert set(present) == {change.id, added.id}
    assert present[change.id]["subject"] == "changed"
    assert keep.id not in present


async def test_calendar_view_holds_instances_never_the_series_master(graph: Graph) -> None:
    sim = graph.sim
    master = sim.create_event(
        graph.user, None, weekly("standup", "2025-03-03T09:00:00", 5, "Pacific Standard Time")
    )
    items, delta_link = await graph.delta_round(f"/v1.0/me/calendarView/delta?{WINDOW}")
    assert [i["type"] for i in items] == ["occurrence"] * 5
    assert master.id not in {i["id"] for i in items}
    assert {i["seriesMasterId"] for i in items} == {master.id}
    assert len({i["iCalUId"] for i in items}) == 5  # different per occurrence
    # 09:00 Pacific is 17:00 UTC before the DST change of 9 March 2025 and 16:00 after it.
    assert [i["start"]["dateTime"][11:16] for i in items] == [
        "17:00",
        "16:00",
        "16:00",
        "16:00",
        "16:00",
    ]
    assert items[1]["originalStart"] == "2025-03-10T16:00:00Z"
    pacific = await graph.get(
        f"/v1.0/me/calendarView/delta?{WINDOW}", Prefer='outlook.timezone="Pacific Standard Time"'
    )
    first = pacific.json()["value"][0]
    assert first["start"] == {
        "dateTime": "2025-03-03T09:00:00.0000000",
        "timeZone": "Pacific Standard Time",
    }
    # One occurrence moved (an exception, same id), one cancelled by the organizer.
    moved, cancelled = items[1], items[2]
    sim.update_event(
        graph.user,
        moved["id"],
        {
            "subject": "moved",
            "start": {"dateTime": "2025-03-11T18:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2025-03-11T19:00:00", "timeZone": "UTC"},
        },
    )
    sim.delete_event(graph.user, cancelled["id"])
    changes, _ = await graph.delta_round(delta_link)
    by_id = {i["id"]: i for i in changes}
    assert set(by_id) == {moved["id"], cancelled["id"]}
    assert by_id[moved["id"]]["type"] == "exception"
    assert by_id[moved["id"]]["start"]["dateTime"].startswith("2025-03-11T18:00")
    assert by_id[moved["id"]]["originalStart"] == "2025-03-10T16:00:00Z"
    assert "@removed" in by_id[cancelled["id"]]


async def test_invalidated_token_answers_410_with_a_fresh_start_location(graph: Graph) -> None:
    sim = graph.sim
    sim.create_event(graph.user, None, event("one", "2025-05-01T09:00:00", "2025-05-01T10:00:00"))
    _, delta_link = await graph.delta_round(f"/v1.0/me/calendarView/delta?{WINDOW}")
    assert sim.invalidate_delta_tokens() >= 1
    response = await graph.get(delta_link)
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "syncStateNotFound"
    location = response.headers["Location"]
    query = parse_qs(urlsplit(location).query, keep_blank_values=True)
    assert query["$deltatoken"] == [""]
    restart, _ = await graph.delta_round(location)
    assert [i["subject"] for i in restart] == ["one"]


@pytest.mark.parametrize("code", ["syncStateNotFound", "resyncRequired"])
async def test_invalidated_token_4xx_variant(graph: Graph, code: str) -> None:
    _, delta_link = await graph.delta_round(f"/v1.0/me/calendarView/delta?{WINDOW}")
    graph.sim.invalidate_delta_tokens(status=400, code=code)
    response = await graph.get(delta_link)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert "Location" not in response.headers


async def test_forgotten_token_is_gone(graph: Graph) -> None:
    response = await graph.get("/v1.0/me/calendarView/delta?$deltatoken=never-issued")
    assert response.status_code == 410


async def test_replay_repeats_what_the_previous_round_delivered(graph: Graph) -> None:
    sim = graph.sim
    first = sim.create_event(
        graph.user, None, event("a", "2025-06-01T09:00:00", "2025-06-01T10:00:00")
    )
    _, link = await graph.delta_round(f"/v1.0/me/calendarView/delta?{WINDOW}")
    sim.update_event(graph.user, first.id, {"subject": "a2"})
    delivered, link = await graph.delta_round(link)
    assert [i["subject"] for i in delivered] == ["a2"]
    sim.replay_next()
    replayed, link = await graph.delta_round(link)
    assert [(i["id"], i["subject"]) for i in replayed] == [(first.id, "a2")]
    after, _ = await graph.delta_round(link)
    assert after == []


# -- subscriptions -------------------------------------------------------------------------------


async def test_validation_handshake_then_batched_notifications(
    graph: Graph, receiver: Receiver
) -> None:
    response = await graph.http.post(
        graph.url + "/v1.0/subscriptions", json=subscription_body(receiver)
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert len(receiver.validations) == 2  # notification and lifecycle URLs
    assert all(" " in token and ":" in token for token in receiver.validations)
    sim = graph.sim
    sim.notifier.settings.batch_window = 0.2
    one = sim.create_event(
        graph.user, None, event("n1", "2025-07-01T09:00:00", "2025-07-01T10:00:00")
    )
    sim.create_event(graph.user, None, event("n2", "2025-07-02T09:00:00", "2025-07-02T10:00:00"))
    sim.update_event(graph.user, one.id, {"subject": "n1b"})
    await until(lambda: receiver.posts, what="a notification POST")
    await sim.notifier.idle()
    assert len(receiver.posts) == 1  # three changes, one batch
    value = receiver.posts[0]["value"]
    assert [v["changeType"] for v in value] == ["created", "created", "updated"]
    for item in value:
        assert item["subscriptionId"] == created["id"]
        assert item["clientState"] == "a-secret-of-ours"
        assert item["tenantId"] == sim.tenant_id
        assert set(item["resourceData"]) == {"@odata.type", "@odata.id", "@odata.etag", "id"}
        assert item["subscriptionExpirationDateTime"] == created["expirationDateTime"]
    assert value[0]["resourceData"]["id"] == one.id


async def test_failed_deliveries_are_retried(graph: Graph, receiver: Receiver) -> None:
    sim = graph.sim
    sim.notifier.settings.backoff = 0.05
    await graph.http.post(graph.url + "/v1.0/subscriptions", json=subscription_body(receiver))
    receiver.failures_left = 2
    sim.create_event(graph.user, None, event("r", "2025-07-01T09:00:00", "2025-07-01T10:00:00"))
    await until(lambda: receiver.posts, what="a delivery after two failures")
    stats = next(iter(sim.notifier.stats().values()))
    assert stats["attempts"] == 3 and stats["failures"] == 2 and stats["slow_over_2_9s"] == 0


@pytest.mark.parametrize("mode", ["wrong", "error", "html"])
async def test_a_bad_validation_answer_refuses_the_subscription(
    graph: Graph, receiver: Receiver, mode: str
) -> None:
    receiver.mode = mode
    response = await graph.http.post(
        graph.url + "/v1.0/subscriptions", json=subscription_body(receiver)
    )
    assert response.status_code == 400
    assert "validation" in response.json()["error"]["message"].lower()
    assert graph.sim.notifier.subscriptions == {}


async def test_subscription_input_is_checked(graph: Graph, receiver: Receiver) -> None:
    post = graph.http.post
    url = graph.url + "/v1.0/subscriptions"
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    assert (
        await post(url, json=subscription_body(receiver, expirationDateTime=past))
    ).status_code == 400
    long_state = subscription_body(receiver, clientState="x" * 129)
    assert (await post(url, json=long_state)).status_code == 400
    assert (
        await post(url, json=subscription_body(receiver, resource="/me/messages"))
    ).status_code == 400
    assert (
        await post(url, json=subscription_body(receiver, changeType="moved"))
    ).status_code == 400
    assert receiver.validations == [] and graph.sim.notifier.subscriptions == {}
    far = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
    capped = await post(url, json=subscription_body(receiver, expirationDateTime=far))
    assert capped.status_code == 201
    expires = dt.datetime.fromisoformat(capped.json()["expirationDateTime"].replace("Z", "+00:00"))
    assert expires <= graph.sim.clock.now() + dt.timedelta(minutes=10_080)


async def test_renewal_lifecycle_url_expiry_and_delete(graph: Graph, receiver: Receiver) -> None:
    sim = graph.sim
    url = graph.url + "/v1.0/subscriptions"
    created = (await graph.http.post(url, json=subscription_body(receiver))).json()
    item = f"{url}/{created['id']}"
    later = (sim.clock.now() + dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    renewed = await graph.http.patch(item, json={"expirationDateTime": later})
    assert renewed.status_code == 200
    assert renewed.json()["expirationDateTime"] == later
    refused = await graph.http.patch(item, json={"lifecycleNotificationUrl": receiver.url + "/x"})
    assert refused.status_code == 400
    assert (await graph.http.post(item + "/reauthorize")).status_code == 204
    # Not renewed in time: gone.
    sim.clock.advance(4 * 86400)
    fresh = sim.identity.issue(graph.user, "calsync", "Calendars.Read")["access_token"]
    graph.http.headers["Authorization"] = f"Bearer {fresh}"
    assert (await graph.http.get(item)).status_code == 404
    again = (await graph.http.post(url, json=subscription_body(receiver, sim.clock.now()))).json()
    assert (await graph.http.delete(f"{url}/{again['id']}")).status_code == 204
    assert (await graph.http.delete(f"{url}/{again['id']}")).status_code == 404
    assert (
        await graph.http.patch(f"{url}/unknown", json={"expirationDateTime": later})
    ).status_code == 404


async def test_lifecycle_events_reach_the_lifecycle_url(graph: Graph, receiver: Receiver) -> None:
    sim = graph.sim
    created = (
        await graph.http.post(graph.url + "/v1.0/subscriptions", json=subscription_body(receiver))
    ).json()
    for name in ("reauthorizationRequired", "missed"):
        sim.notifier.lifecycle(created["id"], name)
    await until(lambda: sum(len(p["value"]) for p in receiver.posts) >= 2, what="lifecycle events")
    events = [v["lifecycleEvent"] for p in receiver.posts for v in p["value"]]
    assert events == ["reauthorizationRequired", "missed"]
    assert all(v["clientState"] == "a-secret-of-ours" for p in receiver.posts for v in p["value"])
    admin = await graph.http.post(
        f"{graph.url}/_admin/subscriptions/{created['id']}/lifecycle",
        json={"event": "subscriptionRemoved"},
    )
    assert admin.status_code == 200
    await until(
        lambda: sum(len(p["value"]) for p in receiver.posts) >= 3, what="subscriptionRemoved"
    )
    assert created["id"] not in sim.notifier.subscriptions


# -- throttling and faults -----------------------------------------------------------------------


async def test_injected_429_carries_retry_after(graph: Graph) -> None:
    graph.sim.control.faults.append(
        Fault(status=429, path="/v1.0/me/calendars", count=1, retry_after=7)
    )
    first = await graph.get("/v1.0/me/calendars")
    assert first.status_code == 429
    assert first.headers["Retry-After"] == "7"
    assert first.json()["error"]["code"] == "TooManyRequests"
    assert (await graph.get("/v1.0/me/calendars")).status_code == 200
    assert graph.sim.control.faults_served == 1


async def test_fifth_concurrent_request_is_throttled(graph: Graph) -> None:
    control = graph.sim.control
    control.hold()
    tasks = [asyncio.ensure_future(graph.get("/v1.0/me/calendar")) for _ in range(4)]
    await until(lambda: control.in_flight.get(graph.user) == 4, what="four requests in flight")
    fifth = await graph.get("/v1.0/me/calendar")
    assert fifth.status_code == 429
    assert fifth.json()["error"]["code"] == "ApplicationThrottled"
    assert "Retry-After" in fifth.headers
    control.release_held()
    assert [r.status_code for r in await asyncio.gather(*tasks)] == [200] * 4
    assert control.peak_concurrency[graph.user] == 4


async def test_sustained_limit_per_mailbox(graph: Graph) -> None:
    graph.sim.control.sustained = Sustained(requests=3, window_seconds=60)
    statuses = [(await graph.get("/v1.0/me/calendar")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    graph.sim.clock.advance(61)
    assert (await graph.get("/v1.0/me/calendar")).status_code == 200


# -- identity platform ---------------------------------------------------------------------------


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


async def _authorize(graph: Graph, challenge: str, **extra: str) -> httpx.Response:
    params = {
        "client_id": "calsync",
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "response_mode": "query",
        "scope": "offline_access https://graph.microsoft.com/Calendars.Read",
        "state": "st4te",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    return await graph.http.get(graph.url + "/common/oauth2/v2.0/authorize", params=params)


async def _token(graph: Graph, **form: str) -> httpx.Response:
    data = {"client_id": "calsync", "client_secret": "s3cret", **form}
    async with httpx.AsyncClient() as plain:
        return await plain.post(graph.url + "/common/oauth2/v2.0/token", data=data)


async def test_code_flow_with_pkce_and_rotating_refresh_tokens(graph: Graph) -> None:
    verifier, challenge = _pkce()
    redirect = await _authorize(graph, challenge, login_hint="alice@example.com")
    assert redirect.status_code == 302
    query = parse_qs(urlsplit(redirect.headers["Location"]).query)
    assert query["state"] == ["st4te"]
    code = query["code"][0]
    wrong = await _token(
        graph,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        code_verifier="x" * 50,
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    tokens = await _token(
        graph,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        code_verifier=verifier,
    )
    assert tokens.status_code == 200, tokens.text
    first = tokens.json()
    assert first["token_type"] == "Bearer" and first["expires_in"] == 3600
    assert {"scope", "ext_expires_in", "access_token", "refresh_token"} <= set(first)
    reused = await _token(
        graph,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        code_verifier=verifier,
    )
    assert reused.status_code == 400
    assert reused.json()["error_codes"] == [54005]
    me = await httpx.AsyncClient().get(
        graph.url + "/v1.0/me", headers={"Authorization": f"Bearer {first['access_token']}"}
    )
    assert me.json()["mail"] == "alice@example.com"
    refreshed = (
        await _token(graph, grant_type="refresh_token", refresh_token=first["refresh_token"])
    ).json()
    assert refreshed["refresh_token"] != first["refresh_token"]
    assert refreshed["access_token"] != first["access_token"]
    third = await _token(
        graph, grant_type="refresh_token", refresh_token=refreshed["refresh_token"]
    )
    assert third.status_code == 200


async def test_consent_denied_redirects_with_access_denied(graph: Graph) -> None:
    graph.sim.identity.settings.deny_consent = True
    redirect = await _authorize(graph, _pkce()[1], login_hint="alice@example.com")
    query = parse_qs(urlsplit(redirect.headers["Location"]).query)
    assert query["error"] == ["access_denied"] and query["state"] == ["st4te"]
    assert query["error_description"][0].startswith("AADSTS65004")


async def test_refused_refresh_tokens_and_clients(graph: Graph) -> None:
    sim = graph.sim
    refresh = graph.token["refresh_token"]
    bad_secret = await _token(
        graph, grant_type="refresh_token", refresh_token=refresh, client_secret="nope"
    )
    assert bad_secret.status_code == 401 and bad_secret.json()["error"] == "invalid_client"
    sim.identity.revoke(token=refresh)
    revoked = await _token(graph, grant_type="refresh_token", refresh_token=refresh)
    body = revoked.json()
    assert revoked.status_code == 400 and body["error"] == "invalid_grant"
    assert body["error_description"].startswith("AADSTS50173")
    assert {"error_codes", "timestamp", "trace_id", "correlation_id"} <= set(body)
    fresh = sim.identity.issue(graph.user, "calsync", "offline_access Calendars.Read")
    sim.identity.mark_inactive(token=fresh["refresh_token"])
    inactive = await _token(graph, grant_type="refresh_token", refresh_token=fresh["refresh_token"])
    assert inactive.json()["error_codes"] == [700082]
    idle = sim.identity.issue(graph.user, "calsync", "offline_access Calendars.Read")
    sim.clock.advance(91 * 86400)
    expired = await _token(graph, grant_type="refresh_token", refresh_token=idle["refresh_token"])
    assert expired.json()["error"] == "invalid_grant"


async def test_expired_or_missing_access_token_is_401(graph: Graph) -> None:
    assert (await graph.get("/v1.0/me/calendars")).status_code == 200
    graph.sim.identity.expire_access_tokens()
    expired = await graph.get("/v1.0/me/calendars")
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "InvalidAuthenticationToken"
    async with httpx.AsyncClient() as anonymous:
        missing = await anonymous.get(graph.url + "/v1.0/me/calendars")
    assert missing.status_code == 401


# -- bad input and the admin API -----------------------------------------------------------------


async def test_bad_event_input_changes_nothing(graph: Graph) -> None:
    url = graph.url + "/v1.0/me/events"
    before = graph.sim.summary()["events"]
    bad = [
        {"subject": "no end", "start": {"dateTime": "2025-01-01T09:00:00", "timeZone": "UTC"}},
        event("zone", "2025-01-01T09:00:00", "2025-01-01T10:00:00", "Mars/Olympus"),
        event("backwards", "2025-01-01T09:00:00", "2025-01-01T08:00:00"),
        {**event("all day", "2025-01-01T09:00:00", "2025-01-02T09:00:00"), "isAllDay": True},
        {
            **weekly("bad rule", "2025-01-06T09:00:00"),
            "recurrence": {"pattern": {"type": "sometimes"}},
        },
    ]
    for body in bad:
        response = await graph.http.post(url, json=body)
        assert response.status_code == 400, body
        assert "error" in response.json()
    assert (await graph.http.post(url, content=b"{not json")).status_code == 400
    assert graph.sim.summary()["events"] == before
    made = await graph.http.post(
        url, json=event("ok", "2025-01-01T09:00:00", "2025-01-01T10:00:00")
    )
    assert made.status_code == 201 and made.json()["type"] == "singleInstance"


async def test_admin_api_drives_a_simulator_over_http(graph: Graph) -> None:
    admin = graph.url + "/_admin"
    post = graph.http.post
    bob = (await post(admin + "/users", json={"address": "bob@example.com"})).json()
    made = await post(
        admin + "/users/bob@example.com/calendars/default/generate", json={"count": 30, "seed": 2}
    )
    assert made.json()["events"] == 30
    created = await post(
        admin + "/users/bob@example.com/calendars/default/events",
        json=event("admin", "2025-01-01T09:00:00", "2025-01-01T10:00:00"),
    )
    assert created.status_code == 200
    minted = (
        await post(admin + "/tokens/mint", json={"user": bob["id"], "client_id": "calsync"})
    ).json()
    assert "refresh_token" in minted
    fault = await post(
        admin + "/faults", json={"status": 503, "path": "/v1.0/me*", "retryAfter": 2}
    )
    assert fault.status_code == 200
    as_bob = {"Authorization": f"Bearer {minted['access_token']}"}
    failed = await graph.http.get(graph.url + "/v1.0/me/calendars", headers=as_bob)
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "2"
    clock = (await post(admin + "/clock", json={"advance_seconds": 3601})).json()
    assert "now" in clock
    expired = await graph.http.get(graph.url + "/v1.0/me/calendars", headers=as_bob)
    assert expired.status_code == 401
    counters = (await graph.http.get(admin + "/counters")).json()
    assert counters["faults_served"] == 1 and counters["by_status"]["401"] >= 1
    unknown = await post(admin + "/users/nobody@example.com/calendars", json={"name": "x"})
    assert unknown.status_code == 404
