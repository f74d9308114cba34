"""Google and Microsoft connections end to end: consent, sync, changes, resets, refusals, keys.

The operator (`calsync run`, with its gateway) talks to the simulators running as processes
(`calsync simulate ...`); the consent flow is driven by an HTTP client the way a browser would
follow it; events are read back with `calsync events --format json`. Every test makes its own
simulator accounts and OAuth clients, so the tests share the simulators without sharing state.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.simulators import Simulator
from tests.support import BIN, Kubectl, Process, condition, connection_uid, poll, stored_events

pytestmark = pytest.mark.e2e

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
# The connection's default window is 365 days back and 730 ahead; compare well inside it.
FROM = NOW - dt.timedelta(days=300)
TO = NOW + dt.timedelta(days=700)


def utc(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:  # a date (all-day): midnight UTC, as the store keeps it
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def stored_spans(store: Path, key: str) -> list[tuple[dt.datetime, dt.datetime, str]]:
    events = stored_events(store, key, "--from", FROM.isoformat(), "--to", TO.isoformat())
    return sorted((utc(e["start"]), utc(e["end"]), e["summary"]) for e in events)


def assert_same_spans(store: Path, key: str, expected: list[tuple[dt.datetime, ...]]) -> None:
    """The store holds exactly the (start, end) spans the server shows in the range."""
    stored = [(s, e) for s, e, _ in stored_spans(store, key)]
    assert stored == expected, (
        f"store minus server: {sorted(set(stored) - set(expected))[:5]}; "
        f"server minus store: {sorted(set(expected) - set(stored))[:5]}; "
        f"{len(stored)} stored, {len(expected)} on the server"
    )


def oauth_connection(
    name: str, provider: str, owner: str, client: str, token: str | None = None
) -> dict[str, Any]:
    oauth: dict[str, Any] = {"clientSecretRef": {"name": client}}
    if token:
        oauth["tokenSecretRef"] = {"name": token}
    return {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "CalendarConnection",
        "metadata": {"name": name},
        "spec": {"provider": provider, "owner": owner, "oauth": oauth},
    }


def secret(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"calsync.io/credentials": "true"}},
        "stringData": data,
    }


def sync_now(kubectl: Kubectl, namespace: str, connection: str, mode: str = "incremental") -> str:
    name = f"now-{uuid.uuid4().hex[:6]}"
    kubectl.apply(
        {
            "apiVersion": "calsync.io/v1alpha1",
            "kind": "SyncJob",
            "metadata": {"name": name},
            "spec": {"connection": connection, "mode": mode, "reason": "manual"},
        },
        namespace,
    )
    return name


def job_status(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", f"sj/{name}", "-n", namespace).get("status") or {})


def finished(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return poll(
        lambda: (
            (s := job_status(kubectl, namespace, name)).get("phase") in ("Succeeded", "Failed")
            and s
        ),
        timeout=90,
        what=f"SyncJob {name} finished",
    )


def reason(kubectl: Kubectl, namespace: str, name: str, ctype: str) -> str | None:
    cond = condition(kubectl, namespace, name, ctype)
    return None if cond is None else str(cond["reason"])


def consent(kubectl: Kubectl, namespace: str, name: str) -> httpx.Response:
    """Follow the published consent link like a browser: gateway, provider, gateway."""
    poll(
        lambda: (
            reason(kubectl, namespace, name, "Authenticated") in ("ConsentRequired", "InvalidGrant")
        ),
        timeout=60,
        what=f"{name} waiting for consent",
    )
    link = poll(
        lambda: (kubectl.json("get", f"calconn/{name}", "-n", namespace).get("status") or {}).get(
            "authorizationURL"
        ),
        timeout=30,
        what="status.authorizationURL",
    )
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        return browser.get(link)


# -- Microsoft -----------------------------------------------------------------------------------


def graph_account(sim: Simulator, gateway_url: str) -> tuple[str, str, str, str]:
    """A fresh mailbox with events and a registered app: (address, calendar, client id, secret)."""
    address = f"u{uuid.uuid4().hex[:8]}@example.com"
    sim.admin("POST", "users", {"address": address})
    calendar = sim.admin("GET", f"users/{address}/calendars")["value"][0]["id"]
    sim.admin(
        "POST",
        f"users/{address}/calendars/{calendar}/generate",
        {"count": 24, "seed": 3, "recurringEvery": 4, "start": NOW.isoformat()},
    )
    client_id = f"app-{uuid.uuid4().hex[:8]}"
    client_secret = uuid.uuid4().hex
    sim.admin(
        "POST",
        "clients",
        {
            "client_id": client_id,
            "client_secret": client_secret,
            "redirect_uris": [f"{gateway_url}/auth/microsoft/callback"],
        },
    )
    return address, calendar, client_id, client_secret


def graph_spans(
    sim: Simulator, address: str, calendar: str, client_id: str
) -> list[tuple[dt.datetime, ...]]:
    """The simulator's calendar view (its own API, as any Graph client reads it)."""
    token = sim.admin("POST", "tokens/mint", {"user": address, "client_id": client_id})
    url: str | None = f"{sim.url}/v1.0/me/calendars/{calendar}/calendarView"
    params: dict[str, str] | None = {
        "startDateTime": FROM.isoformat(),
        "endDateTime": TO.isoformat(),
        "$top": "500",
    }
    spans = []
    while url:
        answer = httpx.get(
            url, params=params, headers={"Authorization": f"Bearer {token['access_token']}"}
        ).json()
        for item in answer["value"]:
            if not item.get("isCancelled"):
                spans.append((utc(item["start"]["dateTime"]), utc(item["end"]["dateTime"])))
        url, params = answer.get("@odata.nextLink"), None
    return sorted(spans)


