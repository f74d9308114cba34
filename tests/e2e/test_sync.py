"""Sync through the real API server: a connection to a real Radicale calendar, end to end.

The operator (`calsync run`) runs as a process with a SQLite store; events are read back with
`calsync events --format json`, the same way a user would.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from calsync.testing.icalgen import generate_events
from tests.support import (
    BIN,
    Kubectl,
    Process,
    backdate_last_attempt,
    condition,
    connection_uid,
    poll,
    stored_events,
)

pytestmark = pytest.mark.e2e

NOW = dt.datetime.now(dt.UTC)


def connection(name: str, url: str, secret: str) -> dict[str, Any]:
    return {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "CalendarConnection",
        "metadata": {"name": name},
        "spec": {
            "provider": "caldav",
            "owner": "alice@example.com",
            "caldav": {
                "url": url,
                "allowInsecureHTTP": True,
                "credentialsSecretRef": {"name": secret},
            },
        },
    }


def secret(name: str, username: str, password: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"calsync.io/credentials": "true"}},
        "stringData": {"username": username, "password": password},
    }


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def assert_nothing_stored(store: Path, key: str) -> None:
    """The store holds nothing at all under `key` (the CLI says so and exits 1)."""
    done = subprocess.run(
        [
            str(BIN / "calsync"),
            "events",
            "--connection-key",
            key,
            "--store",
            f"sqlite+aiosqlite:///{store}",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1, done.stdout
    assert "nothing is stored" in done.stderr


def all_stored_events(store: Path, key: str, *extra: str) -> list[dict[str, Any]]:
    return stored_events(
        store, key, "--from", "2000-01-01", "--to", "2100-01-01", "--include-cancelled", *extra
    )


def job_phase(kubectl: Kubectl, namespace: str, name: str) -> str:
    obj = kubectl.json("get", f"sj/{name}", "-n", namespace)
    return str((obj.get("status") or {}).get("phase", ""))


def test_connection_syncs_changes_and_purges(
    kubectl: Kubectl, namespace: str, operator: Process, store_path: Path, caldav_calendar: Any
) -> None:
    objects = generate_events(40, seed=7, start=NOW)
    for filename, text in objects.items():
        caldav_calendar.put(filename, text)
    kubectl.apply(secret("dav", caldav_calendar.user, caldav_calendar.password), namespace)
    kubectl.apply(connection("alice", caldav_calendar.url, "dav"), namespace)
    kubectl("wait", "--for=condition=Ready", "calconn/alice", "-n", namespace, "--timeout=120s")

    key = connection_uid(kubectl, namespace, "alice")
    events = all_stored_events(store_path, key)
    uids = {e["uid"] for e in events}
    assert len(uids) == len(objects)
    for event in events:
        assert {"uid", "recurrence_id", "start", "end", "summary", "status"} <= set(event)
    ics = subprocess.run(
        [
            str(BIN / "calsync"),
            "events",
            "--connection-key",
            key,
            "--format",
            "ics",
            "--store",
            f"sqlite+aiosqlite:///{store_path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ics.startswith("BEGIN:VCALENDAR")
    assert all(uid in ics for uid in uids)
    obj = kubectl.json("get", "calconn/alice", "-n", namespace)
    assert obj["status"]["eventCount"] >= len(objects)
    assert obj["status"]["lastSyncTime"]
    assert len(obj["status"]["calendars"]) == 1
    first = kubectl.json("get", "sj", "-n", namespace)["items"]
    assert [j["spec"]["mode"] for j in first] == ["full"]
    assert first[0]["status"]["phase"] == "Succeeded"
    assert first[0]["status"]["counts"]["upserted"] >= len(objects)

    # Change the server: one new, one modified, one deleted; then "sync now".
    names = sorted(objects)
    caldav_calendar.delete(names[0])
    modified = objects[names[1]].replace("SUMMARY:", "SUMMARY:Moved - ", 1)
    caldav_calendar.put(names[1], modified)
    extra = generate_events(1, seed=99, start=NOW)
    ((new_name, new_text),) = extra.items()
    caldav_calendar.put("new-" + new_name, new_text)
    kubectl.apply(
        {
            "apiVersion": "calsync.io/v1alpha1",
            "kind": "SyncJob",
            "metadata": {"name": "now"},
            "spec": {"connection": "alice"},
        },
        namespace,
    )
    poll(lambda: job_phase(kubectl, namespace, "now") == "Succeeded", what="SyncJob now Succeeded")
    job = kubectl.json("get", "sj/now", "-n", namespace)
    assert job["status"]["counts"]["deleted"] >= 1
    assert job["status"]["attempts"] == 1

    events = all_stored_events(store_path, key)
    summaries = {e["summary"] for e in events}
    assert any(s.startswith("Moved - ") for s in summaries)
    assert len({e["uid"] for e in events}) == len(objects)  # -1 deleted, +1 new

    kubectl("delete", "calconn/alice", "-n", namespace, "--timeout=60s")
    assert_nothing_stored(store_path, key)


def test_wrong_password_is_visible(
    kubectl: Kubectl, namespace: str, operator: Process, caldav_calendar: Any
) -> None:
    kubectl.apply(secret("dav", caldav_calendar.user, "not-the-password"), namespace)
    kubectl.apply(connection("mallory", caldav_calendar.url, "dav"), namespace)
    auth = poll(
        lambda: (
            (c := condition(kubectl, namespace, "mallory", "Authenticated"))
            and c["status"] == "False"
            and c
        ),
        timeout=90,
        what="Authenticated=False",
    )
    assert auth["reason"] == "AuthenticationFailed"
    ready = condition(kubectl, namespace, "mallory", "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == (
        "False",
        "AuthenticationFailed",
    )
    jobs = kubectl.json("get", "sj", "-n", namespace)["items"]
    assert jobs and jobs[0]["status"]["phase"] == "Failed"
    assert jobs[0]["status"]["attempts"] == 1  # not worth retrying
    # The worker's log says so, on a JSON line that names the connection and the job.
    failed = [
        line
        for line in json_lines(operator.output())
        if line.get("job") == jobs[0]["metadata"]["name"]
        and line.get("connection") == f"{namespace}/mallory"
        and line.get("reason") == "AuthenticationFailed"
    ]
    assert failed and failed[0]["level"] == "warning", failed
    assert "not-the-password" not in json.dumps(
        kubectl.json("get", "calconn/mallory", "-n", namespace)
    )

    # Fixing the Secret makes it Ready without touching the connection.
    kubectl.apply(secret("dav", caldav_calendar.user, caldav_calendar.password), namespace)
    kubectl("wait", "--for=condition=Ready", "calconn/mallory", "-n", namespace, "--timeout=120s")


def test_unreachable_server_retries_then_fails(
    kubectl: Kubectl, namespace: str, operator: Process
) -> None:
    from tests.support import free_port

    url = f"http://127.0.0.1:{free_port()}/dav/"
    kubectl.apply(secret("dav", "u", "p"), namespace)
    kubectl.apply(connection("nowhere", url, "dav"), namespace)
    ready = poll(
        lambda: (
            (c := condition(kubectl, namespace, "nowhere", "Ready"))
            and c["reason"] == "SyncFailed"
            and c
        ),
        timeout=120,
        what="Ready=False reason SyncFailed",
    )
    assert ready["status"] == "False"
    jobs = kubectl.json("get", "sj", "-n", namespace)["items"]
    assert jobs[0]["status"]["phase"] == "Failed"
    assert jobs[0]["status"]["attempts"] == 3  # CALSYNC_SYNC_MAX_RETRIES in the fixture
    assert jobs[0]["status"]["error"]
    reasons = {
        e["reason"]
        for e in kubectl.json("get", "events", "-n", namespace)["items"]
        if e["involvedObject"]["name"] in ("nowhere", jobs[0]["metadata"]["name"])
    }
    assert {"SyncRetrying", "SyncFailed"} <= reasons


def test_finished_jobs_expire_after_their_ttl(
    kubectl: Kubectl, namespace: str, operator: Process, caldav_calendar: Any
) -> None:
    kubectl.apply(secret("dav", caldav_calendar.user, caldav_calendar.password), namespace)
    kubectl.apply(connection("ttl", caldav_calendar.url, "dav"), namespace)
    kubectl("wait", "--for=condition=Ready", "calconn/ttl", "-n", namespace, "--timeout=120s")
    kubectl.apply(
        {
            "apiVersion": "calsync.io/v1alpha1",
            "kind": "SyncJob",
            "metadata": {"name": "short-lived"},
            "spec": {"connection": "ttl", "ttlSecondsAfterFinished": 0},
        },
        namespace,
    )
    poll(
        lambda: kubectl("get", "sj/short-lived", "-n", namespace, check=False).returncode != 0,
        what="the finished SyncJob to be deleted",
    )


def test_polls_run_from_the_store_without_syncjobs(
    kubectl: Kubectl, namespace: str, operator: Process, store_path: Path, caldav_calendar: Any
) -> None:
    conn = connection("poller", caldav_calendar.url, "dav")
    conn["spec"]["sync"] = {"pollInterval": "1m"}
    kubectl.apply(secret("dav", caldav_calendar.user, caldav_calendar.password), namespace)
    kubectl.apply(conn, namespace)
    kubectl("wait", "--for=condition=Ready", "calconn/poller", "-n", namespace, "--timeout=120s")
    first = kubectl.json("get", "calconn/poller", "-n", namespace)["status"]
    ((name, text),) = generate_events(1, seed=21, start=NOW).items()
    caldav_calendar.put(name, text)
    # As if the first sync had been 90 s ago: the next poll (1m after it) is due now.
    backdated = backdate_last_attempt(kubectl, namespace, "poller", 90)

    def polled() -> dict[str, Any] | None:
        status = kubectl.json("get", "calconn/poller", "-n", namespace)["status"]
        return status if status.get("eventCount") == first["eventCount"] + 1 else None

    status = poll(polled, timeout=120, interval=1, what="the poll's new event in the status")
    assert status["lastAttemptTime"] > backdated
    assert status["consecutiveFailures"] == 0
    assert status["observedGeneration"] == first["observedGeneration"]
    event_uid = next(line for line in text.splitlines() if line.startswith("UID:"))[4:]
    stored = all_stored_events(store_path, connection_uid(kubectl, namespace, "poller"))
    assert event_uid in {e["uid"] for e in stored}
    # The poll made no SyncJob: the only one is the first sync's.
    jobs = kubectl.json("get", "sj", "-n", namespace)["items"]
    assert [j["spec"]["reason"] for j in jobs] == ["lifecycle"], jobs


def test_duplicate_uids_degrade_but_sync(
    kubectl: Kubectl, namespace: str, operator: Process, caldav_calendar: Any
) -> None:
    ((name, text),) = generate_events(1, seed=31, start=NOW).items()
    caldav_calendar.seed({name: text, "copy-" + name: text})
    kubectl.apply(secret("dav", caldav_calendar.user, caldav_calendar.password), namespace)
    kubectl.apply(connection("twins", caldav_calendar.url, "dav"), namespace)
    kubectl("wait", "--for=condition=Ready", "calconn/twins", "-n", namespace, "--timeout=120s")
    degraded = condition(kubectl, namespace, "twins", "Degraded")
    assert degraded is not None
    assert (degraded["status"], degraded["reason"]) == ("True", "DuplicateUID")
    uid = next(line for line in text.splitlines() if line.startswith("UID:"))[4:]
    assert uid in degraded["message"]
    warnings = poll(
        lambda: [
            e
            for e in kubectl.json("get", "events", "-n", namespace)["items"]
            if e["reason"] == "DuplicateUID" and e["involvedObject"]["name"] == "twins"
        ],
        what="a DuplicateUID Event",
    )
    assert warnings[0]["type"] == "Warning"


def watched_phases(kubectl: Kubectl, namespace: str, manifest: dict[str, Any]) -> list[str]:
    """Create a SyncJob and record every phase its watch events show until it finished."""
    name = manifest["metadata"]["name"]
    marker = f"{name}-marker"
    watch = subprocess.Popen(
        [
            kubectl.exe,
            "get",
            "sj",
            "-n",
            namespace,
            "-w",
            "--output-watch-events",
            "-o",
            "jsonpath={.object.metadata.name} {.object.status.phase}{'\\n'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=kubectl.env,
    )
    try:
        # A marker SyncJob (of a connection that does not exist: the worker fails it) shows in
        # this watch and proves it live before the job under test exists.
        kubectl.apply(
            {
                "apiVersion": "calsync.io/v1alpha1",
                "kind": "SyncJob",
                "metadata": {"name": marker},
                "spec": {"connection": "no-such-connection"},
            },
            namespace,
        )
        assert watch.stdout is not None
        created = False
        phases: list[str] = []
        for line in watch.stdout:
            seen, _, phase = line.strip().partition(" ")
            if seen == marker and not created:
                kubectl.apply(manifest, namespace)
                created = True
            elif seen == name:
                phases.append(phase or "Pending")
                if phases[-1] in ("Succeeded", "Failed", "Superseded"):
                    return phases
        pytest.fail(f"the watch of {name} ended early: {phases}")
    finally:
        watch.kill()
        watch.wait()


def test_a_webhook_job_shows_running_before_its_run_a_short_manual_one_need_not(
    kubectl: Kubectl, namespace: str, operator: Process, caldav_calendar: Any
) -> None:
    # The gateway coalesces notifications into a Pending webhook job only with a patch guarded
    # by its resourceVersion; the worker's Running write at claim is what such a patch races
    # against (docs/decisions/0011). Other short runs write only their end.
    kubectl.apply(secret("dav", caldav_calendar.user, caldav_calendar.password), namespace)
    kubectl.apply(connection("hooked", caldav_calendar.url, "dav"), namespace)
    kubectl("wait", "--for=condition=Ready", "calconn/hooked", "-n", namespace, "--timeout=120s")

    def job(name: str, reason: str) -> dict[str, Any]:
        return {
            "apiVersion": "calsync.io/v1alpha1",
            "kind": "SyncJob",
            "metadata": {"name": name},
            "spec": {"connection": "hooked", "reason": reason, "mode": "incremental"},
        }

    hooked = watched_phases(kubectl, namespace, job("hook-1", "webhook"))
    assert hooked[-1] == "Succeeded" and "Running" in hooked, hooked
    manual = watched_phases(kubectl, namespace, job("manual-1", "manual"))
    assert manual[-1] == "Succeeded" and "Running" not in manual, manual
