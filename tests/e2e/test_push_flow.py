"""Push notifications end to end: provider change -> notification over HTTP -> gateway ->
SyncJob -> worker -> store (decision 0011).

Everything is real: the quiet cluster's API server, `calsync run` (operator, worker and an
embedded gateway) scoped to a namespace of its own, a separate `calsync gateway` process, and
simulators of this module's own that deliver notifications over HTTP. The WebhookSubscriptions
are registered (`CALSYNC_GATEWAY_URL`) to the *separate* gateway, which the tests can kill and
restart; the embedded one serves as a second replica in the two-gateway test. Connections poll
only every 24 h, and while they are Subscribed the operator polls at PUSH_POLL_INTERVAL (1 h),
so within these tests only a notification can explain a sync. A webhook job waits
WEBHOOK_COALESCE (3 s) after its last notification before it runs. The store is read back with
`calsync events`, as a user would.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from calsync.security.keyring import KeyRing
from calsync.security.push_tokens import channel_token
from tests.fixtures.simulators import Simulator, _start
from tests.support import Kubectl, Process, connection_uid, free_port, poll, stored_events

pytestmark = pytest.mark.e2e

GRAPH_SCOPE = "offline_access https://graph.microsoft.com/Calendars.ReadWrite"
FINISHED = {"Succeeded", "Failed", "Superseded"}


# -- processes --------------------------------------------------------------------------------


def ready(url: str, proc: Process) -> bool:
    if proc.proc.poll() is not None:
        pytest.fail(f"process exited with {proc.proc.returncode}:\n{proc.output()[-4000:]}")
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Gateway:
    """A `calsync gateway` process that can be killed and started again on the same port."""

    def __init__(self, env: dict[str, str], port: int, logs: Path) -> None:
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.logs = logs
        self.starts = 0
        self.proc: Process | None = None

    def start(self) -> None:
        self.starts += 1
        self.proc = Process(["gateway"], self.env, self.logs / f"gateway-{self.starts}.log")

    def wait_ready(self, timeout: float = 60) -> None:
        proc = self.proc
        assert proc is not None
        poll(lambda: ready(f"{self.url}/readyz", proc), timeout=timeout, what="gateway /readyz")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.proc.kill()  # SIGKILL: no shutdown, no flush, connections cut
        self.proc.proc.wait()
        self.proc.stop()  # closes the log file

    @property
    def dead(self) -> bool:
        return self.proc is None or self.proc.proc.poll() is not None

    def stop(self) -> int:
        return self.proc.stop() if self.proc is not None else 0


@pytest.fixture(scope="module")
def kc(quiet_kubectl: Kubectl) -> Kubectl:
    return quiet_kubectl


@pytest.fixture(scope="module")
def ns(kc: Kubectl) -> Iterator[str]:
    name = f"pflow-{uuid.uuid4().hex[:8]}"
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
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("push-flow-store") / "events.db"


@pytest.fixture(scope="module")
def gateway_port() -> int:
    """The port of the separate gateway, the URL the subscriptions are registered with."""
    return free_port()


@pytest.fixture(scope="module")
def base_env(
    kc: Kubectl, ns: str, gsim: Simulator, msim: Simulator, store: Path, gateway_port: int
) -> dict[str, str]:
    """Settings shared by `calsync run` and `calsync gateway`."""
    return {
        **os.environ,
        "KUBECONFIG": str(kc.kubeconfig),
        "CALSYNC_NAMESPACES": ns,
        "CALSYNC_KEYRING_NAMESPACE": ns,
        "CALSYNC_BIND_ADDRESS": "127.0.0.1",
        "CALSYNC_LOG_LEVEL": "DEBUG",
        "CALSYNC_STORE_URL": f"sqlite+aiosqlite:///{store}",
        "CALSYNC_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
        "CALSYNC_WEBHOOK_ALLOW_INSECURE": "true",
        # The bursts below are far more than a real channel sends; the limiter is not tested.
        "CALSYNC_WEBHOOK_RATE_LIMIT": "1000000",
        "CALSYNC_SYNCJOB_HISTORY": "600",
        "CALSYNC_SYNC_RETRY_BACKOFF": "0.2",
        "CALSYNC_GOOGLE_API_URL": gsim.url,
        "CALSYNC_GOOGLE_AUTHORIZE_URL": f"{gsim.url}/o/oauth2/v2/auth",
        "CALSYNC_GOOGLE_TOKEN_URL": f"{gsim.url}/token",
        "CALSYNC_MICROSOFT_GRAPH_URL": msim.url,
        "CALSYNC_MICROSOFT_LOGIN_URL": msim.url,
    }


@pytest.fixture(scope="module")
def embedded_gateway_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def operator(
    kc: Kubectl,
    ns: str,
    base_env: dict[str, str],
    embedded_gateway_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Process]:
    """`calsync run`: controllers, worker, and a gateway of its own on another port."""
    health = free_port()
    env = {
        **base_env,
        "CALSYNC_METRICS_PORT": str(free_port()),
        "CALSYNC_HEALTH_PORT": str(health),
        "CALSYNC_GATEWAY_PORT": str(embedded_gateway_port),
        "CALSYNC_OPERATOR_LEASE_NAME": f"push-flow-{uuid.uuid4().hex[:6]}",
    }
    proc = Process(["run"], env, tmp_path_factory.mktemp("push-flow-run") / "operator.log")
    try:
        poll(lambda: ready(f"http://127.0.0.1:{health}/healthz", proc), what="operator /healthz")
        poll(
            lambda: ready(f"http://127.0.0.1:{embedded_gateway_port}/readyz", proc),
            what="the embedded gateway /readyz",
        )
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, f"operator exited with {code}:\n{proc.output()[-4000:]}"


@pytest.fixture(scope="module")
def gateway(
    operator: Process,
    base_env: dict[str, str],
    gateway_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """The separate `calsync gateway` (same cluster, namespace, keyring and settings)."""
    env = {
        **base_env,
        "CALSYNC_GATEWAY_PORT": str(gateway_port),
        "CALSYNC_METRICS_PORT": "0",
        "CALSYNC_HEALTH_PORT": "0",
    }
    gw = Gateway(env, gateway_port, tmp_path_factory.mktemp("push-flow-gateway"))
    gw.start()
    try:
        gw.wait_ready()
        yield gw
    finally:
        code = gw.stop()  # the last one started (the tests restart the one they kill)
        assert gw.proc is not None
        assert code == 0, f"gateway exited with {code}:\n{gw.proc.output()[-4000:]}"


# -- setting up connections ---------------------------------------------------------------------


def secret(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"calsync.io/credentials": "true"}},
        "stringData": data,
    }


def connection(name: str, provider: str, owner: str) -> dict[str, Any]:
    return {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "CalendarConnection",
        "metadata": {"name": name},
        "spec": {
            "provider": provider,
            "owner": owner,
            "oauth": {
                "clientSecretRef": {"name": f"{name}-client"},
                "tokenSecretRef": {"name": f"{name}-token"},
            },
            # Only push can explain a sync: polls every 24 h (and at PUSH_POLL_INTERVAL, 1 h,
            # once subscribed).
            "sync": {"push": True, "pollInterval": "24h"},
        },
    }


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def google_event(summary: str, start: dt.datetime, hours: int = 1) -> dict[str, Any]:
    return {
        "summary": summary,
        "location": f"room {len(summary)}",
        "start": {"dateTime": start.isoformat().replace("+00:00", "Z"), "timeZone": "UTC"},
        "end": {
            "dateTime": (start + dt.timedelta(hours=hours)).isoformat().replace("+00:00", "Z"),
            "timeZone": "UTC",
        },
    }


def google_connection(kc: Kubectl, ns: str, sim: Simulator, name: str, events: int) -> str:
    """A Google user with `events` events in the primary calendar and a connection to it;
    the user's e-mail (the calendar's id)."""
    email = f"{name}-{uuid.uuid4().hex[:6]}@example.com"
    sim.admin("POST", "users", {"email": email})
    start = utc_now() + dt.timedelta(days=1)
    for i in range(events):
        sim.admin(
            "POST",
            f"calendars/{email}/events",
            google_event(f"seed {i}", start + dt.timedelta(hours=3 * i)),
        )
    client = sim.admin("POST", "clients", {"redirect_uris": ["http://127.0.0.1/cb"]})
    token = sim.admin("POST", "tokens/refresh", {"user": email, "client_id": client["client_id"]})
    kc.apply(
        secret(
            f"{name}-client", client_id=client["client_id"], client_secret=client["client_secret"]
        ),
        ns,
    )
    kc.apply(secret(f"{name}-token", refresh_token=token["refresh_token"]), ns)
    kc.apply(connection(name, "google", email), ns)
    return email


def graph_connection(kc: Kubectl, ns: str, sim: Simulator, name: str) -> tuple[str, str]:
    """A Graph user and a connection to it; (address, default calendar id)."""
    address = f"{name}-{uuid.uuid4().hex[:6]}@example.com"
    sim.admin("POST", "users", {"address": address})
    calendar = sim.admin("GET", f"users/{address}/calendars")["value"][0]["id"]
    client_id, client_secret = f"app-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    sim.admin(
        "POST",
        "clients",
        {
            "client_id": client_id,
            "client_secret": client_secret,
            "redirect_uris": ["http://127.0.0.1/cb"],
        },
    )
    minted = sim.admin(
        "POST", "tokens/mint", {"user": address, "client_id": client_id, "scope": GRAPH_SCOPE}
    )
    kc.apply(secret(f"{name}-client", client_id=client_id, client_secret=client_secret), ns)
    kc.apply(secret(f"{name}-token", refresh_token=minted["refresh_token"]), ns)
    kc.apply(connection(name, "microsoft", address), ns)
    return address, calendar


def is_true(obj: dict[str, Any], ctype: str) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return bool(c["status"] == "True")
    return False


def jobs(kc: Kubectl, ns: str, conn: str) -> list[dict[str, Any]]:
    items = kc.json("get", "sj", "-n", ns, "-l", f"calsync.io/connection={conn}")["items"]
    return list(items)


def phase(job: dict[str, Any]) -> str:
    return str((job.get("status") or {}).get("phase") or "Pending")


def subscribed(kc: Kubectl, ns: str, conn: str) -> list[dict[str, Any]] | None:
    """The connection's WebhookSubscriptions once all are Ready, the connection is Subscribed
    and no SyncJob of it is waiting or running; else None."""
    obj = kc.json("get", f"calconn/{conn}", "-n", ns)
    calendars = (obj.get("status") or {}).get("calendars") or []
    if not calendars or not is_true(obj, "Subscribed"):
        return None
    subs = kc.json("get", "whsub", "-n", ns, "-l", f"calsync.io/connection={conn}")["items"]
    if len(subs) != len(calendars) or not all(is_true(s, "Ready") for s in subs):
        return None
    if any(phase(j) not in FINISHED for j in jobs(kc, ns, conn)):
        return None
    return list(subs)


def wait_subscribed(kc: Kubectl, ns: str, conn: str) -> list[dict[str, Any]]:
    subs: list[dict[str, Any]] = poll(
        lambda: subscribed(kc, ns, conn), timeout=60, what=f"{conn} subscribed and idle"
    )
    return subs


# -- comparing the store with the simulator ---------------------------------------------------


def instant(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)


Row = tuple[str, dt.datetime, dt.datetime, str, str]


def stored_rows(store: Path, key: str) -> list[Row]:
    events = stored_events(store, key, "--from", "2000-01-01", "--to", "2100-01-01")
    return sorted(
        (e["uid"], instant(e["start"]), instant(e["end"]), e["summary"], e["location"] or "")
        for e in events
    )


def google_rows(sim: Simulator, calendar: str) -> list[Row]:
    items = sim.admin("GET", f"calendars/{calendar}/events", live="true")
    return sorted(
        (
            e["iCalUID"],
            instant(e["start"]["dateTime"]),
            instant(e["end"]["dateTime"]),
            e.get("summary", ""),
            e.get("location", ""),
        )
        for e in items
        if e.get("status") != "cancelled"
    )


def same_as_simulator(store: Path, key: str, sim: Simulator, calendar: str) -> bool:
    return stored_rows(store, key) == google_rows(sim, calendar)


def describe_difference(store: Path, key: str, sim: Simulator, calendar: str) -> str:
    have, want = set(stored_rows(store, key)), set(google_rows(sim, calendar))
    return (
        f"{len(have)} stored, {len(want)} in the simulator; "
        f"store only: {sorted(have - want)[:3]}; simulator only: {sorted(want - have)[:3]}"
    )


def converge(check: Callable[[], Any], *, timeout: float, explain: Callable[[], str]) -> Any:
    """`poll` for "jobs finished and the store equals the simulator"; on timeout says how
    the two differ."""
    try:
        return poll(check, timeout=timeout, what="the store to equal the simulator")
    except pytest.fail.Exception as exc:
        pytest.fail(f"{exc}: {explain()}")


class Changer:
    """Changes one Google calendar through the simulator's admin API: creates, edits, moves
    and deletes events in turn (each change makes the simulator send `exists`)."""

    def __init__(self, sim: Simulator, calendar: str) -> None:
        self.url = f"{sim.url}/_admin/calendars/{calendar}/events"
        live = sim.admin("GET", f"calendars/{calendar}/events", live="true")
        self.ids = sorted(e["id"] for e in live if e.get("status") != "cancelled")
        self.base = utc_now() + dt.timedelta(days=2)
        self.made = 0

    async def change(self, session: aiohttp.ClientSession) -> None:
        i = self.made
        self.made += 1
        kind = i % 4
        if kind == 0 or len(self.ids) < 2:
            body = google_event(f"new {i}", self.base + dt.timedelta(hours=i))
            method, url = "POST", self.url
        elif kind == 1:
            body = {"summary": f"edited {i}", "location": f"floor {i}"}
            method, url = "PATCH", f"{self.url}/{self.ids[i % len(self.ids)]}"
        elif kind == 2:
            moved = google_event("x", self.base + dt.timedelta(days=1, hours=i), hours=2)
            body = {"start": moved["start"], "end": moved["end"]}
            method, url = "PATCH", f"{self.url}/{self.ids[i % len(self.ids)]}"
        else:
            body, method = None, "DELETE"
            url = f"{self.url}/{self.ids.pop(i % len(self.ids))}"
        async with session.request(method, url, json=body) as answer:
            text = await answer.text()
            assert answer.status < 300, f"change {i}: {answer.status} {text}"
            if method == "POST":
                self.ids.append(json.loads(text)["id"])


def keyring(kc: Kubectl, ns: str) -> KeyRing:
    """The keyring the operator created (the Secret both gateways read)."""
    obj = kc.json("get", "secret/calsync-keyring", "-n", ns)
    return KeyRing.from_secret_data({k: base64.b64decode(v) for k, v in obj["data"].items()})


def google_headers(channel: str, token: str) -> dict[str, str]:
    return {
        "X-Goog-Channel-ID": channel,
        "X-Goog-Channel-Token": token,
        "X-Goog-Resource-State": "exists",
        "X-Goog-Resource-ID": "res-test",
        "X-Goog-Message-Number": "100",
    }


# -- 1. a change reaches the store through push alone -------------------------------------------


def test_a_change_in_either_provider_reaches_the_store_through_push(
    kc: Kubectl,
    ns: str,
    gsim: Simulator,
    msim: Simulator,
    store: Path,
    gateway: Gateway,
) -> None:
    email = google_connection(kc, ns, gsim, "g1", events=2)
    address, calendar = graph_connection(kc, ns, msim, "m1")
    wait_subscribed(kc, ns, "g1")
    wait_subscribed(kc, ns, "m1")
    before = {conn: {j["metadata"]["name"] for j in jobs(kc, ns, conn)} for conn in ("g1", "m1")}
    keys = {conn: connection_uid(kc, ns, conn) for conn in ("g1", "m1")}

    marker = uuid.uuid4().hex[:8]
    start = utc_now() + dt.timedelta(days=3)
    gsim.admin("POST", f"calendars/{email}/events", google_event(f"pushed {marker}", start))
    msim.admin(
        "POST",
        f"users/{address}/calendars/{calendar}/events",
        {
            "subject": f"pushed {marker}",
            "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {
                "dateTime": (start + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "UTC",
            },
        },
    )

    def stored(conn: str) -> bool:
        events = stored_events(store, keys[conn], "--from", "2000-01-01", "--to", "2100-01-01")
        return any(e["summary"] == f"pushed {marker}" for e in events)

    # One deadline for both: 30 s from the changes.
    poll(lambda: stored("g1") and stored("m1"), timeout=30, what="both events in the store")

    for conn in ("g1", "m1"):
        new = [j for j in jobs(kc, ns, conn) if j["metadata"]["name"] not in before[conn]]
        assert new, f"{conn}: no SyncJob since the change"
        assert {j["spec"]["reason"] for j in new} == {"webhook"}, [j["spec"] for j in new]
        done = [j for j in new if phase(j) == "Succeeded" and j["status"]["counts"]["upserted"]]
        assert done, f"{conn}: no webhook job wrote the event: {[j['status'] for j in new]}"


# -- 2. two gateway replicas, one burst -------------------------------------------------------


async def test_a_burst_to_two_gateways_becomes_few_jobs_and_the_store_converges(
    kc: Kubectl,
    ns: str,
    gsim: Simulator,
    store: Path,
    gateway: Gateway,
    embedded_gateway_port: int,
) -> None:
    """Two replicas (the separate gateway, where the simulator delivers, and the one in
    `calsync run`) get the same notifications while the calendar changes; deterministic job
    names and guarded touches make them share a handful of jobs, and nothing is lost."""
    email = google_connection(kc, ns, gsim, "g2", events=6)
    [sub] = wait_subscribed(kc, ns, "g2")
    key = connection_uid(kc, ns, "g2")
    assert same_as_simulator(store, key, gsim, email)
    before = {j["metadata"]["name"] for j in jobs(kc, ns, "g2")}
    channel = sub["status"]["channelId"]
    headers = google_headers(channel, channel_token(keyring(kc, ns), channel))
    hooks = [
        f"{gateway.url}/api/webhooks/google",
        f"http://127.0.0.1:{embedded_gateway_port}/api/webhooks/google",
    ]
    changes, per_change = 20, 10  # 200 notifications to each gateway

    # aiohttp, not httpx: httpx's pool serialises hundreds of concurrent calls into seconds,
    # which would stretch the burst and so the number of jobs it needs.
    changer = Changer(gsim, email)
    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(hook: str) -> int:
            async with session.post(hook, headers=headers) as answer:
                await answer.read()
                return answer.status

        waves: list[asyncio.Future[list[int]]] = []
        began = time.monotonic()
        for _ in range(changes):
            await changer.change(session)
            # Each change is followed by notifications to both gateways at once, not waited
            # for: the burst runs alongside the changes, and its last wave comes after the
            # last change.
            for hook in hooks:
                waves.append(asyncio.gather(*(post(hook) for _ in range(per_change))))
        answered = await asyncio.gather(*waves)
        took = time.monotonic() - began

    statuses = [status for wave in answered for status in wave]
    assert len(statuses) == len(hooks) * changes * per_change
    assert set(statuses) == {200}, sorted(set(statuses))

    gsim.admin("POST", "push/idle")  # the simulator's own notifications are in too

    def settled() -> list[dict[str, Any]] | None:
        current = [j for j in jobs(kc, ns, "g2") if j["metadata"]["name"] not in before]
        if any(phase(j) not in FINISHED for j in current):
            return None
        if not same_as_simulator(store, key, gsim, email):
            return None
        return current

    new = converge(
        settled, timeout=45, explain=lambda: describe_difference(store, key, gsim, email)
    )
    webhook = [j for j in new if j["spec"]["reason"] == "webhook"]
    print(
        f"\n{len(webhook)} webhook SyncJobs for {changes} changes and {len(statuses)} "
        f"notifications to {len(hooks)} gateways within {took:.2f} s: "
        + ", ".join(f"{j['metadata']['name']}={phase(j)}" for j in webhook)
    )
    assert {j["spec"]["reason"] for j in new} == {"webhook"}
    assert all(j["spec"]["calendarId"] == email for j in webhook)
    assert 1 <= len(webhook) <= 10
    assert len(stored_rows(store, key)) >= 6  # not a comparison of two empty lists


# -- 3. the gateway killed during a burst -----------------------------------------------------


def deliveries(sim: Simulator, channel: str) -> list[dict[str, Any]]:
    return list(sim.admin("GET", f"channels/{channel}")["deliveries"])


async def test_a_gateway_killed_during_a_burst_loses_nothing(
    kc: Kubectl, ns: str, gsim: Simulator, store: Path, gateway: Gateway
) -> None:
    """SIGKILL the gateway the channel delivers to while the calendar changes, change on
    while it is down, start it again on the same port: the store catches up with the
    simulator through the simulator's own retries (5xx and refused connections are retried
    with back-off, 0.5 s doubling, 4 tries per message, messages of a channel in order, so a
    message given up while the gateway is away is followed by the queued later ones).

    No poll can help here: the connection polls every 24 h (1 h while Subscribed), and the
    operator's PUSH_POLL_INTERVAL cannot be under 60 s, more than this test may take. So every
    SyncJob after the kill must be a webhook job."""
    email = google_connection(kc, ns, gsim, "g3", events=6)
    [sub] = wait_subscribed(kc, ns, "g3")
    key = connection_uid(kc, ns, "g3")
    assert same_as_simulator(store, key, gsim, email)
    before = {j["metadata"]["name"] for j in jobs(kc, ns, "g3")}
    channel = sub["status"]["channelId"]
    already = len(deliveries(gsim, channel))

    changer = Changer(gsim, email)
    killed_at = restarted_at = 0.0
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(6):  # deliveries flowing and being recorded
                await changer.change(session)
                await asyncio.sleep(0.1)  # paces the changes; waits for nothing
            killed_at = time.time()
            gateway.kill()
            # ~4 s of changes while the gateway is gone: longer than WEBHOOK_COALESCE (3 s),
            # so the job recorded before the kill runs in the middle of them and the later
            # ones reach the store only through notifications retried after the restart.
            for _ in range(20):
                await changer.change(session)
                await asyncio.sleep(0.2)
    finally:
        if gateway.dead:
            gateway.start()  # same port, same settings
            restarted_at = time.time()

    def settled() -> list[dict[str, Any]] | None:
        current = [j for j in jobs(kc, ns, "g3") if j["metadata"]["name"] not in before]
        if any(phase(j) not in FINISHED for j in current):
            return None
        if not same_as_simulator(store, key, gsim, email):
            return None
        return current

    def explain() -> str:
        log = deliveries(gsim, channel)[already:]
        attempts = "; ".join(
            f"#{d['message_number']} try {d['attempt']} +{d['at'] - killed_at:.2f}s: "
            f"{d['status'] or d['error']} {d['outcome']}"
            for d in log
        )
        return (
            f"{describe_difference(store, key, gsim, email)}; restarted "
            f"+{restarted_at - killed_at:.2f}s after the kill; deliveries: {attempts}"
        )

    # Recovery: the gateway is back and the simulator has delivered (or given up) every
    # notification it queued; then the store must equal the simulator.
    gateway.wait_ready()
    gsim.admin("POST", "push/idle")
    new = converge(settled, timeout=45, explain=explain)
    print(f"\n{explain()}")
    log = deliveries(gsim, channel)[already:]
    assert {j["spec"]["reason"] for j in new} == {"webhook"}

    # The kill did hit deliveries: refused while down, retried, delivered after the restart.
    refused = [d for d in log if d["at"] >= killed_at and d["status"] is None]
    assert refused, "no delivery met the dead gateway"
    assert any(d["outcome"] == "delivered" and d["at"] >= restarted_at for d in log)
    # A genuine notification is never refused (4xx: given up), not even by a gateway that
    # has just started.
    assert not [d for d in log if 400 <= (d["status"] or 0) < 500], explain()
    last = max(d["message_number"] for d in log)
    assert any(d["message_number"] == last and d["outcome"] == "delivered" for d in log)
    assert len(stored_rows(store, key)) >= 6
