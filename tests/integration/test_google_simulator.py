"""The Google simulator's fidelity: every claim of the protocol notes, over a real socket.

Each test starts the simulator with `running()` on a free port of 127.0.0.1 inside the test's
event loop and talks to it with httpx, as a client of the real API would. Push notifications go
to a real aiohttp receiver on another port.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import itertools
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiohttp import web

from calsync.testing.google import GoogleSimulator, RunningSimulator, running
from tests.support import until

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"
BOB = "bob@example.com"
REDIRECT = "http://127.0.0.1:9/callback"
SCOPE = "https://www.googleapis.com/auth/calendar.readonly"


@pytest.fixture
async def google() -> AsyncIterator[RunningSimulator]:
    sim = GoogleSimulator(push_retry_backoff=0.05, push_max_attempts=3)
    async with running(sim=sim) as served:
        sim.create_user(ALICE, time_zone="Europe/Berlin")
        sim.create_user(BOB)
        yield served


@pytest.fixture
async def alice(google: RunningSimulator) -> AsyncIterator[httpx.AsyncClient]:
    token = google.sim.mint_access_token(ALICE)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=google.url, headers=headers, timeout=30) as client:
        yield client


EVENTS = "/calendar/v3/calendars/primary/events"


def event(summary: str, day: int, hour: int = 9, **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "start": {"dateTime": f"2025-03-{day:02d}T{hour:02d}:00:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": f"2025-03-{day:02d}T{hour:02d}:30:00", "timeZone": "Europe/Berlin"},
        **extra,
    }


def assert_envelope(response: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == status and isinstance(error["message"], str) and error["message"]
    (detail,) = error["errors"]
    assert detail["reason"] == reason and detail["domain"] and detail["message"]
    return dict(error)


async def list_all(
    client: httpx.AsyncClient, path: str = EVENTS, **params: Any
) -> tuple[list[dict[str, Any]], str, list[dict[str, Any]]]:
    """(items, nextSyncToken, raw pages) of a listing followed to its end."""
    items: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    query = dict(params)
    while True:
        response = await client.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body)
        items += body["items"]
        if "nextPageToken" not in body:
            return items, body["nextSyncToken"], pages
        query = {**params, "pageToken": body["nextPageToken"]}


# --- events.list ------------------------------------------------------------------------------


async def test_sync_token_only_on_the_last_page(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    for day in range(1, 26):
        google.sim.create_event(ALICE, event(f"e{day}", day))
    items, token, pages = await list_all(alice, maxResults=10)
    assert [len(p["items"]) for p in pages] == [10, 10, 5]
    assert all("nextSyncToken" not in p and "nextPageToken" in p for p in pages[:-1])
    assert "nextPageToken" not in pages[-1] and token
    assert len({i["id"] for i in items}) == 25
    first = pages[0]
    assert first["kind"] == "calendar#events" and first["timeZone"] == "Europe/Berlin"
    assert first["accessRole"] == "owner" and first["summary"] == ALICE
    sample = items[0]
    assert sample["kind"] == "calendar#event" and sample["etag"].startswith('"')
    assert sample["iCalUID"].endswith("@google.com") and sample["htmlLink"].startswith("https://")
    assert sample["start"]["timeZone"] == "Europe/Berlin"
    assert sample["start"]["dateTime"].endswith("+01:00")
    assert sample["updated"].endswith("Z") and sample["created"].endswith("Z")


async def test_incremental_sync_reports_changes_and_deletions_as_cancelled(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    sim = google.sim
    kept = sim.create_event(ALICE, event("kept", 1))
    changed = sim.create_event(ALICE, event("changed", 2))
    doomed = sim.create_event(ALICE, event("doomed", 3))
    _, token, _ = await list_all(alice)
    nothing, token, _ = await list_all(alice, syncToken=token)
    assert nothing == []

    updated = sim.update_event(ALICE, changed["id"], {"summary": "changed again"})
    assert updated["etag"] != changed["etag"]
    sim.delete_event(ALICE, doomed["id"])
    added = sim.create_event(ALICE, event("added", 4))
    items, token, _ = await list_all(alice, syncToken=token)
    by_id = {i["id"]: i for i in items}
    assert set(by_id) == {changed["id"], doomed["id"], added["id"]}
    assert kept["id"] not in by_id
    assert by_id[changed["id"]]["summary"] == "changed again"
    assert by_id[doomed["id"]]["status"] == "cancelled"
    assert set(by_id[doomed["id"]]) <= {"kind", "etag", "id", "status"}  # deleted: only id & co

    # A full listing does not show the deleted event; showDeleted does.
    live, _, _ = await list_all(alice)
    assert doomed["id"] not in {i["id"] for i in live}
    with_deleted, _, _ = await list_all(alice, showDeleted="true")
    assert doomed["id"] in {i["id"] for i in with_deleted}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("iCalUID", "x@google.com"),
        ("orderBy", "updated"),
        ("privateExtendedProperty", "a=b"),
        ("q", "standup"),
        ("sharedExtendedProperty", "a=b"),
        ("timeMin", "2025-01-01T00:00:00Z"),
        ("timeMax", "2026-01-01T00:00:00Z"),
        ("updatedMin", "2025-01-01T00:00:00Z"),
    ],
)
async def test_parameters_refused_with_a_sync_token(
    google: RunningSimulator, alice: httpx.AsyncClient, name: str, value: str
) -> None:
    google.sim.create_event(ALICE, event("one", 1))
    _, token, _ = await list_all(alice)
    response = await alice.get(EVENTS, params={"syncToken": token, name: value})
    error = assert_envelope(response, 400, "invalid")
    assert name in error["message"]
    still, _, _ = await list_all(alice, syncToken=token)  # the token itself is fine
    assert still == []


async def test_sync_token_bound_to_the_other_parameters(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    _, token, _ = await list_all(alice, singleEvents="false")
    assert_envelope(
        await alice.get(EVENTS, params={"syncToken": token, "singleEvents": "true"}), 400, "invalid"
    )
    assert_envelope(
        await alice.get(EVENTS, params={"syncToken": token, "showDeleted": "true"}), 400, "invalid"
    )


async def test_invalidated_or_unknown_sync_token_is_410_full_sync_required(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    google.sim.create_event(ALICE, event("one", 1))
    _, token, _ = await list_all(alice)
    google.sim.invalidate_sync_tokens(ALICE)
    assert_envelope(await alice.get(EVENTS, params={"syncToken": token}), 410, "fullSyncRequired")
    assert_envelope(
        await alice.get(EVENTS, params={"syncToken": "CPDAlvWDx70CEPDAlvWDx70CGAU="}),
        410,
        "fullSyncRequired",
    )
    items, fresh, _ = await list_all(alice)  # a full listing works and hands out a new token
    assert len(items) == 1
    assert (await alice.get(EVENTS, params={"syncToken": fresh})).status_code == 200


async def test_masters_with_exceptions_versus_single_events(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    sim = google.sim
    master = sim.create_event(ALICE, event("weekly", 3, recurrence=["RRULE:FREQ=WEEKLY;COUNT=5"]))
    moved = sim.update_event(
        ALICE,
        f"{master['id']}_20250310T080000Z",
        {
            "start": {"dateTime": "2025-03-10T11:00:00+01:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2025-03-10T11:30:00+01:00", "timeZone": "Europe/Berlin"},
        },
    )
    cancelled = sim.cancel_instance(
        ALICE, master["id"], {"dateTime": "2025-03-17T09:00:00", "timeZone": "Europe/Berlin"}
    )

    stored, _, _ = await list_all(alice)
    by_id = {i["id"]: i for i in stored}
    assert set(by_id) == {master["id"], moved["id"], cancelled["id"]}
    assert by_id[master["id"]]["recurrence"] == ["RRULE:FREQ=WEEKLY;COUNT=5"]
    exception = by_id[moved["id"]]
    assert exception["recurringEventId"] == master["id"]
    assert exception["originalStartTime"]["dateTime"] == "2025-03-10T09:00:00+01:00"
    assert exception["iCalUID"] == master["iCalUID"] and "recurrence" not in exception
    gone = by_id[cancelled["id"]]  # cancelled instance of a live series: listed, minimal
    assert gone["status"] == "cancelled" and gone["recurringEventId"] == master["id"]
    assert gone["originalStartTime"]["dateTime"] == "2025-03-17T09:00:00+01:00"

    instances, _, _ = await list_all(alice, singleEvents="true", orderBy="startTime")
    starts = [i["start"]["dateTime"] for i in instances]
    assert starts == [
        "2025-03-03T09:00:00+01:00",
        "2025-03-10T11:00:00+01:00",
        "2025-03-24T09:00:00+01:00",
        "2025-03-31T09:00:00+02:00",  # wall clock kept across the DST change
    ]
    assert all(i["recurringEventId"] == master["id"] and "recurrence" not in i for i in instances)
    assert all("originalStartTime" in i for i in instances)
    assert instances[0]["id"] == f"{master['id']}_20250303T080000Z"
    window, _, _ = await list_all(
        alice, singleEvents="true", timeMin="2025-03-20T00:00:00Z", timeMax="2025-03-30T00:00:00Z"
    )
    assert [i["start"]["dateTime"] for i in window] == ["2025-03-24T09:00:00+01:00"]

    # Deleting the master cancels the series and its exceptions for incremental sync.
    _, token, _ = await list_all(alice)
    sim.delete_event(ALICE, master["id"])
    changes, _, _ = await list_all(alice, syncToken=token)
    assert {i["id"]: i["status"] for i in changes} == {
        master["id"]: "cancelled",
        moved["id"]: "cancelled",
    }


async def test_max_results_default_cap_and_bad_values(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    made = google.sim.generate_events(ALICE, 2600, seed=2)
    total = made["events"] + made["exceptions"] + made["cancelled_instances"]
    first = (await alice.get(EVENTS)).json()
    assert len(first["items"]) == 250 and "nextPageToken" in first
    capped = (await alice.get(EVENTS, params={"maxResults": 100000})).json()
    assert len(capped["items"]) == 2500
    rest = (
        await alice.get(EVENTS, params={"maxResults": 100000, "pageToken": capped["nextPageToken"]})
    ).json()
    assert len(rest["items"]) == total - 2500 and rest["nextSyncToken"]
    for bad in ("0", "-1", "ten"):
        assert_envelope(await alice.get(EVENTS, params={"maxResults": bad}), 400, "invalid")
    assert_envelope(await alice.get(EVENTS, params={"pageToken": "forged"}), 400, "invalid")
    assert_envelope(await alice.get(EVENTS, params={"timeMin": "yesterday"}), 400, "invalid")


# --- calendarList -----------------------------------------------------------------------------

LIST = "/calendar/v3/users/me/calendarList"


async def test_calendar_list_paging_and_a_newly_shared_calendar(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    sim = google.sim
    for n in range(4):
        sim.create_calendar(ALICE, summary=f"Team {n}")
    entries, token, pages = await list_all(alice, LIST, maxResults=2)
    assert [len(p["items"]) for p in pages] == [2, 2, 1]
    assert all("nextSyncToken" not in p for p in pages[:-1])
    primary = next(e for e in entries if e["id"] == ALICE)
    assert primary["primary"] is True and primary["accessRole"] == "owner"
    assert primary["backgroundColor"].startswith("#") and primary["timeZone"] == "Europe/Berlin"

    shared = sim.create_calendar(BOB, summary="Bob's")
    sim.share_calendar(shared["id"], ALICE, "reader")
    changes, token, _ = await list_all(alice, LIST, syncToken=token)
    assert [(e["id"], e["accessRole"]) for e in changes] == [(shared["id"], "reader")]

    sim.unshare_calendar(shared["id"], ALICE)
    changes, token, _ = await list_all(alice, LIST, syncToken=token)
    assert changes == [
        {
            "kind": "calendar#calendarListEntry",
            "etag": changes[0]["etag"],
            "id": shared["id"],
            "deleted": True,
        }
    ]
    assert_envelope(
        await alice.get(f"/calendar/v3/calendars/{shared['id']}/events"), 404, "notFound"
    )
    assert_envelope(
        await alice.get(LIST, params={"syncToken": token, "minAccessRole": "owner"}), 400, "invalid"
    )


# --- push -------------------------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    calls: list[dict[str, str]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # statuses to answer first, then 200


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver("")

    async def hook(request: web.Request) -> web.Response:
        assert await request.read() == b""
        found.calls.append(dict(request.headers))
        return web.Response(status=found.answers.pop(0) if found.answers else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield found
    finally:
        await runner.cleanup()


async def test_watch_delivers_sync_then_exists_with_all_headers(
    google: RunningSimulator, alice: httpx.AsyncClient, receiver: Receiver
) -> None:
    body = {"id": "chan-1", "type": "web_hook", "address": receiver.url, "token": "tok=42"}
    response = await alice.post(f"{EVENTS}/watch", json=body)
    assert response.status_code == 200, response.text
    channel = response.json()
    assert channel["kind"] == "api#channel" and channel["id"] == "chan-1"
    assert channel["token"] == "tok=42" and channel["resourceId"]
    assert channel["resourceUri"].startswith(google.url + "/calendar/v3/calendars/")
    lifetime = int(channel["expiration"]) / 1000 - google.sim.clock()
    assert 7 * 86400 - 60 < lifetime <= 7 * 86400  # the default ttl

    await until(lambda: len(receiver.calls) == 1)
    google.sim.create_event(ALICE, event("one", 1))
    google.sim.create_event(ALICE, event("two", 2))
    await until(lambda: len(receiver.calls) == 3)
    states = [c["X-Goog-Resource-State"] for c in receiver.calls]
    numbers = [int(c["X-Goog-Message-Number"]) for c in receiver.calls]
    assert states == ["sync", "exists", "exists"]
    assert numbers[0] == 1 and numbers == sorted(numbers)
    assert all(b - a > 1 for a, b in itertools.pairwise(numbers))  # not consecutive
    for call in receiver.calls:
        assert call["X-Goog-Channel-ID"] == "chan-1"
        assert call["X-Goog-Channel-Token"] == "tok=42"
        assert call["X-Goog-Resource-ID"] == channel["resourceId"]
        assert call["X-Goog-Resource-URI"] == channel["resourceUri"]
        expires = email.utils.parsedate_to_datetime(call["X-Goog-Channel-Expiration"])
        assert abs(expires.timestamp() * 1000 - int(channel["expiration"])) < 1000

    duplicate = await alice.post(f"{EVENTS}/watch", json=body)
    assert_envelope(duplicate, 400, "channelIdNotUnique")


async def test_watch_without_token_and_with_ttl(
    google: RunningSimulator, alice: httpx.AsyncClient, receiver: Receiver
) -> None:
    body = {"id": "chan-2", "type": "web_hook", "address": receiver.url, "params": {"ttl": "600"}}
    channel = (await alice.post(f"{EVENTS}/watch", json=body)).json()
    assert "token" not in channel
    assert abs(int(channel["expiration"]) / 1000 - google.sim.clock() - 600) < 5
    await until(lambda: len(receiver.calls) == 1)
    assert "X-Goog-Channel-Token" not in receiver.calls[0]


async def test_watch_refuses_bad_channels_and_https_when_required(
    google: RunningSimulator, alice: httpx.AsyncClient, receiver: Receiver
) -> None:
    good = {"id": "c", "type": "web_hook", "address": receiver.url}
    for change, reason in [
        ({"id": ""}, "required"),
        ({"id": "x" * 65}, "invalid"),
        ({"type": "email"}, "invalid"),
        ({"address": "ftp://example.com/"}, "invalid"),
        ({"token": "t" * 257}, "invalid"),
        ({"params": {"ttl": "forever"}}, "invalid"),
    ]:
        assert_envelope(await alice.post(f"{EVENTS}/watch", json={**good, **change}), 400, reason)
    google.sim.settings.require_https = True
    assert_envelope(await alice.post(f"{EVENTS}/watch", json=good), 400, "push.webhookUrlNotHttps")
    assert google.sim.channels() == []


async def test_delivery_retries_on_503_then_succeeds(
    google: RunningSimulator, alice: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answers = [503, 502]
    body = {"id": "chan-r", "type": "web_hook", "address": receiver.url}
    await alice.post(f"{EVENTS}/watch", json=body)
    await until(lambda: len(receiver.calls) == 3)
    await google.sim.push.idle()
    assert {c["X-Goog-Message-Number"] for c in receiver.calls} == {"1"}
    (found,) = google.sim.channels()
    assert [(d["attempt"], d["status"], d["outcome"]) for d in found["deliveries"]] == [
        (1, 503, "retrying"),
        (2, 502, "retrying"),
        (3, 200, "delivered"),
    ]


async def test_delivery_gives_up_after_the_last_attempt_and_on_other_errors(
    google: RunningSimulator, alice: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answers = [500, 500, 500, 404]
    await alice.post(
        f"{EVENTS}/watch", json={"id": "chan-f", "type": "web_hook", "address": receiver.url}
    )
    await until(lambda: len(receiver.calls) == 3)
    google.sim.create_event(ALICE, event("one", 1))
    await until(lambda: len(receiver.calls) == 4)
    await google.sim.push.idle()
    outcomes = [(d["state"], d["outcome"]) for d in google.sim.channels()[0]["deliveries"]]
    assert outcomes == [
        ("sync", "retrying"),
        ("sync", "retrying"),
        ("sync", "failed"),
        ("exists", "failed"),  # a 404 is not retried
    ]


async def test_channels_stop(
    google: RunningSimulator, alice: httpx.AsyncClient, receiver: Receiver
) -> None:
    channel = (
        await alice.post(
            f"{EVENTS}/watch", json={"id": "chan-s", "type": "web_hook", "address": receiver.url}
        )
    ).json()
    await until(lambda: len(receiver.calls) == 1)
    stop = {"id": "chan-s", "resourceId": channel["resourceId"]}

    bob_token = google.sim.mint_access_token(BOB)
    as_bob = await alice.post(
        "/calendar/v3/channels/stop", json=stop, headers={"Authorization": f"Bearer {bob_token}"}
    )
    assert_envelope(as_bob, 404, "notFound")
    other_client = google.sim.mint_access_token(ALICE, client_id="another-client")
    assert_envelope(
        await alice.post(
            "/calendar/v3/channels/stop",
            json=stop,
            headers={"Authorization": f"Bearer {other_client}"},
        ),
        404,
        "notFound",
    )
    wrong = await alice.post("/calendar/v3/channels/stop", json={**stop, "resourceId": "nope"})
    assert_envelope(wrong, 404, "notFound")
    assert_envelope(
        await alice.post("/calendar/v3/channels/stop", json={"id": "chan-s"}), 400, "required"
    )

    done = await alice.post("/calendar/v3/channels/stop", json=stop)
    assert done.status_code == 204
    google.sim.create_event(ALICE, event("after stop", 1))
    await google.sim.push.idle()
    assert len(receiver.calls) == 1
    assert_envelope(await alice.post("/calendar/v3/channels/stop", json=stop), 404, "notFound")


async def test_deleting_a_calendar_sends_not_exists(
    google: RunningSimulator, alice: httpx.AsyncClient, receiver: Receiver
) -> None:
    team = google.sim.create_calendar(ALICE, summary="Team")
    path = f"/calendar/v3/calendars/{team['id']}/events/watch"
    await alice.post(path, json={"id": "chan-d", "type": "web_hook", "address": receiver.url})
    await until(lambda: len(receiver.calls) == 1)
    google.sim.delete_calendar(team["id"])
    await until(lambda: len(receiver.calls) == 2)
    assert receiver.calls[1]["X-Goog-Resource-State"] == "not_exists"


# --- OAuth ------------------------------------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture
async def anonymous(google: RunningSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=google.url, timeout=30) as client:
        yield client


async def authorize(
    client: httpx.AsyncClient, client_id: str, challenge: str, **extra: str
) -> httpx.Response:
    params = {
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": SCOPE,
        "state": "st-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "access_type": "offline",
        "prompt": "consent",
        **extra,
    }
    return await client.get("/o/oauth2/v2/auth", params=params)


def redirected(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def test_code_with_pkce_then_refresh_then_revocation(
    google: RunningSimulator, anonymous: httpx.AsyncClient
) -> None:
    client = google.sim.register_client("cid", "secret", [REDIRECT])
    verifier, challenge = pkce()
    answer = redirected(await authorize(anonymous, "cid", challenge, login_hint=BOB))
    assert answer["state"] == "st-1" and answer["code"]
    form = {
        "grant_type": "authorization_code",
        "code": answer["code"],
        "redirect_uri": REDIRECT,
        "client_id": client["client_id"],
        "client_secret": client["client_secret"],
    }
    wrong = await anonymous.post("/token", data={**form, "code_verifier": pkce()[0]})
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"

    tokens = await anonymous.post("/token", data={**form, "code_verifier": verifier})
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["scope"] == SCOPE
    assert body["refresh_token"] and body["access_token"]
    assert tokens.headers["cache-control"] == "no-store"
    api = {"Authorization": f"Bearer {body['access_token']}"}
    listed = await anonymous.get(LIST, headers=api)
    assert listed.status_code == 200 and listed.json()["items"][0]["id"] == BOB  # login_hint

    reused = await anonymous.post("/token", data={**form, "code_verifier": verifier})
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    # RFC 6749 4.1.2: what the replayed code bought is revoked
    assert_envelope(await anonymous.get(LIST, headers=api), 401, "authError")
    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": body["refresh_token"],
        "client_id": "cid",
        "client_secret": "secret",
    }
    assert (await anonymous.post("/token", data=refresh)).json()["error"] == "invalid_grant"


async def test_refresh_keeps_the_refresh_token_until_revoked(
    google: RunningSimulator, anonymous: httpx.AsyncClient
) -> None:
    google.sim.register_client("cid", "secret", [REDIRECT])
    refresh_token = google.sim.mint_refresh_token(ALICE, "cid")
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    refreshed = await anonymous.post("/token", data=form, auth=("cid", "secret"))  # HTTP Basic
    assert refreshed.status_code == 200
    body = refreshed.json()
    assert "refresh_token" not in body and body["access_token"]
    api = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await anonymous.get(LIST, headers=api)).status_code == 200

    assert google.sim.revoke_refresh_tokens(ALICE) == 1
    again = await anonymous.post("/token", data=form, auth=("cid", "secret"))
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert_envelope(await anonymous.get(LIST, headers=api), 401, "authError")


async def test_token_endpoint_errors(
    google: RunningSimulator, anonymous: httpx.AsyncClient
) -> None:
    google.sim.register_client("cid", "secret", [REDIRECT])
    refresh = google.sim.mint_refresh_token(ALICE, "cid")
    cases = [
        (
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "client_id": "nope",
                "client_secret": "x",
            },
            401,
            "invalid_client",
        ),
        (
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "client_id": "cid",
                "client_secret": "bad",
            },
            401,
            "invalid_client",
        ),
        (
            {"refresh_token": refresh, "client_id": "cid", "client_secret": "secret"},
            400,
            "invalid_request",
        ),
        (
            {"grant_type": "password", "client_id": "cid", "client_secret": "secret"},
            400,
            "unsupported_grant_type",
        ),
        (
            {
                "grant_type": "authorization_code",
                "code": "4/made-up",
                "redirect_uri": REDIRECT,
                "client_id": "cid",
                "client_secret": "secret",
            },
            400,
            "invalid_grant",
        ),
        (
            {"grant_type": "refresh_token", "client_id": "cid", "client_secret": "secret"},
            400,
            "invalid_request",
        ),
    ]
    for form, status, error in cases:
        answer = await anonymous.post("/token", data=form)
        assert (answer.status_code, answer.json()["error"]) == (status, error), form
        assert answer.json()["error_description"]


async def test_authorization_endpoint_refusals(
    google: RunningSimulator, anonymous: httpx.AsyncClient
) -> None:
    google.sim.register_client("cid", "secret", [REDIRECT])
    _, challenge = pkce()
    unknown = await authorize(anonymous, "someone-else", challenge)
    assert unknown.status_code == 400 and "location" not in unknown.headers
    mismatch = await authorize(anonymous, "cid", challenge, redirect_uri="http://127.0.0.1:9/evil")
    assert mismatch.status_code == 400 and "redirect_uri_mismatch" in mismatch.text

    google.sim.set_consent(deny=True)
    denied = redirected(await authorize(anonymous, "cid", challenge))
    assert denied == {"error": "access_denied", "state": "st-1"}
    google.sim.set_consent(BOB, deny=False)
    code = redirected(await authorize(anonymous, "cid", challenge))["code"]
    assert code
    bad_method = redirected(
        await authorize(anonymous, "cid", challenge, code_challenge_method="MD5")
    )
    assert bad_method["error"] == "invalid_request"

    # The code is bound to its redirect URI.
    verifier, challenge = pkce()
    code = redirected(await authorize(anonymous, "cid", challenge))["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://127.0.0.1:9/other",
        "code_verifier": verifier,
        "client_id": "cid",
        "client_secret": "secret",
    }
    assert (await anonymous.post("/token", data=form)).json()["error"] == "invalid_grant"


async def test_expired_access_token_is_401_auth_error(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    assert (await alice.get(LIST)).status_code == 200
    assert google.sim.expire_access_tokens() >= 1
    response = await alice.get(LIST)
    assert_envelope(response, 401, "authError")
    assert response.headers["www-authenticate"].startswith("Bearer")
    short = google.sim.mint_access_token(ALICE, ttl=0)
    expired = await alice.get(LIST, headers={"Authorization": f"Bearer {short}"})
    assert_envelope(expired, 401, "authError")
    missing = await alice.get(LIST, headers={"Authorization": ""})
    assert_envelope(missing, 401, "required")


async def test_read_only_scope_cannot_write(
    google: RunningSimulator, anonymous: httpx.AsyncClient
) -> None:
    token = google.sim.mint_access_token(ALICE, scope=SCOPE)
    headers = {"Authorization": f"Bearer {token}"}
    assert (await anonymous.get(EVENTS, headers=headers)).status_code == 200
    refused = await anonymous.post(EVENTS, json=event("x", 1), headers=headers)
    assert_envelope(refused, 403, "insufficientPermissions")
    assert google.sim.event_resources(ALICE) == []


# --- faults, limits, errors -------------------------------------------------------------------


async def test_injected_faults_answer_with_the_envelope_and_retry_after(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    sim = google.sim
    sim.inject_fault(kind="rateLimitExceeded", path="*/events", count=2, retry_after=7)
    sim.inject_fault(kind="tooManyRequests", method="GET", path=LIST)
    for _ in range(2):
        limited = await alice.get(EVENTS)
        assert_envelope(limited, 403, "rateLimitExceeded")
        assert limited.headers["retry-after"] == "7"
    assert (await alice.get(EVENTS)).status_code == 200
    assert_envelope(await alice.get(LIST), 429, "rateLimitExceeded")
    assert (await alice.get(LIST)).status_code == 200
    for kind, status, reason in [
        ("userRateLimitExceeded", 403, "userRateLimitExceeded"),
        ("quotaExceeded", 403, "quotaExceeded"),
        ("backendError", 500, "backendError"),
        ("serviceUnavailable", 503, "backendError"),
    ]:
        sim.inject_fault(kind=kind)
        assert_envelope(await alice.get(EVENTS), status, reason)
    stats = sim.stats()
    assert stats["faults_served"]["rateLimitExceeded"] == 3
    assert stats["requests"]["GET /calendar/v3/calendars/{calendarId}/events"] == 7
    assert stats["requests_by_user"][ALICE] == 9
    assert sim.faults() == []
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.inject_fault(kind="meteorStrike")


async def test_sustained_rate_limit_per_user(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    clock = Clock()
    google.sim.clock = clock  # frozen: every request falls into the same second
    google.sim.set_rate_limit(5, retry_after=1)
    answers = await asyncio.gather(*(alice.get(LIST) for _ in range(12)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 5 and statuses.count(403) == 7
    refused = next(a for a in answers if a.status_code == 403)
    assert_envelope(refused, 403, "rateLimitExceeded")
    assert refused.headers["retry-after"] == "1"
    stats = google.sim.stats()
    assert stats["rate_limited"] == 7 and stats["peak_concurrency"] >= 1
    served = [r["at"] for r in stats["api_requests"] if r["status"] == 200]
    assert served == [clock.now] * 5
    clock.now += 1.0  # a second later the window has room again
    assert (await alice.get(LIST)).status_code == 200
    bob = google.sim.mint_access_token(BOB)  # the limit is per user
    assert (await alice.get(LIST, headers={"Authorization": f"Bearer {bob}"})).status_code == 200


async def test_bad_input_answers_400_and_changes_nothing(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    sim = google.sim
    bad_json = await alice.post(
        EVENTS, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_envelope(bad_json, 400, "parseError")
    for body, reason in [
        ([1, 2, 3], "parseError"),
        ({"summary": "no times"}, "required"),
        (
            {**event("x", 1), "end": event("x", 1)["start"] | {"dateTime": "2025-03-01T08:00:00"}},
            "timeRangeEmpty",
        ),
        ({**event("x", 1), "recurrence": ["RRULE:FREQ=SOMETIMES"]}, "invalid"),
        (
            {
                **event("x", 1),
                "start": {"dateTime": "2025-03-01T09:00:00", "timeZone": "Mars/Base"},
            },
            "invalid",
        ),
        ({**event("x", 1), "id": "UPPER_CASE"}, "invalid"),
        ({**event("x", 1), "summary": "s" * 10000}, "invalid"),
        ({**event("x", 1), "attendees": [{"email": "nobody"}]}, "invalid"),
    ]:
        assert_envelope(await alice.post(EVENTS, json=body), 400, reason)
    huge = await alice.post(
        EVENTS, content=b"{" + b" " * (2 << 20) + b"}", headers={"Content-Type": "application/json"}
    )
    assert_envelope(huge, 413, "uploadTooLarge")
    assert sim.event_resources(ALICE) == []
    assert_envelope(
        await alice.get("/calendar/v3/calendars/nobody%40example.com/events"), 404, "notFound"
    )
    assert_envelope(await alice.get(f"{EVENTS}/doesnotexist"), 404, "notFound")
    assert_envelope(await alice.get("/calendar/v3/unknown/path"), 404, "notFound")


async def test_api_writes_conflicts_and_tombstones(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    created = (await alice.post(EVENTS, json={**event("mine", 5), "id": "mievent1"})).json()
    assert created["id"] == "mievent1" and created["sequence"] == 0
    assert_envelope(
        await alice.post(EVENTS, json={**event("again", 5), "id": "mievent1"}), 409, "duplicate"
    )
    stale = await alice.patch(
        f"{EVENTS}/mievent1", json={"summary": "x"}, headers={"If-Match": '"0"'}
    )
    assert_envelope(stale, 412, "conditionNotMet")
    moved = await alice.patch(
        f"{EVENTS}/mievent1", json={"start": event("", 6)["start"], "end": event("", 6)["end"]}
    )
    assert moved.status_code == 200 and moved.json()["sequence"] == 1
    assert (await alice.delete(f"{EVENTS}/mievent1")).status_code == 204
    assert (await alice.get(f"{EVENTS}/mievent1")).json()["status"] == "cancelled"
    assert_envelope(await alice.delete(f"{EVENTS}/mievent1"), 410, "deleted")


async def test_admin_api_over_http(google: RunningSimulator, anonymous: httpx.AsyncClient) -> None:
    admin = anonymous
    assert (await admin.get("/_admin/")).status_code == 200
    assert (
        await admin.post(
            "/_admin/users", json={"email": "carol@example.com", "timeZone": "Asia/Tokyo"}
        )
    ).status_code == 201
    assert (
        await admin.post("/_admin/users", json={"email": "carol@example.com"})
    ).status_code == 400
    calendar = (
        await admin.post(
            "/_admin/calendars", json={"owner": "carol@example.com", "summary": "Work"}
        )
    ).json()
    made = await admin.post(
        f"/_admin/calendars/{calendar['id']}/generate", json={"count": 50, "seed": 4}
    )
    assert made.status_code == 201 and made.json()["events"] == 50
    created = await admin.post(f"/_admin/calendars/{calendar['id']}/events", json=event("admin", 2))
    assert created.status_code == 201
    refused = await admin.post(f"/_admin/calendars/{calendar['id']}/events", json={"summary": "x"})
    assert (
        refused.status_code == 400 and refused.json()["error"]["errors"][0]["reason"] == "required"
    )
    assert (
        await admin.delete(f"/_admin/calendars/{calendar['id']}/events/{created.json()['id']}")
    ).status_code == 204
    live = (
        await admin.get(f"/_admin/calendars/{calendar['id']}/events", params={"live": "true"})
    ).json()
    assert created.json()["id"] not in {e["id"] for e in live}
    assert (
        await admin.put(f"/_admin/calendars/{calendar['id']}/acl/{ALICE}", json={"role": "writer"})
    ).status_code == 204
    token = (await admin.post("/_admin/tokens/access", json={"user": ALICE})).json()["access_token"]
    entries = (await admin.get(LIST, headers={"Authorization": f"Bearer {token}"})).json()["items"]
    assert calendar["id"] in {e["id"] for e in entries}
    assert (
        await admin.post("/_admin/faults", json={"kind": "backendError", "count": 1})
    ).status_code == 201
    assert (await admin.get(LIST, headers={"Authorization": f"Bearer {token}"})).status_code == 500
    assert (await admin.post("/_admin/faults", json={"kind": "nope"})).status_code == 400
    assert (await admin.post("/_admin/tokens/expire", json={})).json()["expired"] >= 1
    stats = (await admin.get("/_admin/stats")).json()
    assert stats["faults_served"] == {"backendError": 1}
    assert (await admin.patch("/_admin/settings", json={"access_token_ttl": 5})).json()[
        "access_token_ttl"
    ] == 5
    assert (await admin.patch("/_admin/settings", json={"access_token_ttl": -1})).status_code == 400
    assert (await admin.delete(f"/_admin/calendars/{calendar['id']}")).status_code == 204
    assert (await admin.delete("/_admin/calendars/nothing")).status_code == 404
    assert (await admin.post("/_admin/reset")).status_code == 204
    assert (await admin.get("/_admin/users")).json() == []


class Clock:
    """A settable clock for the simulator: expiry without waiting."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_lifetimes_follow_the_simulators_clock(receiver: Receiver) -> None:
    clock = Clock()
    sim = GoogleSimulator(clock=clock, refresh_token_ttl=7 * 86400)
    async with running(sim=sim) as served, httpx.AsyncClient(base_url=served.url) as http:
        sim.create_user(ALICE)
        sim.register_client("cid", "secret", [REDIRECT])
        token = sim.mint_access_token(ALICE)
        api = {"Authorization": f"Bearer {token}"}
        watch = {
            "id": "short",
            "type": "web_hook",
            "address": receiver.url,
            "params": {"ttl": "3600"},
        }
        assert (await http.post(f"{EVENTS}/watch", json=watch, headers=api)).status_code == 200
        await until(lambda: len(receiver.calls) == 1)

        clock.now += 3599
        assert (await http.get(LIST, headers=api)).status_code == 200
        sim.create_event(ALICE, event("inside the channel's life", 1))
        await until(lambda: len(receiver.calls) == 2)
        clock.now += 2  # past the hour of the access token and of the channel
        assert_envelope(await http.get(LIST, headers=api), 401, "authError")
        sim.create_event(ALICE, event("after the channel expired", 2))
        await sim.push.idle()
        assert len(receiver.calls) == 2
        assert [c["stopped"] for c in sim.channels()] == [True]

        refresh = sim.mint_refresh_token(ALICE, "cid")
        form = {"grant_type": "refresh_token", "refresh_token": refresh}
        assert (await http.post("/token", data=form, auth=("cid", "secret"))).status_code == 200
        clock.now += 7 * 86400  # an app in "Testing" status: refresh tokens die after 7 days
        dead = await http.post("/token", data=form, auth=("cid", "secret"))
        assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"


async def test_pretty_printed_unless_asked_not_to(
    google: RunningSimulator, alice: httpx.AsyncClient
) -> None:
    google.sim.create_event(ALICE, event("one", 1))
    pretty = await alice.get(EVENTS)
    compact = await alice.get(EVENTS, params={"prettyPrint": "false"})
    assert pretty.text.startswith("{\n") and "\n " in pretty.text
    assert "\n" not in compact.text and compact.text.startswith('{"kind":"calendar#events"')
    assert pretty.json()["items"] == compact.json()["items"]
    assert "\n" in (await alice.get("/calendar/v3/calendars/nobody/events")).text
