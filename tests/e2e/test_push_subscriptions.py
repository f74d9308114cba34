"""Push subscriptions end to end: WebhookSubscriptions, the simulators' channels, renewals.

An operator of its own (`calsync run`, namespace-scoped, `WEBHOOK_ALLOW_INSECURE=true`) on the
quiet cluster, with simulators of its own (their channel settings are changed here) and a small
HTTP receiver standing in for the gateway's webhook routes: it answers Graph's validation
handshake and accepts notifications, which is all the providers need to open channels. What
the gateway does with notifications is tested with the gateway.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.fixtures.simulators import Simulator, _start
from tests.support import Kubectl, Process, free_port, poll

pytestmark = pytest.mark.e2e

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
GOOGLE_CHANNEL_TTL = 20  # seconds: renewed at half-life
GRAPH_SCOPE = "offline_access https://graph.microsoft.com/Calendars.ReadWrite"


# -- fixtures ---------------------------------------------------------------------------------


class Receiver:
    """Answers like the gateway's webhook routes: the validation echo, else 202."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                parts = urlsplit(self.path)
                receiver.calls.append((self.path, dict(self.headers)))
                token = parse_qs(parts.query).get("validationToken")
                if token:
                    body = token[0].encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def kc(quiet_kubectl: Kubectl) -> Kubectl:
    return quiet_kubectl


@pytest.fixture(scope="module")
def ns(kc: Kubectl) -> Iterator[str]:
    name = f"push-{uuid.uuid4().hex[:8]}"
    kc("create", "namespace", name)
    yield name
    kc("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def gsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    yield from _start("google", tmp_path_factory)


@pytest.fixture(scope="module")
def msim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    yield from _start("microsoft", tmp_path_factory)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def push_operator(
    kc: Kubectl,
    ns: str,
    gsim: Simulator,
    msim: Simulator,
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Process]:
    health = free_port()
    store = tmp_path_factory.mktemp("push-store") / "events.db"
    env = {
        **os.environ,
        "KUBECONFIG": str(kc.kubeconfig),
        "CALSYNC_NAMESPACES": ns,
        "CALSYNC_METRICS_PORT": str(free_port()),
        "CALSYNC_HEALTH_PORT": str(health),
        "CALSYNC_BIND_ADDRESS": "127.0.0.1",
        "CALSYNC_LOG_LEVEL": "DEBUG",
        "CALSYNC_STORE_URL": f"sqlite+aiosqlite:///{store}",
        "CALSYNC_SYNC_RETRY_BACKOFF": "0.2",
        "CALSYNC_GATEWAY_PORT": "0",
        "CALSYNC_GATEWAY_URL": receiver.url,
        "CALSYNC_WEBHOOK_ALLOW_INSECURE": "true",
        "CALSYNC_KEYRING_NAMESPACE": "default",
        "CALSYNC_OPERATOR_LEASE_NAME": f"push-operator-{uuid.uuid4().hex[:6]}",
        "CALSYNC_PURGE_TIMEOUT": "60",
        "CALSYNC_GOOGLE_API_URL": gsim.url,
        "CALSYNC_GOOGLE_AUTHORIZE_URL": f"{gsim.url}/o/oauth2/v2/auth",
        "CALSYNC_GOOGLE_TOKEN_URL": f"{gsim.url}/token",
        "CALSYNC_MICROSOFT_GRAPH_URL": msim.url,
        "CALSYNC_MICROSOFT_LOGIN_URL": msim.url,
    }
    proc = Process(["run"], env, tmp_path_factory.mktemp("push-operator") / "operator.log")

    def healthy() -> bool:
        if proc.proc.poll() is not None:
            pytest.fail(f"operator exited with {proc.proc.returncode}:\n{proc.output()[-4000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    poll(healthy, timeout=60, what="operator /healthz")
    yield proc
    code = proc.stop()
    assert code == 0, f"operator exited with {code}:\n{proc.output()[-4000:]}"


# -- helpers ----------------------------------------------------------------------------------


def secret(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"calsync.io/credentials": "true"}},
        "stringData": data,
    }


