"""A restore drill, the way docs/operations.md tells an operator to do it, on both dialects.

calsync syncs a Radicale calendar; the store is backed up while calsync runs (`calsync store
backup` for SQLite, `pg_dump` for PostgreSQL); the calendar changes and is synced again; the
store is then lost and restored from the older backup, and calsync starts on it. The restored
store keeps its identity (connections stay bound to it) and the next sync brings it from the
backup's cursor to the calendar as it is now: nothing lost, nothing left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.fixtures.postgres import find_binaries
from tests.support import BIN, Kubectl, Process, free_port, poll

pytestmark = pytest.mark.e2e

EVENT = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//calsync tests//EN
BEGIN:VEVENT
UID:{uid}
DTSTAMP:20261201T000000Z
DTSTART:20261210T{hour:02d}0000Z
DTEND:20261210T{hour:02d}3000Z
SUMMARY:{summary}
END:VEVENT
END:VCALENDAR
"""


def calsync(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(BIN / "calsync"), *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, f"calsync {' '.join(args)}: {result.stderr}"
    return result.stdout


def summaries(url: str, key: str) -> set[str]:
    out = calsync("events", "--connection-key", key, "--format", "json", "--store", url)
    return {e["summary"] for e in json.loads(out)}


def store_info(url: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(calsync("store", "info", "--store", url))
    return info


class Running:
    """`calsync run` on the quiet cluster, watching one namespace, on the given store."""

    def __init__(self, kubectl: Kubectl, namespace: str, url: str, log: Path) -> None:
        self.health = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(kubectl.kubeconfig),
            "CALSYNC_NAMESPACES": namespace,
            "CALSYNC_STORE_URL": url,
            "CALSYNC_METRICS_PORT": "0",
            "CALSYNC_HEALTH_PORT": str(self.health),
            "CALSYNC_GATEWAY_PORT": "0",
            "CALSYNC_BIND_ADDRESS": "127.0.0.1",
            "CALSYNC_ALLOW_PRIVATE_ADDRESSES": "true",
            "CALSYNC_KEYRING_NAMESPACE": namespace,
            "CALSYNC_OPERATOR_LEASE_NAME": f"backup-{uuid.uuid4().hex[:6]}",
        }
        self.proc = Process(["run", "--log-format", "json"], env, log)

    def stop(self) -> None:
        code = self.proc.stop()
        assert code == 0, f"calsync run exited with {code}:\n{self.proc.output()[-3000:]}"


def sync_now(kubectl: Kubectl, namespace: str, connection: str) -> str:
    name = f"manual-{uuid.uuid4().hex[:8]}"
    job = {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "SyncJob",
        "metadata": {"name": name},
        "spec": {"connection": connection},
    }
    kubectl.apply(job, namespace)

    def finished() -> str | None:
        phase = (kubectl.json("get", f"sj/{name}", "-n", namespace).get("status") or {}).get(
            "phase"
        )
        return phase if phase in ("Succeeded", "Failed") else None

    assert poll(finished, timeout=120, what=f"SyncJob {name} to finish") == "Succeeded"
    return name


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_store_restored_from_an_older_backup_catches_up_with_the_calendar(
    dialect: str,
    request: pytest.FixtureRequest,
    quiet_kubectl: Kubectl,
    quiet_namespace: str,
    caldav_calendar: Any,
    tmp_path: Path,
) -> None:
    kc, ns = quiet_kubectl, quiet_namespace
    if dialect == "sqlite":
        db = tmp_path / "events.db"
        url = f"sqlite:///{db}"
    else:
        url = request.getfixturevalue("postgres_url")  # libpq form: pg_dump reads it too
        pg_bin = find_binaries()
        assert pg_bin is not None
    for i in (1, 2, 3):
        caldav_calendar.put(f"e{i}.ics", EVENT.format(uid=f"e{i}@t", hour=i, summary=f"event {i}"))
    kc.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "dav", "labels": {"calsync.io/credentials": "true"}},
            "stringData": {"username": caldav_calendar.user, "password": caldav_calendar.password},
        },
        ns,
    )
    kc.apply(
        {
            "apiVersion": "calsync.io/v1alpha1",
            "kind": "CalendarConnection",
            "metadata": {"name": "drill"},
            "spec": {
                "provider": "caldav",
                "owner": "alice@example.com",
                "caldav": {
                    "url": caldav_calendar.url,
                    "allowInsecureHTTP": True,
                    "credentialsSecretRef": {"name": "dav"},
                },
            },
        },
        ns,
    )
    run = Running(kc, ns, url, tmp_path / "run-1.log")
    try:
        kc("wait", "--for=condition=Ready", "calconn/drill", "-n", ns, "--timeout=120s")
        key = kc.json("get", "calconn/drill", "-n", ns)["metadata"]["uid"]
        poll(lambda: summaries(url, key) == {"event 1", "event 2", "event 3"}, what="first sync")
        before = store_info(url)

        # The backup, taken while calsync runs.
        backup = tmp_path / ("backup.db" if dialect == "sqlite" else "calsync.dump")
        if dialect == "sqlite":
            calsync("store", "backup", "--store", url, str(backup))
        else:
            subprocess.run(
                [str(pg_bin / "pg_dump"), "--format=custom", f"--file={backup}", url],
                check=True,
                timeout=120,
            )

        # Life goes on after the backup: one event deleted, one added, synced.
        caldav_calendar.delete("e1.ics")
        caldav_calendar.put("e4.ics", EVENT.format(uid="e4@t", hour=4, summary="event 4"))
        sync_now(kc, ns, "drill")
        assert summaries(url, key) == {"event 2", "event 3", "event 4"}
    finally:
        run.stop()

    # The store is lost, then restored from the older backup.
    if dialect == "sqlite":
        for leftover in tmp_path.glob("events.db*"):
            leftover.unlink()
        backup.rename(db)
    else:
        subprocess.run(
            [
                str(pg_bin / "pg_restore"),
                "--clean",
                "--if-exists",
                "--no-owner",
                f"--dbname={url}",
                str(backup),
            ],
            check=True,
            timeout=120,
        )
    restored = store_info(url)
    assert restored["storeId"] == before["storeId"]
    assert summaries(url, key) == {"event 1", "event 2", "event 3"}  # the backup's state

    run = Running(kc, ns, url, tmp_path / "run-2.log")
    try:
        job = sync_now(kc, ns, "drill")
        assert summaries(url, key) == {"event 2", "event 3", "event 4"}
        status = kc.json("get", f"sj/{job}", "-n", ns)["status"]
        assert status.get("storeId", before["storeId"]) == before["storeId"]
        assert "foreign_store" not in run.proc.output()
        # Leave no finalizer behind on the shared cluster: delete while calsync runs.
        kc("delete", "calconn/drill", "-n", ns, "--timeout=60s")
    finally:
        run.stop()
    assert make_url(url).password is None or make_url(url).password not in (
        run.proc.output() + (tmp_path / "run-1.log").read_text()
    )
