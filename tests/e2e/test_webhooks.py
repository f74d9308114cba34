"""Provider webhooks against a real API server: `calsync gateway` verifies, limits and
records notifications as SyncJobs (decision 0011).

The gateway runs alone on the quiet cluster, watching one namespace of its own, so no
operator or worker touches what the tests create. The tests play the subscription controller
(they write `status.channelId`) and the worker (they mark a job Running), and mint channel
tokens and clientStates from the keyring Secret the gateway created.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from calsync.security.keyring import KeyRing
from calsync.security.push_tokens import channel_token, client_state
from calsync.webhook_gateway.recorder import job_name
from tests.support import Kubectl, Process, free_port, poll

pytestmark = pytest.mark.e2e

ADDRESS_LIMIT = 5  # rejected calls per second per address: bursts of 10


class Gateway:
    def __init__(self, url: str, namespace: str, kubectl: Kubectl, proc: Process) -> None:
        self.proc = proc
        self.url = url
        self.namespace = namespace
        self.kubectl = kubectl

    @property
    def ring(self) -> KeyRing:
        secret = self.kubectl.json("get", "secret/calsync-keyring", "-n", self.namespace)
        data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        return KeyRing.from_secret_data(data)

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/api/health/webhooks").json())

    def known(self, provider: str) -> int:
        return int(self.health()["subscriptionsByProvider"].get(provider, 0))


@pytest.fixture(scope="module")
def gateway(quiet_kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    namespace = f"wh-{uuid.uuid4().hex[:10]}"
    quiet_kubectl("create", "namespace", namespace)
    port = free_port()
    logs = tmp_path_factory.mktemp("webhook-gateway")
    env = {
        **os.environ,
        "KUBECONFIG": str(quiet_kubectl.kubeconfig),
        "CALSYNC_GATEWAY_PORT": str(port),
        "CALSYNC_BIND_ADDRESS": "127.0.0.1",
        "CALSYNC_NAMESPACES": namespace,
        "CALSYNC_KEYRING_NAMESPACE": namespace,
        "CALSYNC_WEBHOOK_ADDRESS_RATE_LIMIT": str(ADDRESS_LIMIT),
        "CALSYNC_SYNCJOB_HISTORY": "600",
        "CALSYNC_STORE_URL": f"sqlite+aiosqlite:///{logs / 'unused.db'}",
    }
    proc = Process(["gateway"], env, logs / "gateway.log")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.proc.poll() is None, proc.output()
        try:
            return httpx.get(f"{url}/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        poll(ready, timeout=60, what="calsync gateway /readyz")
        yield Gateway(url, namespace, quiet_kubectl, proc)
    finally:
        code = proc.stop()
        quiet_kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        assert code == 0, proc.output()[-4000:]


def push_channel(gw: Gateway, connection: str, provider: str, channel: str) -> dict[str, Any]:
    """A connection, its WebhookSubscription with `channel` in status, known to the gateway."""
    kubectl, ns = gw.kubectl, gw.namespace
    before = gw.known(provider)
    kubectl.apply(
        {
            "apiVersion": "calsync.io/v1alpha1",
            "kind": "CalendarConnection",
            "metadata": {"name": connection},
            "spec": {
                "provider": provider,
                "owner": "someone@example.com",
                "oauth": {"clientSecretRef": {"name": "no-such-secret"}},
            },
        },
        ns,
    )
    uid = kubectl.json("get", f"calconn/{connection}", "-n", ns)["metadata"]["uid"]
    name = f"{connection}-push"
    kubectl.apply(
        {
            "apiVersion": "calsync.io/v1alpha1",
            "kind": "WebhookSubscription",
            "metadata": {
                "name": name,
                "labels": {"calsync.io/connection": connection},
                "ownerReferences": [
                    {
                        "apiVersion": "calsync.io/v1alpha1",
                        "kind": "CalendarConnection",
                        "name": connection,
                        "uid": uid,
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "connection": connection,
                "calendarId": f"{connection}@cal",
                "provider": provider,
            },
        },
        ns,
    )
    kubectl(
        "patch",
        f"whsub/{name}",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"channelId": channel}}),
    )
    poll(lambda: gw.known(provider) > before, timeout=15, what=f"gateway knows {name}")
    return dict(kubectl.json("get", f"whsub/{name}", "-n", ns))


def jobs_of(gw: Gateway, connection: str) -> list[dict[str, Any]]:
    listing = gw.kubectl.json(
        "get", "syncjobs", "-n", gw.namespace, "-l", f"calsync.io/connection={connection}"
    )
    return list(listing["items"])


def google_headers(channel: str, token: str, state: str = "exists") -> dict[str, str]:
    return {
        "X-Goog-Channel-ID": channel,
        "X-Goog-Channel-Token": token,
        "X-Goog-Resource-State": state,
        "X-Goog-Resource-ID": "res-1",
        "X-Goog-Message-Number": "2",
    }


def status_of(gw: Gateway, name: str) -> dict[str, Any]:
    obj = gw.kubectl.json("get", f"whsub/{name}", "-n", gw.namespace)
    return dict(obj.get("status") or {})


def after_a_flush(gw: Gateway) -> None:
    """Wait (with a deadline) until the counter flusher has run again."""
    start = int(gw.health()["counterFlushes"])
    poll(lambda: gw.health()["counterFlushes"] > start, timeout=20, what="a flush")


def test_a_google_notification_becomes_one_syncjob(gateway: Gateway) -> None:
    sub = push_channel(gateway, "g-one", "google", "calsync-g-one-1")
    token = channel_token(gateway.ring, "calsync-g-one-1")
    hook = f"{gateway.url}/api/webhooks/google"
    sync = httpx.post(hook, headers=google_headers("calsync-g-one-1", token, "sync"))
    assert sync.status_code == 200
    assert jobs_of(gateway, "g-one") == []  # the channel's first message is no work
    answer = httpx.post(hook, headers=google_headers("calsync-g-one-1", token))
    assert answer.status_code == 200
    assert answer.headers["X-Frame-Options"] == "DENY"
    jobs = jobs_of(gateway, "g-one")
    assert [j["metadata"]["name"] for j in jobs] == [job_name("g-one", "g-one@cal", 1)]
    spec = jobs[0]["spec"]
    assert (spec["reason"], spec["mode"], spec["calendarId"]) == (
        "webhook",
        "incremental",
        "g-one@cal",
    )
    assert spec["ttlSecondsAfterFinished"] == 600
    owner = jobs[0]["metadata"]["ownerReferences"][0]
    assert owner["uid"] == sub["metadata"]["ownerReferences"][0]["uid"]
    assert owner["controller"] is False

    status = poll(
        lambda: (s := status_of(gateway, "g-one-push")).get("notificationsReceived") == 2 and s,
        timeout=15,
        what="notification counters in status",
    )
    assert status["lastNotificationTime"]


async def test_a_burst_of_200_is_answered_200_and_becomes_a_handful_of_jobs(
    gateway: Gateway,
) -> None:
    push_channel(gateway, "g-burst", "google", "calsync-g-burst-1")
    headers = google_headers("calsync-g-burst-1", channel_token(gateway.ring, "calsync-g-burst-1"))
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        answers = await asyncio.gather(
            *(
                client.post(f"{gateway.url}/api/webhooks/google", headers=headers)
                for _ in range(200)
            )
        )
    assert [a.status_code for a in answers] == [200] * 200
    jobs = jobs_of(gateway, "g-burst")
    assert 1 <= len(jobs) <= 3, [j["metadata"]["name"] for j in jobs]
    poll(
        lambda: status_of(gateway, "g-burst-push").get("notificationsReceived") == 200,
        timeout=15,
        what="200 notifications counted",
    )


def test_forged_unknown_malformed_and_oversized_calls_change_nothing(gateway: Gateway) -> None:
    push_channel(gateway, "g-bad", "google", "calsync-g-bad-1")
    before = gateway.kubectl.json("get", "whsub/g-bad-push", "-n", gateway.namespace)
    ring = gateway.ring
    hook = f"{gateway.url}/api/webhooks/google"
    forged = httpx.post(hook, headers=google_headers("calsync-g-bad-1", channel_token(ring, "x")))
    assert forged.status_code == 401
    unknown = httpx.post(hook, headers=google_headers("nope", channel_token(ring, "nope")))
    assert unknown.status_code == 403
    malformed = httpx.post(hook, headers={"X-Goog-Channel-ID": "calsync-g-bad-1"})
    assert malformed.status_code == 400
    big = httpx.post(
        hook,
        headers=google_headers("calsync-g-bad-1", channel_token(ring, "calsync-g-bad-1")),
        content=b"x" * (64 * 1024 + 1),
    )
    assert big.status_code == 413
    graph = httpx.post(
        f"{gateway.url}/api/webhooks/microsoft",
        json={"value": [{"subscriptionId": "calsync-g-bad-1", "clientState": "a.b"}]},
    )
    assert graph.status_code == 403  # a Google channel id is no Graph subscription
    for answer in (forged, unknown, malformed, big, graph):
        assert answer.headers["Content-Security-Policy"] == "default-src 'self'"
    after_a_flush(gateway)
    after = gateway.kubectl.json("get", "whsub/g-bad-push", "-n", gateway.namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert jobs_of(gateway, "g-bad") == []


def test_a_flood_of_forged_calls_from_one_address_is_cut_off(gateway: Gateway) -> None:
    push_channel(gateway, "g-flood", "google", "calsync-g-flood-1")
    hook = f"{gateway.url}/api/webhooks/google"
    forged = google_headers("calsync-g-flood-1", channel_token(gateway.ring, "other"))
    flooder = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    began = time.monotonic()
    with flooder:
        statuses = [flooder.post(hook, headers=forged).status_code for _ in range(40)]
    elapsed = time.monotonic() - began
    # A burst of 2 x the limit is let through, then the bucket refills at the limit per second
    # while the loop runs (a busy machine makes the loop slower, not the limit looser).
    assert statuses.count(401) <= 2 * ADDRESS_LIMIT + ADDRESS_LIMIT * elapsed + 1
    assert statuses.count(429) >= 40 - (2 * ADDRESS_LIMIT + ADDRESS_LIMIT * elapsed + 1)
    assert set(statuses) == {401, 429} and statuses[: 2 * ADDRESS_LIMIT] == [401] * 10
    # Another address is not affected.
    assert httpx.post(hook, headers=forged).status_code == 401
    assert jobs_of(gateway, "g-flood") == []
    metrics = httpx.get(f"{gateway.url}/metrics").text
    # The series exists at 0 from the start (alerts divide it): the calls must have counted.
    limited = 'calsync_webhook_requests_total{provider="google",result="rate_limited"} '
    assert float(metrics.split(limited, 1)[1].split()[0]) > 0


def test_graph_handshake_batch_and_lifecycle(gateway: Gateway) -> None:
    sub = push_channel(gateway, "m-one", "microsoft", "graph-sub-m-one")
    for path in ("/api/webhooks/microsoft", "/api/webhooks/microsoft/lifecycle"):
        answer = httpx.post(f"{gateway.url}{path}", params={"validationToken": "a b+c&d=é"})
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        assert answer.text == "a b+c&d=é"

    state = client_state(gateway.ring, sub["metadata"]["uid"])
    item = {
        "subscriptionId": "graph-sub-m-one",
        "clientState": state,
        "changeType": "updated",
        "resource": "me/events/AAA",
        "resourceData": {"id": "AAA"},
        "tenantId": "t",
    }
    batch = {"value": [item, {**item, "changeType": "created"}]}
    answer = httpx.post(f"{gateway.url}/api/webhooks/microsoft", json=batch)
    assert answer.status_code == 202
    jobs = jobs_of(gateway, "m-one")
    assert len(jobs) == 1 and jobs[0]["spec"]["calendarId"] == "m-one@cal"

    # A worker picks the job up; a lifecycle `missed` is recorded and needs a new sync.
    name = jobs[0]["metadata"]["name"]
    gateway.kubectl(
        "patch", f"sj/{name}", "-n", gateway.namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": {"phase": "Running"}}),
    )  # fmt: skip
    missed = {
        "value": [
            {
                "subscriptionId": "graph-sub-m-one",
                "clientState": state,
                "lifecycleEvent": "missed",
                "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
                "tenantId": "t",
            }
        ]
    }
    answer = httpx.post(f"{gateway.url}/api/webhooks/microsoft/lifecycle", json=missed)
    assert answer.status_code == 202
    events = status_of(gateway, "m-one-push").get("lifecycleEvents") or []
    assert [e["event"] for e in events] == ["missed"]  # written before the answer
    assert len(jobs_of(gateway, "m-one")) == 2
    unknown = {"value": [{**missed["value"][0], "lifecycleEvent": "somethingNew"}]}
    answer = httpx.post(f"{gateway.url}/api/webhooks/microsoft/lifecycle", json=unknown)
    assert answer.status_code == 202
    forged = {"value": [{**item, "clientState": client_state(gateway.ring, "someone-else")}]}
    assert httpx.post(f"{gateway.url}/api/webhooks/microsoft", json=forged).status_code == 401
    assert len(jobs_of(gateway, "m-one")) == 2


def test_a_job_claimed_under_the_caches_feet_is_followed_by_a_new_one(gateway: Gateway) -> None:
    push_channel(gateway, "g-race", "google", "calsync-g-race-1")
    hook = f"{gateway.url}/api/webhooks/google"
    headers = google_headers("calsync-g-race-1", channel_token(gateway.ring, "calsync-g-race-1"))
    assert httpx.post(hook, headers=headers).status_code == 200
    first = job_name("g-race", "g-race@cal", 1)
    job = gateway.kubectl.json("get", f"sj/{first}", "-n", gateway.namespace)
    # The worker's claim: a status patch guarded by the version it picked the job at.
    claim = {
        "metadata": {"resourceVersion": job["metadata"]["resourceVersion"]},
        "status": {"phase": "Running"},
    }
    gateway.kubectl(
        "patch", f"sj/{first}", "-n", gateway.namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps(claim),
    )  # fmt: skip
    assert httpx.post(hook, headers=headers).status_code == 200
    names = sorted(j["metadata"]["name"] for j in jobs_of(gateway, "g-race"))
    assert names == sorted([first, job_name("g-race", "g-race@cal", 2)])
    # The next notification touches the Pending second job instead of creating a third.
    assert httpx.post(hook, headers=headers).status_code == 200
    assert len(jobs_of(gateway, "g-race")) == 2
    second = gateway.kubectl.json(
        "get", f"sj/{job_name('g-race', 'g-race@cal', 2)}", "-n", gateway.namespace
    )
    assert "calsync.io/notified-at" in second["metadata"]["annotations"]


def test_health_endpoints(gateway: Gateway) -> None:
    overall = httpx.get(f"{gateway.url}/api/health")
    assert overall.status_code == 200 and overall.json()["status"] == "ok"
    database = httpx.get(f"{gateway.url}/api/health/database").json()
    assert database["detail"] == "not used by the gateway"
    providers = httpx.get(f"{gateway.url}/api/health/providers").json()
    assert providers["keyringLoaded"] is True
    sync = httpx.get(f"{gateway.url}/api/health/sync").json()
    assert sync["queueCap"] == 5000 and sync["status"] == "ok"
    assert gateway.health()["cachesSynced"] == {"webhookSubscriptions": True, "syncJobs": True}


def test_rejections_are_logged_without_the_token(gateway: Gateway) -> None:
    """Security lines carry address, provider, result and a channel prefix, never a token."""
    token = channel_token(gateway.ring, "calsync-never-known")
    answer = httpx.post(
        f"{gateway.url}/api/webhooks/google", headers=google_headers("calsync-never-known", token)
    )
    assert answer.status_code == 403

    def logged() -> dict[str, Any] | None:
        for line in gateway.proc.output().splitlines():
            if "calsync-neve" in line and line.startswith("{"):
                return dict(json.loads(line))
        return None

    line = poll(logged, timeout=10, what="the security log line")
    assert line["security"] == "webhook_rejected"
    assert (line["provider"], line["result"], line["status"]) == ("google", "unknown", 403)
    assert line["address"] == "127.0.0.1" and line["channel"] == "calsync-neve"
    assert token not in gateway.proc.output()
    assert token.split(".", 1)[1] not in gateway.proc.output()