def connection(name: str, provider: str, owner: str, *, push: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "CalendarConnection",
        "metadata": {"name": name},
        "spec": {
            "provider": provider,
            "owner": owner,
            "oauth": {
                "clientSecretRef": {"name": f"{provider}-client"},
                "tokenSecretRef": {"name": f"{name}-token"},
            },
            "sync": {"push": push},
        },
    }


def subscriptions(kc: Kubectl, ns: str, conn: str) -> list[dict[str, Any]]:
    items = kc.json("get", "whsub", "-n", ns, "-l", f"calsync.io/connection={conn}")["items"]
    return sorted(items, key=lambda o: o["metadata"]["name"])


def cond(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return None


def is_true(obj: dict[str, Any], ctype: str) -> bool:
    c = cond(obj, ctype)
    return c is not None and c["status"] == "True"


def all_ready(kc: Kubectl, ns: str, conn: str, count: int) -> list[dict[str, Any]] | None:
    subs = subscriptions(kc, ns, conn)
    if len(subs) == count and all(is_true(s, "Ready") for s in subs):
        return subs
    return None


def get_conn(kc: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return dict(kc.json("get", f"calconn/{name}", "-n", ns))


def synced(kc: Kubectl, ns: str, name: str) -> bool:
    return bool((get_conn(kc, ns, name).get("status") or {}).get("calendars"))


def patch_status(kc: Kubectl, ns: str, name: str, status: dict[str, Any]) -> None:
    kc(
        "patch",
        f"whsub/{name}",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def stamp(delta: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delta)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def gone(kc: Kubectl, ns: str, kind: str, name: str) -> bool:
    return kc("get", f"{kind}/{name}", "-n", ns, check=False).returncode != 0


def lifecycle_jobs(kc: Kubectl, ns: str, conn: str) -> list[dict[str, Any]]:
    items = kc.json("get", "sj", "-n", ns, "-l", f"calsync.io/connection={conn}")["items"]
    return [j for j in items if j["spec"].get("reason") == "lifecycle" and j["spec"]["calendarId"]]


# -- Google -----------------------------------------------------------------------------------


def google_channels(sim: Simulator, email: str) -> list[dict[str, Any]]:
    return [c for c in sim.admin("GET", "channels") if c["user"] == email]


def test_google_channels_registered_renewed_make_before_break_and_stopped(
    kc: Kubectl, ns: str, gsim: Simulator, receiver: Receiver, push_operator: Process
) -> None:
    sim = gsim
    sim.admin("PATCH", "settings", {"max_channel_ttl": GOOGLE_CHANNEL_TTL})
    email = f"g{uuid.uuid4().hex[:8]}@example.com"
    sim.admin("POST", "users", {"email": email})
    sim.admin("POST", "calendars", {"owner": email, "summary": "Team"})
    sim.admin(
        "POST", f"calendars/{email}/generate", {"count": 5, "seed": 5, "start": NOW.isoformat()}
    )
    client = sim.admin("POST", "clients", {"redirect_uris": [f"{receiver.url}/cb"]})
    kc.apply(
        secret(
            "google-client", client_id=client["client_id"], client_secret=client["client_secret"]
        ),
        ns,
    )
    for name in ("g", "g-off"):
        token = sim.admin(
            "POST", "tokens/refresh", {"user": email, "client_id": client["client_id"]}
        )
        kc.apply(secret(f"{name}-token", refresh_token=token["refresh_token"]), ns)
    kc.apply(connection("g", "google", email), ns)
    kc.apply(connection("g-off", "google", email, push=False), ns)

    # One WebhookSubscription per calendar, Ready, with the channel the simulator holds.
    subs = poll(lambda: all_ready(kc, ns, "g", 2), timeout=60, what="2 Ready subscriptions")
    calendars = {c["id"] for c in get_conn(kc, ns, "g")["status"]["calendars"]}
    assert {s["spec"]["calendarId"] for s in subs} == calendars
    first = {s["metadata"]["name"]: s["status"]["channelId"] for s in subs}
    active = {c["id"]: c for c in google_channels(sim, email) if not c["stopped"]}
    for s in subs:
        status = s["status"]
        uid8 = s["metadata"]["uid"].replace("-", "")[:8]
        assert status["channelId"].startswith(f"calsync-{uid8}-")
        assert status["expiration"] and status["resourceId"]
        channel = active[status["channelId"]]
        assert channel["address"] == f"{receiver.url}/api/webhooks/google"
        assert channel["token"] and channel["token"] not in json.dumps(s)  # derived, not stored
        assert s["metadata"]["ownerReferences"][0]["controller"] is True
    poll(
        lambda: is_true(get_conn(kc, ns, "g"), "Subscribed"),
        timeout=30,
        what="the connection Subscribed",
    )

    # Renewal at half-life: a new channel id first, then the old channel is stopped before
    # it would have expired.
    def renewed() -> bool:
        current = {s["metadata"]["name"]: s for s in subscriptions(kc, ns, "g")}
        if any(current[n]["status"].get("channelId") == c for n, c in first.items()):
            return False
        channels = {c["id"]: c for c in google_channels(sim, email)}
        now_ms = time.time() * 1000
        for name, old in first.items():
            new = current[name]["status"]["channelId"]
            if channels[new]["stopped"] or not channels[old]["stopped"]:
                return False
            assert now_ms < int(channels[old]["expiration"]) + 1000, "old channel expired"
            if current[name]["status"].get("previousChannelId"):
                return False
        return True

    poll(renewed, timeout=GOOGLE_CHANNEL_TTL + 15, what="make-before-break renewals")

    # push: false: synced, no subscriptions, no Subscribed condition.
    poll(lambda: synced(kc, ns, "g-off"), timeout=30, what="g-off synced")
    assert subscriptions(kc, ns, "g-off") == []
    assert cond(get_conn(kc, ns, "g-off"), "Subscribed") is None

    # Deleting the connection stops every channel before it goes.
    kc("delete", "calconn/g", "-n", ns, "--wait=false")
    poll(lambda: gone(kc, ns, "calconn", "g"), timeout=45, what="connection g deleted")
    assert subscriptions(kc, ns, "g") == []
    assert [c["id"] for c in google_channels(sim, email) if not c["stopped"]] == []


# -- Microsoft Graph --------------------------------------------------------------------------


def graph_subscriptions(sim: Simulator, client_id: str) -> list[dict[str, Any]]:
    return [
        s for s in sim.admin("GET", "subscriptions")["value"] if s["applicationId"] == client_id
    ]


def test_graph_subscription_created_renewed_recreated_and_deleted(
    kc: Kubectl, ns: str, msim: Simulator, receiver: Receiver, push_operator: Process
) -> None:
    sim = msim
    address = f"u{uuid.uuid4().hex[:8]}@example.com"
    sim.admin("POST", "users", {"address": address})
    calendar = sim.admin("GET", f"users/{address}/calendars")["value"][0]["id"]
    sim.admin(
        "POST",
        f"users/{address}/calendars/{calendar}/generate",
        {"count": 5, "seed": 3, "start": NOW.isoformat()},
    )
    client_id, client_secret = f"app-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    sim.admin(
        "POST",
        "clients",
        {
            "client_id": client_id,
            "client_secret": client_secret,
            "redirect_uris": [f"{receiver.url}/cb"],
        },
    )
    minted = sim.admin(
        "POST", "tokens/mint", {"user": address, "client_id": client_id, "scope": GRAPH_SCOPE}
    )
    kc.apply(secret("microsoft-client", client_id=client_id, client_secret=client_secret), ns)
    kc.apply(secret("m-token", refresh_token=minted["refresh_token"]), ns)
    kc.apply(connection("m", "microsoft", address), ns)

    [sub] = poll(lambda: all_ready(kc, ns, "m", 1), timeout=60, what="a Ready subscription")
    name = sub["metadata"]["name"]
    [graph] = graph_subscriptions(sim, client_id)
    assert sub["status"]["channelId"] == graph["id"]
    assert graph["notificationUrl"] == f"{receiver.url}/api/webhooks/microsoft"
    assert graph["lifecycleNotificationUrl"] == f"{receiver.url}/api/webhooks/microsoft/lifecycle"
    assert graph["clientState"] and graph["clientState"] not in json.dumps(sub)
    validated = {p.split("?")[0] for p, _ in receiver.calls if "validationToken=" in p}
    assert validated == {"/api/webhooks/microsoft", "/api/webhooks/microsoft/lifecycle"}
    poll(lambda: is_true(get_conn(kc, ns, "m"), "Subscribed"), timeout=30, what="m Subscribed")

    # Renewal is a PATCH: as if the subscription were a day from expiry, same id afterwards.
    registered = sub["status"]["registeredAt"]
    patch_status(kc, ns, name, {"expiration": stamp(120), "registeredAt": stamp(-7 * 86400)})

    def renewed() -> dict[str, Any] | None:
        s = kc.json("get", f"whsub/{name}", "-n", ns)
        status = s["status"]
        expires = dt.datetime.fromisoformat(status["expiration"].replace("Z", "+00:00"))
        fresh = expires > dt.datetime.now(dt.UTC) + dt.timedelta(days=6)
        return s if fresh and status["registeredAt"] >= registered else None

    after = poll(renewed, timeout=30, what="the subscription renewed")
    assert after["status"]["channelId"] == graph["id"]
    assert [g["id"] for g in graph_subscriptions(sim, client_id)] == [graph["id"]]

    # Graph forgets the subscription: the next renewal meets 404 and recreates it, with a
    # full resync of the calendar.
    access = minted["access_token"]
    deleted = httpx.delete(
        f"{sim.url}/v1.0/subscriptions/{graph['id']}",
        headers={"Authorization": f"Bearer {access}"},
    )
    assert deleted.status_code == 204, deleted.text
    patch_status(kc, ns, name, {"expiration": stamp(120), "registeredAt": stamp(-7 * 86400)})

    def recreated() -> str | None:
        s = kc.json("get", f"whsub/{name}", "-n", ns)
        channel = s["status"].get("channelId")
        return channel if channel != graph["id"] and is_true(s, "Ready") else None

    new_id = poll(recreated, timeout=30, what="the subscription recreated")
    assert [g["id"] for g in graph_subscriptions(sim, client_id)] == [new_id]
    full = poll(
        lambda: [j for j in lifecycle_jobs(kc, ns, "m") if j["spec"]["mode"] == "full"],
        timeout=15,
        what="a full resync job",
    )
    assert full[0]["spec"]["calendarId"] == calendar

    # A `missed` lifecycle event (the gateway records it) becomes an incremental resync.
    patch_status(kc, ns, name, {"lifecycleEvents": [{"event": "missed", "receivedAt": stamp(0)}]})
    poll(
        lambda: [j for j in lifecycle_jobs(kc, ns, "m") if j["spec"]["mode"] == "incremental"],
        timeout=15,
        what="an incremental resync job",
    )
    poll(
        lambda: not kc.json("get", f"whsub/{name}", "-n", ns)["status"].get("lifecycleEvents"),
        timeout=15,
        what="lifecycle events acted on and removed",
    )

    # reauthorizationRequired: the controller reauthorizes the same subscription and clears the
    # event; nothing is recreated.
    current = kc.json("get", f"whsub/{name}", "-n", ns)["status"]["channelId"]
    patch_status(
        kc,
        ns,
        name,
        {"lifecycleEvents": [{"event": "reauthorizationRequired", "receivedAt": stamp(0)}]},
    )
    poll(
        lambda: not kc.json("get", f"whsub/{name}", "-n", ns)["status"].get("lifecycleEvents"),
        timeout=15,
        what="reauthorizationRequired acted on",
    )
    again = kc.json("get", f"whsub/{name}", "-n", ns)
    assert again["status"]["channelId"] == current and is_true(again, "Ready")
    assert [g["id"] for g in graph_subscriptions(sim, client_id)] == [current]

    # subscriptionRemoved: Graph dropped the subscription (the simulator removes it as it sends
    # the event; the gateway would record it as below): recreated, with a full resync.
    fulls = len([j for j in lifecycle_jobs(kc, ns, "m") if j["spec"]["mode"] == "full"])
    sim.admin("POST", f"subscriptions/{current}/lifecycle", {"event": "subscriptionRemoved"})
    patch_status(
        kc,
        ns,
        name,
        {"lifecycleEvents": [{"event": "subscriptionRemoved", "receivedAt": stamp(0)}]},
    )

    def replaced() -> str | None:
        s = kc.json("get", f"whsub/{name}", "-n", ns)
        channel = s["status"].get("channelId")
        fresh = channel != current and is_true(s, "Ready")
        return channel if fresh and not s["status"].get("lifecycleEvents") else None

    replacement = poll(replaced, timeout=30, what="the removed subscription recreated")
    assert [g["id"] for g in graph_subscriptions(sim, client_id)] == [replacement]
    poll(
        lambda: (
            len([j for j in lifecycle_jobs(kc, ns, "m") if j["spec"]["mode"] == "full"]) > fulls
        ),
        timeout=15,
        what="a full resync after subscriptionRemoved",
    )

    # Deleting the connection deletes the Graph subscription before the objects go.
    kc("delete", "calconn/m", "-n", ns, "--wait=false")
    poll(lambda: gone(kc, ns, "calconn", "m"), timeout=45, what="connection m deleted")
    assert subscriptions(kc, ns, "m") == []
    assert graph_subscriptions(sim, client_id) == []


# -- an operator that may not register http:// URLs (the session's) ---------------------------


def test_insecure_notification_url_is_refused_and_degrades_the_connection(
    kubectl: Kubectl, namespace: str, operator: Process, google_sim: Simulator, gateway_url: str
) -> None:
    """The session operator's gateway URL is http:// and it does not allow that."""
    assert gateway_url.startswith("http://")
    sim = google_sim
    email = f"g{uuid.uuid4().hex[:8]}@example.com"
    sim.admin("POST", "users", {"email": email})
    client = sim.admin("POST", "clients", {"redirect_uris": [f"{gateway_url}/cb"]})
    token = sim.admin("POST", "tokens/refresh", {"user": email, "client_id": client["client_id"]})
    kubectl.apply(
        secret(
            "google-client", client_id=client["client_id"], client_secret=client["client_secret"]
        ),
        namespace,
    )
    kubectl.apply(secret("plain-token", refresh_token=token["refresh_token"]), namespace)
    kubectl.apply(connection("plain", "google", email), namespace)

    def refused() -> dict[str, Any] | None:
        subs = subscriptions(kubectl, namespace, "plain")
        ready = cond(subs[0], "Ready") if subs else None
        return subs[0] if ready and ready["reason"] == "InsecureNotificationURL" else None

    sub = poll(refused, timeout=60, what="Ready=False InsecureNotificationURL")
    assert not sub["status"].get("channelId")
    assert "WEBHOOK_ALLOW_INSECURE" in str(cond(sub, "Ready"))

    def degraded() -> dict[str, Any] | None:
        obj = get_conn(kubectl, namespace, "plain")
        d, s = cond(obj, "Degraded"), cond(obj, "Subscribed")
        ok = d and d["status"] == "True" and s and s["status"] == "False"
        return obj if ok else None

    obj = poll(degraded, timeout=30, what="the connection Degraded by push")
    assert cond(obj, "Subscribed")["reason"] == "InsecureNotificationURL"  # type: ignore[index]
    assert cond(obj, "Ready")["status"] == "True"  # type: ignore[index]  # syncing works
    assert [c for c in sim.admin("GET", "channels") if c["user"] == email] == []
    warnings = kubectl.json(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.kind=WebhookSubscription,type=Warning",
    )["items"]
    assert {e["reason"] for e in warnings} == {"InsecureNotificationURL"}
