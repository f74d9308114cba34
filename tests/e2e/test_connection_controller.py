"""The CalendarConnection controller against a real API server and the operator as a process."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from calsync.testing.icalgen import generate_events
from tests.fixtures.manifests import secret
from tests.support import Kubectl, Process, backdate_last_attempt, condition, holds, poll

pytestmark = pytest.mark.e2e


def caldav_connection(
    name: str, secret: str, url: str = "https://dav.example.com/"
) -> dict[str, Any]:
    return {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "CalendarConnection",
        "metadata": {"name": name},
        "spec": {
            "provider": "caldav",
            "owner": "alice@example.com",
            "caldav": {
                "url": url,
                "allowInsecureHTTP": url.startswith("http://"),
                "credentialsSecretRef": {"name": secret},
            },
        },
    }


def events(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    items = kubectl.json(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name},involvedObject.kind=CalendarConnection",
    )["items"]
    return list(items)


def test_missing_secret_then_secret_appears(
    kubectl: Kubectl, namespace: str, operator: Process, caldav_calendar: Any
) -> None:
    kubectl.apply(caldav_connection("alice", "alice-dav", caldav_calendar.url), namespace)

    ready = poll(lambda: condition(kubectl, namespace, "alice", "Ready"), what="a Ready condition")
    assert ready["status"] == "False"
    assert ready["reason"] == "SecretNotFound"
    assert "alice-dav" in ready["message"]
    obj = kubectl.json("get", "calconn/alice", "-n", namespace)
    assert ready["observedGeneration"] == obj["metadata"]["generation"]
    # status.observedGeneration is the generation the store reflects: none before a sync.
    assert "observedGeneration" not in obj["status"]
    assert "lastTransitionTime" in ready
    warning = poll(
        lambda: [e for e in events(kubectl, namespace, "alice") if e["reason"] == "SecretNotFound"],
        what="a SecretNotFound Event",
    )
    assert warning[0]["type"] == "Warning"

    # The Secret appears; nobody touches the connection.
    generation = obj["metadata"]["generation"]
    kubectl.apply(
        secret("alice-dav", username=caldav_calendar.user, password=caldav_calendar.password),
        namespace,
    )
    kubectl("wait", "--for=condition=Ready", "calconn/alice", "-n", namespace, "--timeout=60s")
    obj = kubectl.json("get", "calconn/alice", "-n", namespace)
    assert obj["metadata"]["generation"] == generation
    assert obj["status"]["observedGeneration"] == generation
    ready = condition(kubectl, namespace, "alice", "Ready")
    assert ready is not None and ready["reason"] == "Synced"
    poll(
        lambda: [e for e in events(kubectl, namespace, "alice") if e["type"] == "Normal"],
        what="a Normal Event for the Ready transition",
    )
    # The password never shows up in status or events.
    assert caldav_calendar.password not in str(obj)
    assert caldav_calendar.password not in str(events(kubectl, namespace, "alice"))


def test_secret_missing_a_key_then_fixed(
    kubectl: Kubectl, namespace: str, operator: Process, caldav_calendar: Any
) -> None:
    kubectl.apply(secret("bob-dav", username=caldav_calendar.user), namespace)
    kubectl.apply(caldav_connection("bob", "bob-dav", caldav_calendar.url), namespace)
    ready = poll(
        lambda: (c := condition(kubectl, namespace, "bob", "Ready")) and c["reason"] != "" and c,
        what="a Ready condition",
    )
    assert (ready["status"], ready["reason"]) == ("False", "SecretKeyMissing")
    assert "'password'" in ready["message"]

    kubectl.apply(
        secret("bob-dav", username=caldav_calendar.user, password=caldav_calendar.password),
        namespace,
    )
    kubectl("wait", "--for=condition=Ready", "calconn/bob", "-n", namespace, "--timeout=60s")

    # Breaking it again is noticed too.
    kubectl("delete", "secret", "bob-dav", "-n", namespace)
    poll(
        lambda: (c := condition(kubectl, namespace, "bob", "Ready")) and c["status"] == "False",
        what="Ready=False after the Secret is deleted",
    )


def test_oauth_connection_without_token_needs_consent(
    kubectl: Kubectl, namespace: str, operator: Process
) -> None:
    kubectl.apply(secret("google-client", client_id="id", client_secret="shh"), namespace)
    kubectl.apply(
        {
            "apiVersion": "calsync.io/v1alpha1",
            "kind": "CalendarConnection",
            "metadata": {"name": "carol"},
            "spec": {"provider": "google", "oauth": {"clientSecretRef": {"name": "google-client"}}},
        },
        namespace,
    )
    auth = poll(
        lambda: condition(kubectl, namespace, "carol", "Authenticated"),
        what="an Authenticated condition",
    )
    assert (auth["status"], auth["reason"]) == ("False", "ConsentRequired")


def synced_then_suspended(
    kubectl: Kubectl, namespace: str, calendar: Any, name: str, **sync: str
) -> dict[str, Any]:
    """A CalDAV connection on `calendar`, synced (Ready), then suspended (Ready=False,
    reason Suspended); returns its manifest."""
    kubectl.apply(
        secret(f"{name}-dav", username=calendar.user, password=calendar.password), namespace
    )
    conn = caldav_connection(name, f"{name}-dav", calendar.url)
    if sync:
        conn["spec"]["sync"] = dict(sync)
    kubectl.apply(conn, namespace)
    kubectl("wait", "--for=condition=Ready", f"calconn/{name}", "-n", namespace, "--timeout=60s")
    conn["spec"]["suspend"] = True
    kubectl.apply(conn, namespace)
    poll(
        lambda: (c := condition(kubectl, namespace, name, "Ready")) and c["reason"] == "Suspended",
        what="Ready=False reason Suspended",
    )
    return conn


def test_suspended_connection_is_not_ready(
    kubectl: Kubectl, namespace: str, operator: Process, caldav_calendar: Any
) -> None:
    synced_then_suspended(kubectl, namespace, caldav_calendar, "dave")
    obj = kubectl.json("get", "calconn/dave", "-n", namespace)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2


def test_a_suspended_connection_is_not_polled_and_resumes_with_a_poll(
    kubectl: Kubectl, namespace: str, operator: Process, caldav_calendar: Any
) -> None:
    conn = synced_then_suspended(kubectl, namespace, caldav_calendar, "fay", pollInterval="1m")
    before = kubectl.json("get", "calconn/fay", "-n", namespace)["status"]["eventCount"]
    ((name, text),) = generate_events(1, seed=41, start=dt.datetime.now(dt.UTC)).items()
    caldav_calendar.put(name, text)
    # A poll would be overdue, but a suspended connection is not polled.
    stamp = backdate_last_attempt(kubectl, namespace, "fay", 120)

    def untouched() -> bool:
        status = kubectl.json("get", "calconn/fay", "-n", namespace)["status"]
        return (status["lastAttemptTime"], status["eventCount"]) == (stamp, before)

    holds(untouched, seconds=8, what="no poll of the suspended connection")

    conn["spec"]["suspend"] = False
    kubectl.apply(conn, namespace)

    def resumed() -> dict[str, Any] | None:
        status = kubectl.json("get", "calconn/fay", "-n", namespace)["status"]
        return status if status.get("eventCount") == before + 1 else None

    status = poll(resumed, timeout=60, what="the resumed connection's poll")
    assert status["lastAttemptTime"] > stamp
    # Resumed with an incremental poll: the only SyncJob is still the first sync's.
    jobs = kubectl.json("get", "sj", "-n", namespace)["items"]
    assert [j["spec"]["mode"] for j in jobs] == ["full"], jobs


def test_delete_is_not_blocked_by_the_finalizer(
    kubectl: Kubectl, namespace: str, operator: Process
) -> None:
    kubectl.apply(secret("erin-dav", username="e", password="p"), namespace)
    kubectl.apply(caldav_connection("erin", "erin-dav"), namespace)
    poll(
        lambda: (
            "calsync.io/finalizer"
            in kubectl.json("get", "calconn/erin", "-n", namespace)["metadata"].get(
                "finalizers", []
            )
        ),
        what="our finalizer on the connection",
    )
    kubectl("delete", "calconn/erin", "-n", namespace, "--timeout=60s")
    gone = kubectl("get", "calconn/erin", "-n", namespace, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_kopf_bookkeeping_uses_our_prefix(
    kubectl: Kubectl, namespace: str, operator: Process
) -> None:
    kubectl.apply(secret("fay-dav", username="f", password="p"), namespace)
    kubectl.apply(caldav_connection("fay", "fay-dav"), namespace)
    poll(
        lambda: condition(kubectl, namespace, "fay", "Authenticated"),
        what="an Authenticated condition",
    )
    annotations = kubectl.json("get", "calconn/fay", "-n", namespace)["metadata"].get(
        "annotations", {}
    )
    assert not [a for a in annotations if "kopf.zalando.org" in a]
    assert "calsync.io/last-handled-configuration" in annotations