def assert_store_matches_graph(
    store: Path, key: str, sim: Simulator, account: tuple[str, str, str, str]
) -> None:
    address, calendar, client_id, _ = account
    assert_same_spans(store, key, graph_spans(sim, address, calendar, client_id))


def test_microsoft_consent_sync_changes_and_resets(
    kubectl: Kubectl,
    namespace: str,
    operator: Process,
    store_path: Path,
    microsoft_sim: Simulator,
    gateway_url: str,
) -> None:
    sim = microsoft_sim
    account = graph_account(sim, gateway_url)
    address, calendar, client_id, client_secret = account
    kubectl.apply(secret("ms-client", client_id=client_id, client_secret=client_secret), namespace)
    kubectl.apply(oauth_connection("bob", "microsoft", address, "ms-client"), namespace)

    page = consent(kubectl, namespace, "bob")
    assert page.status_code == 200, page.text
    assert "Calendar connected" in page.text
    kubectl("wait", "--for=condition=Ready", "calconn/bob", "-n", namespace, "--timeout=120s")
    obj = kubectl.json("get", "calconn/bob", "-n", namespace)
    assert "authorizationURL" not in obj["status"]
    key = connection_uid(kubectl, namespace, "bob")
    assert stored_spans(store_path, key), "nothing synced"
    assert_store_matches_graph(store_path, key, sim, account)

    # Changes on the server: a new event, a moved occurrence, a deleted event.
    view = sim.admin("GET", f"users/{address}/calendars/{calendar}/view")["value"]
    single = next(i for i in view if i["type"] == "singleInstance")
    occurrence = next(i for i in view if i["type"] == "occurrence")
    start = (NOW + dt.timedelta(days=3)).replace(hour=9, minute=0, second=0)
    sim.admin(
        "POST",
        f"users/{address}/calendars/{calendar}/events",
        {
            "subject": "Added later",
            "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {
                "dateTime": (start + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "UTC",
            },
        },
    )
    moved = utc(occurrence["start"]) + dt.timedelta(hours=2)
    sim.admin(
        "PATCH",
        f"users/{address}/events/{occurrence['id']}",
        {
            "start": {"dateTime": moved.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {
                "dateTime": (moved + dt.timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "UTC",
            },
        },
    )
    sim.admin("DELETE", f"users/{address}/events/{single['id']}")
    done = finished(kubectl, namespace, sync_now(kubectl, namespace, "bob"))
    assert done["phase"] == "Succeeded", done
    spans = stored_spans(store_path, key)
    assert any(summary == "Added later" for _, _, summary in spans)
    assert_store_matches_graph(store_path, key, sim, account)

    # The delta token is thrown away (410, then the syncStateNotFound variant) while an event
    # goes: the resync converges on what the server has.
    singles = [i for i in view if i["type"] == "singleInstance" and i["id"] != single["id"]]
    for mode, gone in zip(("gone", "syncStateNotFound"), singles, strict=False):
        sim.admin("POST", "delta/invalidate", {"mode": mode, "user": address})
        sim.admin("DELETE", f"users/{address}/events/{gone['id']}")
        done = finished(kubectl, namespace, sync_now(kubectl, namespace, "bob"))
        assert done["phase"] == "Succeeded", done
        assert_store_matches_graph(store_path, key, sim, account)


def test_microsoft_throttling_storm_converges_within_four_requests(
    kubectl: Kubectl,
    namespace: str,
    operator: Process,
    store_path: Path,
    microsoft_sim: Simulator,
    gateway_url: str,
) -> None:
    sim = microsoft_sim
    account = graph_account(sim, gateway_url)
    address, _, client_id, client_secret = account
    minted = sim.admin(
        "POST",
        "tokens/mint",
        {
            "user": address,
            "client_id": client_id,
            "scope": "offline_access https://graph.microsoft.com/Calendars.ReadWrite",
        },
    )
    kubectl.apply(secret("ms-client", client_id=client_id, client_secret=client_secret), namespace)
    kubectl.apply(secret("ms-token", refresh_token=minted["refresh_token"]), namespace)
    # Every Graph request of this test's first moments is throttled with Retry-After.
    sim.admin(
        "POST",
        "faults",
        {"status": 429, "path": "/v1.0/me/*", "count": 6, "retryAfter": 1},
    )
    kubectl.apply(
        oauth_connection("storm", "microsoft", address, "ms-client", token="ms-token"), namespace
    )
    kubectl("wait", "--for=condition=Ready", "calconn/storm", "-n", namespace, "--timeout=120s")
    assert_store_matches_graph(
        store_path, connection_uid(kubectl, namespace, "storm"), sim, account
    )
    counters = sim.admin("GET", "counters")
    assert counters["faults_served"] >= 6
    assert max(counters["peak_concurrency"].values()) <= 4, counters["peak_concurrency"]


# -- Google --------------------------------------------------------------------------------------


def google_account(sim: Simulator, gateway_url: str) -> tuple[str, str, str]:
    email = f"g{uuid.uuid4().hex[:8]}@example.com"
    sim.admin("POST", "users", {"email": email})
    sim.admin(
        "POST", f"calendars/{email}/generate", {"count": 24, "seed": 5, "start": NOW.isoformat()}
    )
    client = sim.admin(
        "POST", "clients", {"redirect_uris": [f"{gateway_url}/auth/google/callback"]}
    )
    return email, client["client_id"], client["client_secret"]


def google_spans(sim: Simulator, email: str, client_id: str) -> list[tuple[dt.datetime, ...]]:
    """The simulator's own expansion of the primary calendar (singleEvents=true)."""
    token = sim.admin("POST", "tokens/access", {"user": email, "client_id": client_id})
    spans = []
    page_token = None
    while True:
        params = {
            "singleEvents": "true",
            "timeMin": FROM.isoformat(),
            "timeMax": TO.isoformat(),
            "maxResults": "2500",
        }
        if page_token:
            params["pageToken"] = page_token
        answer = httpx.get(
            f"{sim.url}/calendar/v3/calendars/{email}/events",
            params=params,
            headers={"Authorization": f"Bearer {token['access_token']}"},
        ).json()
        for item in answer["items"]:
            if item.get("status") == "cancelled":
                continue
            start = item["start"].get("dateTime") or item["start"]["date"]
            end = item["end"].get("dateTime") or item["end"]["date"]
            spans.append((utc(start), utc(end)))
        page_token = answer.get("nextPageToken")
        if not page_token:
            return sorted(spans)


def assert_store_matches_google(
    store: Path, key: str, sim: Simulator, email: str, client: str
) -> None:
    assert_same_spans(store, key, google_spans(sim, email, client))


def connect_google(
    kubectl: Kubectl, namespace: str, sim: Simulator, gateway_url: str, name: str
) -> tuple[str, str]:
    """A fresh Google account connected through the consent flow: (email, client id)."""
    email, client_id, client_secret = google_account(sim, gateway_url)
    kubectl.apply(secret("g-client", client_id=client_id, client_secret=client_secret), namespace)
    kubectl.apply(oauth_connection(name, "google", email, "g-client"), namespace)
    page = consent(kubectl, namespace, name)
    assert page.status_code == 200, page.text
    kubectl("wait", "--for=condition=Ready", f"calconn/{name}", "-n", namespace, "--timeout=120s")
    return email, client_id


def test_google_consent_sync_changes_and_full_resync(
    kubectl: Kubectl,
    namespace: str,
    operator: Process,
    store_path: Path,
    google_sim: Simulator,
    gateway_url: str,
) -> None:
    sim = google_sim
    email, client_id = connect_google(kubectl, namespace, sim, gateway_url, "alice")
    key = connection_uid(kubectl, namespace, "alice")
    assert stored_spans(store_path, key)
    assert_store_matches_google(store_path, key, sim, email, client_id)

    # Create, update, delete, and change a recurring series; then sync.
    events = sim.admin("GET", f"calendars/{email}/events", live="true")
    single = next(e for e in events if not e.get("recurrence") and not e.get("recurringEventId"))
    series = next(e for e in events if e.get("recurrence"))
    start = (NOW + dt.timedelta(days=2)).replace(hour=10, minute=0, second=0)
    sim.admin(
        "POST",
        f"calendars/{email}/events",
        {
            "summary": "Added later",
            "start": {"dateTime": start.isoformat()},
            "end": {"dateTime": (start + dt.timedelta(hours=1)).isoformat()},
        },
    )
    sim.admin("PATCH", f"calendars/{email}/events/{single['id']}", {"summary": "Renamed"})
    sim.admin("DELETE", f"calendars/{email}/events/{series['id']}")
    done = finished(kubectl, namespace, sync_now(kubectl, namespace, "alice"))
    assert done["phase"] == "Succeeded", done
    summaries = {summary for _, _, summary in stored_spans(store_path, key)}
    assert {"Added later", "Renamed"} <= summaries
    assert_store_matches_google(store_path, key, sim, email, client_id)

    # The sync token is invalidated: 410 fullSyncRequired, a full resync converges.
    sim.admin("POST", f"calendars/{email}/invalidate-sync-tokens")
    sim.admin("DELETE", f"calendars/{email}/events/{single['id']}")
    done = finished(kubectl, namespace, sync_now(kubectl, namespace, "alice"))
    assert done["phase"] == "Succeeded", done
    assert_store_matches_google(store_path, key, sim, email, client_id)


def test_refused_refresh_token_stops_syncing_until_consent(
    kubectl: Kubectl,
    namespace: str,
    operator: Process,
    store_path: Path,
    google_sim: Simulator,
    gateway_url: str,
) -> None:
    sim = google_sim
    email, client_id, client_secret = google_account(sim, gateway_url)
    refresh = sim.admin("POST", "tokens/refresh", {"user": email, "client_id": client_id})
    kubectl.apply(secret("g-client", client_id=client_id, client_secret=client_secret), namespace)
    kubectl.apply(secret("g-token", refresh_token=refresh["refresh_token"]), namespace)
    kubectl.apply(oauth_connection("carol", "google", email, "g-client", "g-token"), namespace)
    kubectl("wait", "--for=condition=Ready", "calconn/carol", "-n", namespace, "--timeout=120s")

    sim.admin("POST", "tokens/revoke", {"user": email})
    sim.admin("POST", "tokens/expire", {"user": email})
    job = sync_now(kubectl, namespace, "carol")
    done = finished(kubectl, namespace, job)
    assert done["phase"] == "Failed" and done["attempts"] == 1, done
    assert "invalid_grant" in done["error"]
    poll(
        lambda: reason(kubectl, namespace, "carol", "Ready") == "InvalidGrant",
        timeout=30,
        what="Ready=False InvalidGrant",
    )
    cond = condition(kubectl, namespace, "carol", "Authenticated")
    assert cond is not None and cond["status"] == "False"
    events = kubectl.json("get", "events", "-n", namespace)["items"]
    assert any(e["reason"] == "InvalidGrant" for e in events)

    # The owner consents again through the published link; syncing resumes by itself.
    page = consent(kubectl, namespace, "carol")
    assert page.status_code == 200, page.text
    poll(
        lambda: reason(kubectl, namespace, "carol", "Ready") == "Synced",
        timeout=120,
        what="Ready again after consent",
    )
    assert_store_matches_google(
        store_path, connection_uid(kubectl, namespace, "carol"), sim, email, client_id
    )


def test_key_rotation_keeps_connections_working(
    kubectl: Kubectl,
    namespace: str,
    operator: Process,
    store_path: Path,
    google_sim: Simulator,
    gateway_url: str,
) -> None:
    sim = google_sim
    email, client_id = connect_google(kubectl, namespace, sim, gateway_url, "dave")

    rotate = subprocess.run(
        [
            str(BIN / "calsync"),
            "keys",
            "rotate",
            "--kubeconfig",
            str(kubectl.kubeconfig),
            "--namespace",
            "default",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rotate.returncode == 0, rotate.stdout + rotate.stderr
    # Tokens refreshed after the rotation, with the rotated ring: still syncing.
    sim.admin("POST", "tokens/expire", {"user": email})
    done = finished(kubectl, namespace, sync_now(kubectl, namespace, "dave"))
    assert done["phase"] == "Succeeded", done
    assert_store_matches_google(
        store_path, connection_uid(kubectl, namespace, "dave"), sim, email, client_id
    )


# -- Secrets stay secret -------------------------------------------------------------------------


def test_no_token_ever_leaves_the_secrets(
    kubectl: Kubectl,
    operator: Process,
    google_sim: Simulator,
    microsoft_sim: Simulator,
    gateway_url: str,
) -> None:
    """Every token the simulators issued in this session, searched for everywhere we write."""
    tokens = set()
    for sim in (google_sim, microsoft_sim):
        issued = sim.admin("GET", "tokens/issued")
        tokens |= set(issued["access_tokens"]) | set(issued["refresh_tokens"])
    assert len(tokens) >= 4, "the OAuth tests above should have issued tokens"
    places = {
        "operator log": operator.output(),
        "events": json.dumps(kubectl.json("get", "events", "-A")),
        "connections": json.dumps(kubectl.json("get", "calconn", "-A")),
        "syncjobs": json.dumps(kubectl.json("get", "sj", "-A")),
        "gateway metrics": httpx.get(f"{gateway_url}/metrics").text,
        "operator metrics": httpx.get(
            f"http://127.0.0.1:{operator.env['CALSYNC_METRICS_PORT']}/metrics"
        ).text,
    }
    for place, text in places.items():
        leaked = [t[:12] + "..." for t in tokens if t in text]
        assert not leaked, f"tokens found in the {place}: {leaked}"


def test_denied_consent_is_reported_and_changes_nothing(
    kubectl: Kubectl, namespace: str, operator: Process, google_sim: Simulator, gateway_url: str
) -> None:
    sim = google_sim
    email, client_id, client_secret = google_account(sim, gateway_url)
    kubectl.apply(secret("g-client", client_id=client_id, client_secret=client_secret), namespace)
    kubectl.apply(oauth_connection("erin", "google", email, "g-client"), namespace)
    sim.admin("PUT", "consent", {"deny": True})
    try:
        page = consent(kubectl, namespace, "erin")
    finally:
        sim.admin("PUT", "consent", {"deny": False})
    assert page.status_code == 403 and "not granted" in page.text
    events = kubectl.json("get", "events", "-n", namespace)["items"]
    assert any(e["reason"] == "ConsentDenied" for e in events)
    assert reason(kubectl, namespace, "erin", "Authenticated") == "ConsentRequired"
    secrets = kubectl.json("get", "secrets", "-n", namespace)["items"]
    assert not any(s["metadata"]["name"].endswith("-calsync-tokens") for s in secrets)
